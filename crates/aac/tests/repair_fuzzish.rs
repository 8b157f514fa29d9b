//! Deterministic random, truncated and mutated ADTS through the crash-repair scanner: no
//! panic, the repair stays inside the file, and repairing its result changes nothing
//! (reliability.md §1.8). `fuzz/fuzz_targets/repair.rs` goes further with cargo-fuzz.

use liverec_aac::repair::repair;
use liverec_aac::AdtsParams;
use media::repair::check_fixed_point;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use testkit::fuzzish::mutate;

fn check(data: &[u8]) {
    if let Err(e) = check_fixed_point(data, repair) {
        panic!(
            "{e}\ninput ({} bytes): {:02x?}",
            data.len(),
            &data[..data.len().min(64)]
        );
    }
}

fn recording(rng: &mut StdRng) -> Vec<u8> {
    let asc = [[0x11, 0x90], [0x12, 0x10], [0x13, 0x88], [0x0a, 0x10]][rng.random_range(0..4)];
    let p = AdtsParams::from_asc(&asc).unwrap();
    let mut out = Vec::new();
    for _ in 0..rng.random_range(0..40) {
        let n = rng.random_range(0..500);
        out.extend_from_slice(&p.header(n).unwrap());
        out.extend(std::iter::repeat_n(rng.random::<u8>(), n));
    }
    out
}

#[test]
fn random_bytes_with_sync_words() {
    let mut rng = StdRng::seed_from_u64(0xaac);
    for _ in 0..2000 {
        let mut data = vec![0u8; rng.random_range(0..3000)];
        rng.fill_bytes(&mut data);
        // Sync words here and there so some headers parse.
        for _ in 0..data.len() / 50 {
            let i = rng.random_range(0..data.len().max(2) - 1);
            if i + 1 < data.len() {
                data[i] = 0xff;
                data[i + 1] |= 0xf0;
            }
        }
        check(&data);
    }
}

#[test]
fn truncated_recordings() {
    let mut rng = StdRng::seed_from_u64(0xaad);
    for _ in 0..300 {
        let file = recording(&mut rng);
        let cut = rng.random_range(0..=file.len());
        check(&file[..cut]);
    }
}

#[test]
fn mutated_recordings() {
    let mut rng = StdRng::seed_from_u64(0xaae);
    for _ in 0..3000 {
        let mut file = recording(&mut rng);
        mutate(&mut rng, &mut file, &[0, 0xff, 0x7f, 0x80], None);
        check(&file);
    }
}

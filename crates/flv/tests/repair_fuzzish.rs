//! Deterministic random, truncated and mutated FLV through the crash-repair scanner: no
//! panic, the repair stays inside the file, and repairing its result changes nothing
//! (reliability.md §1.8). `fuzz/fuzz_targets/repair.rs` goes further with cargo-fuzz.

use bytes::Bytes;
use liverec_flv::repair::repair;
use liverec_flv::{FlvMuxer, MetaInfo};
use media::repair::check_fixed_point;
use media::TrackKind;
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
    let info = MetaInfo {
        has_video: true,
        has_audio: rng.random(),
        encoder: Some("fuzzish".into()),
        ..MetaInfo::default()
    };
    let mut m = FlvMuxer::new(info, media::Millis::from_ms(rng.random_range(0..1 << 40)));
    let mut out = vec![m.header()];
    let mut dts = 0i64;
    for _ in 0..rng.random_range(0..30) {
        dts += rng.random_range(-5..100);
        let kind = if rng.random() {
            TrackKind::Video
        } else {
            TrackKind::Audio
        };
        let body = Bytes::from(vec![rng.random::<u8>(); rng.random_range(0..300)]);
        m.write_tag(kind, media::Millis::from_ms(dts), &body, &mut out);
    }
    out.iter().flat_map(|b| b.iter().copied()).collect()
}

#[test]
fn random_bytes_behind_an_flv_signature() {
    let mut rng = StdRng::seed_from_u64(0xf17);
    for _ in 0..2000 {
        let mut data = vec![0u8; rng.random_range(0..600)];
        rng.fill_bytes(&mut data);
        if data.len() >= 9 {
            data[..9].copy_from_slice(b"FLV\x01\x05\0\0\0\x09");
        }
        check(&data);
    }
}

#[test]
fn truncated_recordings() {
    let mut rng = StdRng::seed_from_u64(0xf18);
    for _ in 0..300 {
        let file = recording(&mut rng);
        let cut = rng.random_range(0..=file.len());
        check(&file[..cut]);
    }
}

#[test]
fn mutated_recordings() {
    let mut rng = StdRng::seed_from_u64(0xf19);
    for _ in 0..3000 {
        let mut file = recording(&mut rng);
        mutate(&mut rng, &mut file, &[0, 0xff, 0x7f, 0x80], None);
        check(&file);
    }
}

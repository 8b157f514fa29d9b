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

/// One to eight byte-level mutations: random byte, bit flip, boundary value, deletion.
fn mutate(rng: &mut StdRng, data: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..8) {
        if data.is_empty() {
            return;
        }
        let i = rng.random_range(0..data.len());
        match rng.random_range(0..4) {
            0 => data[i] = rng.random(),
            1 => data[i] ^= 1 << rng.random_range(0..8),
            2 => data[i] = [0, 0xff, 0x7f, 0x80][rng.random_range(0..4)],
            _ => {
                let j = (i + rng.random_range(0..64)).min(data.len());
                data.drain(i..j);
            }
        }
    }
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
        mutate(&mut rng, &mut file);
        check(&file);
    }
}

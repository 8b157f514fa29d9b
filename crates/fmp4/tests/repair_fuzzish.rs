//! Deterministic random, truncated and mutated fMP4 through the crash-repair scanner: no
//! panic, the repair stays inside the file, and repairing its result changes nothing
//! (reliability.md §1.8). `fuzz/fuzz_targets/repair.rs` goes further with cargo-fuzz.

mod common;

use bytes::Bytes;
use common::*;
use liverec_fmp4::repair::repair;
use liverec_fmp4::Fmp4Muxer;
use media::repair::check_fixed_point;
use media::{AudioCodec, Codec, Packet, TrackConfig, VideoCodec};
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

fn recording(rng: &mut StdRng, video: &TrackConfig) -> Vec<u8> {
    let audio = TrackConfig {
        codec: Codec::Audio(AudioCodec::Aac),
        record: Bytes::from_static(&[0x11, 0x90]),
        flv: Bytes::new(),
        dts: media::Millis::ZERO,
    };
    let with_audio = rng.random::<bool>();
    let mut m = Fmp4Muxer::new(
        Some(video),
        with_audio.then_some(&audio),
        media::Millis::ZERO,
    )
    .unwrap();
    let mut out = vec![m.init_segment()];
    let mut dts = 0;
    for i in 0..rng.random_range(0..150) {
        dts += rng.random_range(0..60);
        let audio_now = with_audio && rng.random::<bool>();
        let data = Bytes::from(vec![i as u8; rng.random_range(1..100)]);
        let p = Packet {
            codec: if audio_now {
                Codec::Audio(AudioCodec::Aac)
            } else {
                Codec::Video(VideoCodec::H264)
            },
            dts: media::Millis::from_ms(dts),
            cts: rng.random_range(0..80),
            key: audio_now || rng.random_range(0..10) == 0,
            flv: data.clone(),
            data,
        };
        let _ = m.push(&p, &mut out);
    }
    if rng.random() {
        let patches = m.finish(&mut out);
        let mut file = concat(&out);
        apply(&mut file, &patches);
        return file;
    }
    concat(&out)
}

#[test]
fn random_boxes() {
    let mut rng = StdRng::seed_from_u64(0x4d50);
    let kinds: [&[u8; 4]; 6] = [b"ftyp", b"moov", b"moof", b"mdat", b"free", b"mvex"];
    for _ in 0..2000 {
        let mut data = Vec::new();
        for i in 0..rng.random_range(0..8) {
            let kind = if i == 0 {
                b"ftyp"
            } else {
                kinds[rng.random_range(0..kinds.len())]
            };
            let mut body = vec![0u8; rng.random_range(0..64)];
            rng.fill_bytes(&mut body);
            let size = match rng.random_range(0..10) {
                0 => 0,
                1 => 1,
                2 => rng.random(),
                _ => body.len() as u32 + 8,
            };
            data.extend_from_slice(&size.to_be_bytes());
            data.extend_from_slice(kind);
            if size == 1 {
                let large = match rng.random_range(0..3) {
                    0 => u64::MAX,
                    _ => body.len() as u64 + 16,
                };
                data.extend_from_slice(&large.to_be_bytes());
            }
            data.extend_from_slice(&body);
        }
        check(&data);
    }
}

#[test]
fn truncated_recordings() {
    let video = load("avc_only.flv").video.unwrap();
    let mut rng = StdRng::seed_from_u64(0x4d51);
    for _ in 0..300 {
        let file = recording(&mut rng, &video);
        let cut = rng.random_range(0..=file.len());
        check(&file[..cut]);
    }
}

#[test]
fn mutated_recordings() {
    let video = load("avc_only.flv").video.unwrap();
    let mut rng = StdRng::seed_from_u64(0x4d52);
    for _ in 0..2000 {
        let mut file = recording(&mut rng, &video);
        mutate(&mut rng, &mut file, &[0, 0xff, 0x7f, 0x80, 0x01], None);
        check(&file);
    }
}

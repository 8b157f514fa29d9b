//! Deterministic random, truncated and mutated TS through the crash-repair scanner: no
//! panic, the repair stays inside the file, and repairing its result changes nothing
//! (reliability.md §1.8). `fuzz/fuzz_targets/repair.rs` goes further with cargo-fuzz.

mod common;

use common::{concat, fixture_events};
use liverec_mpegts::repair::repair;
use liverec_mpegts::{TsMuxer, TS_PACKET_SIZE};
use media::repair::check_fixed_point;
use media::Packet;
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

/// A segment of a random run of the fixture's frames, from a random time (some across
/// the 33-bit PTS wrap).
fn segment(rng: &mut StdRng, packets: &[Packet], m: &mut TsMuxer) -> Vec<u8> {
    let mut out = Vec::new();
    m.segment_header(&mut out);
    let from = rng.random_range(0..packets.len());
    let n = rng.random_range(0..40);
    let shift = if rng.random() {
        (1i64 << 33) / 90 - 1400 - rng.random_range(0..2000)
    } else {
        rng.random_range(0..1 << 40)
    };
    for p in packets.iter().skip(from).take(n) {
        let mut p = p.clone();
        p.dts += media::Millis::from_ms(shift);
        let _ = m.push(&p, &mut out);
    }
    concat(&out)
}

#[test]
fn random_packets() {
    let mut rng = StdRng::seed_from_u64(0x7501);
    for _ in 0..1000 {
        let mut data = vec![0u8; rng.random_range(0..20) * TS_PACKET_SIZE];
        rng.fill_bytes(&mut data);
        for p in data.chunks_mut(TS_PACKET_SIZE) {
            p[0] = 0x47;
            // Mostly the two elementary PIDs, so PES accounting is exercised.
            if rng.random_range(0..4) > 0 {
                p[1] = (p[1] & 0xe0) | 0x01;
                p[2] = rng.random_range(0..2);
            }
            if rng.random() && p.len() > 10 {
                p[4..7].copy_from_slice(&[0, 0, 1]);
            }
        }
        check(&data);
    }
}

#[test]
fn truncated_segments() {
    let (video, audio, packets) = fixture_events("avc_aac_2s.flv");
    let mut m = TsMuxer::new(video.as_ref(), audio.as_ref()).unwrap();
    let mut rng = StdRng::seed_from_u64(0x7502);
    for _ in 0..300 {
        let file = segment(&mut rng, &packets, &mut m);
        let cut = rng.random_range(0..=file.len());
        check(&file[..cut]);
    }
}

#[test]
fn mutated_segments() {
    let (video, audio, packets) = fixture_events("avc_aac_2s.flv");
    let mut m = TsMuxer::new(video.as_ref(), audio.as_ref()).unwrap();
    let mut rng = StdRng::seed_from_u64(0x7503);
    for _ in 0..2000 {
        let mut file = segment(&mut rng, &packets, &mut m);
        mutate(
            &mut rng,
            &mut file,
            &[0, 0xff, 0x47, 0x40],
            Some(TS_PACKET_SIZE),
        );
        check(&file);
    }
}

#[test]
fn a_long_pes_completes_across_many_packets() {
    // One PES declaring 65535 bytes, then continuation packets on its PID: kept once
    // all its bytes are there, cut before it while it is short.
    let mut pes = vec![
        0x47, 0x41, 0x00, 0x10, 0, 0, 1, 0xe0, 0xff, 0xff, 0x84, 0x80, 5,
    ];
    pes.extend_from_slice(&[0x21, 0, 1, 0, 1]);
    pes.resize(TS_PACKET_SIZE, 0xaa);
    let mut cont = vec![0x47, 0x01, 0x00, 0x10];
    cont.resize(TS_PACKET_SIZE, 0xbb);
    let mut file = pes.clone();
    for _ in 0..400 {
        file.extend_from_slice(&cont);
    }
    let r = repair(&file).unwrap();
    assert_eq!(r.keep_len, file.len() as u64, "65535 bytes arrived");
    let r = repair(&file[..100 * TS_PACKET_SIZE]).unwrap();
    assert_eq!(r.keep_len, 0, "short PES: nothing before it to keep");
    check(&file);
}

//! Property test: random valid packet sequences (B-frames, gaps, audio before video,
//! audio-only, video-only) keep the TS invariants (R-FM-2, R-FM-5).

mod common;

use bytes::Bytes;
use common::{concat, demux};
use liverec_mpegts::{ts_ticks, TsMuxer};
use media::{AudioCodec, Codec, Millis, Packet, TrackConfig, VideoCodec};
use proptest::prelude::*;

const AVCC: [u8; 16] = [
    1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 3, 0x67, 0x64, 0x1f, 1, 0, 2, 0x68, 0xee,
];
const ASC: [u8; 2] = [0x11, 0x90];

fn cfg(codec: Codec, record: &[u8]) -> TrackConfig {
    TrackConfig {
        codec,
        record: Bytes::copy_from_slice(record),
        flv: Bytes::new(),
        dts: Millis::ZERO,
    }
}

#[derive(Debug, Clone)]
struct Frame {
    video: bool,
    step: i64,
    cts: i32,
    key: bool,
    size: usize,
    seed: u8,
    cut: bool,
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        any::<bool>(),
        prop_oneof![8 => 1i64..60, 1 => 100i64..3000],
        prop_oneof![Just(0), Just(40), Just(80), Just(120), Just(-40)],
        prop::bool::weighted(0.1),
        1usize..2500,
        any::<u8>(),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(video, step, cts, key, size, seed, cut)| Frame {
            video,
            step,
            cts,
            key,
            size,
            seed,
            cut,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_sequences_keep_ts_invariants(
        mode in 0u8..3,
        start in 0i64..10_000_000,
        frames in prop::collection::vec(frame(), 1..150),
    ) {
        let has_video = mode != 1;
        let has_audio = mode != 2;
        let v = cfg(Codec::Video(VideoCodec::H264), &AVCC);
        let a = cfg(Codec::Audio(AudioCodec::Aac), &ASC);
        let mut m = TsMuxer::new(has_video.then_some(&v), has_audio.then_some(&a)).unwrap();
        let params = aac::AdtsParams::from_asc(&ASC).unwrap();
        let mut out = Vec::new();
        m.segment_header(&mut out);
        let (mut vdts, mut adts) = (start, start);
        let (mut want_v, mut want_a) = (Vec::new(), Vec::new());
        let mut first_video = true;
        for f in &frames {
            let video = if has_video && has_audio { f.video } else { has_video };
            let body: Vec<u8> = (0..f.size).map(|i| f.seed.wrapping_add(i as u8) | 1).collect();
            if video {
                vdts += f.step;
                let key = f.key || first_video;
                first_video = false;
                if key && f.cut {
                    m.segment_header(&mut out);
                }
                let mut nal = vec![if key { 0x65 } else { 0x41 }];
                nal.extend_from_slice(&body);
                let mut data = (nal.len() as u32).to_be_bytes().to_vec();
                data.extend_from_slice(&nal);
                let p = Packet {
                    codec: Codec::Video(VideoCodec::H264),
                    dts: Millis::from_ms(vdts),
                    cts: f.cts,
                    key,
                    flv: Bytes::new(),
                    data: Bytes::from(data),
                };
                m.push(&p, &mut out).unwrap();
                want_v.push((ts_ticks(Millis::from_ms(vdts + i64::from(f.cts))), ts_ticks(Millis::from_ms(vdts)), nal));
            } else {
                adts += f.step;
                let p = Packet {
                    codec: Codec::Audio(AudioCodec::Aac),
                    dts: Millis::from_ms(adts),
                    cts: 0,
                    key: true,
                    flv: Bytes::new(),
                    data: Bytes::from(body.clone()),
                };
                m.push(&p, &mut out).unwrap();
                let mut framed = params.header(body.len()).unwrap().to_vec();
                framed.extend_from_slice(&body);
                want_a.push((ts_ticks(Millis::from_ms(adts)), framed));
            }
        }
        let ts = concat(&out);
        prop_assert_eq!(ts.len() % 188, 0);
        prop_assert!(ts.chunks(188).all(|p| p[0] == 0x47));
        let d = demux(&ts); // also checks continuity counters per PID

        // Every input frame exactly once, in order, with its timestamps and bytes.
        prop_assert_eq!(d.video.len(), want_v.len());
        prop_assert_eq!(d.audio.len(), want_a.len());
        let mut last = None;
        for (got, (pts, dts, nal)) in d.video.iter().zip(&want_v) {
            prop_assert_eq!(got.pts, Some(*pts));
            prop_assert_eq!(got.dts.unwrap_or(*pts), *dts);
            prop_assert!(got.data.ends_with(nal));
            prop_assert!(got.data.starts_with(&[0, 0, 0, 1, 9, 0xf0]));
            let dts = got.dts.or(got.pts).unwrap();
            prop_assert!(last.is_none_or(|l| dts > l), "video DTS not monotonic");
            last = Some(dts);
        }
        let mut last = None;
        for (got, (pts, framed)) in d.audio.iter().zip(&want_a) {
            prop_assert_eq!(got.pts, Some(*pts));
            prop_assert_eq!(&got.data, framed);
            prop_assert!(last.is_none_or(|l| *pts > l), "audio DTS not monotonic");
            last = Some(*pts);
        }
        // A PCR at least every 100 ms of DTS while the PCR PID's clock advances: every
        // PES on the PCR PID carries one, checked via the first packet.
        let pcr_pid = if has_video { 0x100 } else { 0x101 };
        for p in &d.packets {
            if p.header.pid.as_u16() == pcr_pid {
                if let Some(mpeg2ts::ts::TsPayload::PesStart(_)) = p.payload {
                    prop_assert!(p.adaptation_field.as_ref().and_then(|a| a.pcr).is_some());
                }
            }
        }
    }
}

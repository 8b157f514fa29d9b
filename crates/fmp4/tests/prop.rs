//! Invariants over random but valid packet sequences (B-frames, gaps, audio before
//! video, audio-only, video-only): every sample once, positive durations, monotonic tfdt.

use bytes::Bytes;
use liverec_fmp4::Fmp4Muxer;
use media::{AudioCodec, Codec, Millis, Packet, TrackConfig, VideoCodec};
use mp4_atom::{Any, Decode};
use proptest::prelude::*;

const AVCC: &[u8] = &[
    1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1, 0, 2, 0x68, 0xee,
];

fn cfg(codec: Codec, record: &'static [u8]) -> TrackConfig {
    TrackConfig {
        codec,
        record: Bytes::from_static(record),
        flv: Bytes::new(),
        dts: Millis::ZERO,
    }
}

#[derive(Debug, Clone)]
struct VFrame {
    step: i64,
    cts: i32,
    key: bool,
    len: usize,
}

fn vframe() -> impl Strategy<Value = VFrame> {
    (
        prop_oneof![8 => 1i64..70, 1 => 70i64..3000, 1 => -20i64..1],
        -100i32..250,
        prop::bool::weighted(0.1),
        0usize..300,
    )
        .prop_map(|(step, cts, key, len)| VFrame {
            step,
            cts,
            key,
            len,
        })
}

fn astep() -> impl Strategy<Value = (i64, usize)> {
    (prop_oneof![9 => 21i64..23, 1 => 0i64..1500], 1usize..50)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_sample_once_positive_durations_monotonic_tfdt(
        with_video in any::<bool>(),
        with_audio in any::<bool>(),
        vframes in prop::collection::vec(vframe(), 0..200),
        asteps in prop::collection::vec(astep(), 0..300),
        audio_lead in 0i64..500,
        base_shift in -50i64..50,
    ) {
        let (with_video, with_audio) = (with_video || !with_audio, with_audio);
        let mut packets = Vec::new();
        if with_video {
            let mut dts = audio_lead;
            for (i, f) in vframes.iter().enumerate() {
                dts += f.step;
                let data = Bytes::from(vec![1u8; f.len]);
                packets.push(Packet {
                    codec: Codec::Video(VideoCodec::H264),
                    dts: Millis::from_ms(dts),
                    cts: f.cts,
                    key: f.key || i == 0,
                    flv: data.clone(),
                    data,
                });
            }
        }
        if with_audio {
            let mut dts = 0;
            for &(step, len) in &asteps {
                dts += step;
                let data = Bytes::from(vec![2u8; len]);
                packets.push(Packet {
                    codec: Codec::Audio(AudioCodec::Aac),
                    dts: Millis::from_ms(dts),
                    cts: 0,
                    key: true,
                    flv: data.clone(),
                    data,
                });
            }
        }
        // Interleave by DTS as a ring would (stable: per-track order kept).
        packets.sort_by_key(|p| p.dts);

        let v = cfg(Codec::Video(VideoCodec::H264), AVCC);
        let a = cfg(Codec::Audio(AudioCodec::Aac), &[0x11, 0x90]);
        let mut m = Fmp4Muxer::new(
            with_video.then_some(&v),
            with_audio.then_some(&a),
            Millis::from_ms(base_shift),
        ).unwrap();
        let mut out = vec![m.init_segment()];
        for p in &packets {
            m.push(p, &mut out).unwrap();
        }
        m.finish(&mut out);
        let file: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        prop_assert_eq!(file.len() as u64, m.bytes_written());

        let mut buf = &file[..];
        let mut sizes: [Vec<u32>; 3] = Default::default();
        let mut next_tfdt: [Option<u64>; 3] = [None; 3];
        let mut seq = 0;
        while !buf.is_empty() {
            if let Any::Moof(moof) = Any::decode(&mut buf).unwrap() {
                seq += 1;
                prop_assert_eq!(moof.mfhd.sequence_number, seq);
                for traf in &moof.traf {
                    let id = traf.tfhd.track_id as usize;
                    let tfdt = traf.tfdt.as_ref().unwrap().base_media_decode_time;
                    if let Some(expect) = next_tfdt[id] {
                        // Contiguous decode timeline: monotonic, no overlap, no hole.
                        prop_assert_eq!(tfdt, expect);
                    }
                    let mut end = tfdt;
                    for s in traf.trun[0].samples.iter() {
                        let d = s.duration.unwrap();
                        prop_assert!(d >= 1, "zero duration");
                        end += u64::from(d);
                        sizes[id].push(s.size.unwrap());
                    }
                    next_tfdt[id] = Some(end);
                }
            }
        }
        let want = |c: Codec| -> Vec<u32> {
            packets.iter().filter(|p| p.codec == c).map(|p| p.data.len() as u32).collect()
        };
        let (vid, aid) = if with_video { (1, 2) } else { (0, 1) };
        if with_video {
            prop_assert_eq!(&sizes[vid], &want(Codec::Video(VideoCodec::H264)));
        }
        if with_audio {
            prop_assert_eq!(&sizes[aid], &want(Codec::Audio(AudioCodec::Aac)));
        }
    }
}

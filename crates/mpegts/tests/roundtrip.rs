//! Decode what we encode: our TS read back with mpeg2ts's reader (R-FM-2, R-FM-5).

mod common;

use bytes::Bytes;
use common::{concat, demux};
use liverec_mpegts::{ts_ticks, TsError, TsMuxer, AUDIO_PID, PMT_PID, VIDEO_PID};
use media::{AudioCodec, Codec, Millis, Packet, TrackConfig, VideoCodec};
use mpeg2ts::es::StreamType;
use mpeg2ts::ts::{TsPayload, VersionNumber};

/// avcC of fixtures/avc_aac_1s.flv (x264 High 4:2:0, 426x240): a real record, with the
/// High-profile trailer.
const AVCC: &str =
    "01640015ffe1001a67640015acd941b1fe4f011000000300100000030320f162d96001000468efbcb0fdf8f800";
const SPS: &str = "67640015acd941b1fe4f011000000300100000030320f162d960";
const PPS: &str = "68efbcb0";
const ASC: [u8; 2] = [0x11, 0x90]; // AAC LC, 48 kHz, stereo

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn config(codec: Codec, record: Vec<u8>) -> TrackConfig {
    TrackConfig {
        codec,
        record: Bytes::from(record),
        flv: Bytes::new(),
        dts: Millis::ZERO,
    }
}

fn avc() -> TrackConfig {
    config(Codec::Video(VideoCodec::H264), hex(AVCC))
}

fn aac() -> TrackConfig {
    config(Codec::Audio(AudioCodec::Aac), ASC.to_vec())
}

/// AVCC with 4-byte lengths.
fn avcc(nals: &[&[u8]]) -> Bytes {
    let mut v = Vec::new();
    for n in nals {
        v.extend_from_slice(&(n.len() as u32).to_be_bytes());
        v.extend_from_slice(n);
    }
    Bytes::from(v)
}

fn annexb(nals: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for n in nals {
        v.extend_from_slice(&[0, 0, 0, 1]);
        v.extend_from_slice(n);
    }
    v
}

fn packet(codec: Codec, dts: i64, cts: i32, key: bool, data: Bytes) -> Packet {
    Packet {
        codec,
        dts: Millis::from_ms(dts),
        cts,
        key,
        flv: Bytes::new(),
        data,
    }
}

const H264: Codec = Codec::Video(VideoCodec::H264);
const AAC: Codec = Codec::Audio(AudioCodec::Aac);

#[test]
fn h264_aac_round_trip_through_mpeg2ts_reader() {
    let (sps, pps) = (hex(SPS), hex(PPS));
    let params = aac::AdtsParams::from_asc(&ASC).unwrap();
    let mut m = TsMuxer::new(Some(&avc()), Some(&aac())).unwrap();
    assert!(m.skipped().is_empty());
    let mut out = Vec::new();
    m.segment_header(&mut out);

    // 3 GOPs of 12 frames at 40 ms with an IBBP-like pattern (composition offsets
    // 80/0/40 ms), AAC frames every 21 ms, interleaved by DTS; a second segment starts at
    // the second keyframe.
    let mut expected_video = Vec::new();
    let mut expected_audio = Vec::new();
    let mut audio_t = 0i64;
    let sei: &[u8] = &[0x06, 0x05, 0x01, 0xaa, 0x80];
    for i in 0..36i64 {
        let dts = i * 40;
        while audio_t <= dts {
            let frame = Bytes::from(vec![(audio_t % 251) as u8; 100 + (audio_t % 50) as usize]);
            m.push(&packet(AAC, audio_t, 0, true, frame.clone()), &mut out)
                .unwrap();
            let mut adts = params.header(frame.len()).unwrap().to_vec();
            adts.extend_from_slice(&frame);
            expected_audio.push((ts_ticks(Millis::from_ms(audio_t)), adts));
            audio_t += 21;
        }
        let key = i % 12 == 0;
        if key && i > 0 {
            m.segment_header(&mut out);
        }
        let cts = [80, 0, 40][(i % 3) as usize];
        let body = vec![(i as u8) | 0x01; 300 + (i as usize * 37) % 700];
        let (input, expect): (Vec<&[u8]>, Vec<&[u8]>) = if key && i == 24 {
            // A keyframe that carries its own SPS/PPS (and an AUD): nothing inserted,
            // its AUD replaced by ours.
            let mut idr = vec![0x65];
            idr.extend_from_slice(&body);
            let idr: &'static [u8] = Box::leak(idr.into_boxed_slice());
            let (s, p): (&'static [u8], &'static [u8]) = (
                Box::leak(sps.clone().into_boxed_slice()),
                Box::leak(pps.clone().into_boxed_slice()),
            );
            (
                vec![&[0x09, 0xf0], s, p, idr],
                vec![&[0x09, 0xf0], s, p, idr],
            )
        } else if key {
            let mut idr = vec![0x65];
            idr.extend_from_slice(&body);
            let idr: &'static [u8] = Box::leak(idr.into_boxed_slice());
            let (s, p): (&'static [u8], &'static [u8]) = (
                Box::leak(sps.clone().into_boxed_slice()),
                Box::leak(pps.clone().into_boxed_slice()),
            );
            (vec![sei, idr], vec![&[0x09, 0xf0], s, p, sei, idr])
        } else {
            let mut slice = vec![0x41];
            slice.extend_from_slice(&body);
            let slice: &'static [u8] = Box::leak(slice.into_boxed_slice());
            (vec![slice], vec![&[0x09, 0xf0], slice])
        };
        m.push(&packet(H264, dts, cts, key, avcc(&input)), &mut out)
            .unwrap();
        let dts_field = (cts != 0).then(|| ts_ticks(Millis::from_ms(dts)));
        expected_video.push((
            ts_ticks(Millis::from_ms(dts + i64::from(cts))),
            dts_field,
            annexb(&expect),
        ));
    }

    let ts = concat(&out);
    let d = demux(&ts);

    // PAT/PMT at each of the 3 segment starts, correct content (CRC checked by the reader).
    assert_eq!(d.pats.len(), 3);
    assert_eq!(d.pmts.len(), 3);
    for pat in &d.pats {
        assert_eq!(pat.table.len(), 1);
        assert_eq!(pat.table[0].program_num, 1);
        assert_eq!(pat.table[0].program_map_pid.as_u16(), PMT_PID);
    }
    for pmt in &d.pmts {
        assert_eq!(pmt.program_num, 1);
        assert_eq!(pmt.pcr_pid.map(|p| p.as_u16()), Some(VIDEO_PID));
        assert_eq!(pmt.version_number, VersionNumber::new());
        let es: Vec<_> = pmt
            .es_info
            .iter()
            .map(|e| (e.stream_type, e.elementary_pid.as_u16()))
            .collect();
        assert_eq!(
            es,
            vec![
                (StreamType::H264, VIDEO_PID),
                (StreamType::AdtsAac, AUDIO_PID)
            ]
        );
    }
    // The stream starts with PAT then PMT.
    assert!(matches!(d.packets[0].payload, Some(TsPayload::Pat(_))));
    assert!(matches!(d.packets[1].payload, Some(TsPayload::Pmt(_))));

    assert_eq!(d.video.len(), expected_video.len());
    for (i, (got, (pts, dts, data))) in d.video.iter().zip(&expected_video).enumerate() {
        assert_eq!(got.pts, Some(*pts), "video {i} PTS");
        assert_eq!(got.dts, *dts, "video {i} DTS");
        assert!(got.data == *data, "video {i} payload");
    }
    assert_eq!(d.audio.len(), expected_audio.len());
    for (i, (got, (pts, data))) in d.audio.iter().zip(&expected_audio).enumerate() {
        assert_eq!(got.pts, Some(*pts), "audio {i} PTS");
        assert_eq!(got.dts, None, "audio {i} has no DTS");
        assert_eq!(&got.data, data, "audio {i} ADTS frame");
    }

    // PCR + random_access_indicator in the first TS packet of every keyframe PES; every
    // video PES start carries a PCR; PCRs never go backwards.
    let mut keyframes = 0;
    let mut last_pcr = 0;
    for p in &d.packets {
        if p.header.pid.as_u16() != VIDEO_PID {
            continue;
        }
        if let Some(TsPayload::PesStart(pes)) = &p.payload {
            let af = p.adaptation_field.as_ref().expect("adaptation field");
            let pcr = af.pcr.expect("PCR on video PES start").as_u64();
            assert!(pcr >= last_pcr);
            last_pcr = pcr;
            // PCR is behind the frame's DTS.
            let dts = pes.header.dts.or(pes.header.pts).unwrap().as_u64();
            assert!(pcr / 300 < dts);
            if af.random_access_indicator {
                keyframes += 1;
            }
        }
    }
    assert_eq!(keyframes, 3);
}

#[test]
fn pts_dts_wrap_at_2_pow_33() {
    // 2^33 ticks / 90 = 95_443_717.7 ms (26 h 30 m 43.7 s); the offset moves the wrap
    // 1.4 s earlier on the input timeline.
    let wrap_ms = (1i64 << 33) / 90 - 1400;
    let mut m = TsMuxer::new(Some(&avc()), None).unwrap();
    let mut out = Vec::new();
    m.segment_header(&mut out);
    let start = wrap_ms - 400;
    let n = 20;
    for i in 0..n {
        let dts = start + i * 40;
        let nal: &[u8] = if i == 0 {
            &[0x65, 1, 2, 3]
        } else {
            &[0x41, 1, 2, 3]
        };
        m.push(&packet(H264, dts, 80, i == 0, avcc(&[nal])), &mut out)
            .unwrap();
    }
    let d = demux(&concat(&out));
    assert_eq!(d.video.len(), n as usize);
    let independent = |ms: i64| (((ms as i128 + 1400) * 90) % (1i128 << 33)) as u64;
    let dts: Vec<u64> = d.video.iter().map(|p| p.dts.unwrap()).collect();
    for (i, p) in d.video.iter().enumerate() {
        let ms = start + i as i64 * 40;
        assert_eq!(p.dts, Some(independent(ms)));
        assert_eq!(p.pts, Some(independent(ms + 80)));
        assert!(p.dts.unwrap() < 1 << 33 && p.pts.unwrap() < 1 << 33);
    }
    // It really wrapped, and modulo 2^33 every step is exactly 40 ms.
    assert!(dts.windows(2).any(|w| w[1] < w[0]));
    for w in dts.windows(2) {
        assert_eq!((w[1] + (1 << 33) - w[0]) % (1 << 33), 40 * 90);
    }
    // Extreme timestamps never overflow or panic (reliability.md T5).
    for dts in [i64::MAX, i64::MIN, i64::MAX - 1, -1] {
        let p = packet(H264, dts, i32::MIN, true, avcc(&[&[0x65, 1]]));
        m.push(&p, &mut out).unwrap();
        let p = packet(H264, dts, i32::MAX, false, avcc(&[&[0x41, 1]]));
        m.push(&p, &mut out).unwrap();
    }
    demux(&concat(&out));
}

#[test]
fn negative_composition_offsets_are_written_signed() {
    let mut m = TsMuxer::new(Some(&avc()), None).unwrap();
    let mut out = Vec::new();
    m.segment_header(&mut out);
    // Encoders that do not delay DTS send B-frames with negative offsets: PTS before DTS,
    // even before 0 for the first frames. The 1.4 s offset keeps them on the clock.
    let frames = [
        (0i64, 0i32, true),
        (40, -40, false),
        (80, -80, false),
        (120, 40, false),
    ];
    for (dts, cts, key) in frames {
        let nal: &[u8] = if key { &[0x65, 9] } else { &[0x41, 9] };
        m.push(&packet(H264, dts, cts, key, avcc(&[nal])), &mut out)
            .unwrap();
    }
    let d = demux(&concat(&out));
    let got: Vec<_> = d.video.iter().map(|p| (p.pts, p.dts)).collect();
    assert_eq!(
        got,
        vec![
            (Some(1400 * 90), None),
            (Some(1400 * 90), Some(1440 * 90)),
            (Some(1400 * 90), Some(1480 * 90)),
            (Some(1560 * 90), Some(1520 * 90)),
        ]
    );
}

const HEVC: Codec = Codec::Video(VideoCodec::Hevc);

/// A minimal hvcC: 22-byte header, lengthSizeMinusOne = 3, arrays VPS, SPS, PPS and a
/// prefix SEI (which is not inserted before IRAPs).
fn hvcc(vps: &[u8], sps: &[u8], pps: &[u8]) -> Vec<u8> {
    let mut v = vec![
        1, 1, 0x60, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 0x5d, 0xf0, 0, 0xfc, 0xfd, 0xf8, 0xf8, 0, 0, 0x0f,
    ];
    v.push(4);
    for (t, n) in [(32u8, vps), (33, sps), (34, pps), (39, &[0x4e, 1, 5][..])] {
        v.push(0x80 | t);
        v.extend_from_slice(&1u16.to_be_bytes());
        v.extend_from_slice(&(n.len() as u16).to_be_bytes());
        v.extend_from_slice(n);
    }
    v
}

#[test]
fn hevc_stream_type_and_parameter_sets_before_irap() {
    let (vps, sps, pps) = (
        &[0x40, 1, 0xaa][..],
        &[0x42, 1, 0xbb, 0xcc][..],
        &[0x44, 1, 0xdd][..],
    );
    let cfg = config(HEVC, hvcc(vps, sps, pps));
    let mut m = TsMuxer::new(Some(&cfg), Some(&aac())).unwrap();
    let mut out = Vec::new();
    m.segment_header(&mut out);
    let idr: &[u8] = &[0x26, 0x01, 0xaf, 0x11]; // IDR_W_RADL (19)
    let cra: &[u8] = &[0x2a, 0x01, 0xaf, 0x12]; // CRA (21), flagged non-key by the sender
    let trail: &[u8] = &[0x02, 0x01, 0xd0, 0x13]; // TRAIL_R (1)
    let own_aud: &[u8] = &[0x46, 0x01, 0x50];
    m.push(&packet(HEVC, 0, 0, true, avcc(&[idr])), &mut out)
        .unwrap();
    m.push(
        &packet(HEVC, 40, 0, false, avcc(&[own_aud, trail])),
        &mut out,
    )
    .unwrap();
    m.push(&packet(HEVC, 80, 0, false, avcc(&[cra])), &mut out)
        .unwrap();
    let d = demux(&concat(&out));
    let es: Vec<_> = d.pmts[0]
        .es_info
        .iter()
        .map(|e| e.stream_type as u8)
        .collect();
    assert_eq!(es, vec![0x24, 0x0f]);
    let aud: &[u8] = &[0x46, 0x01, 0x50];
    assert!(d.video[0].data == annexb(&[aud, vps, sps, pps, idr]));
    assert!(d.video[1].data == annexb(&[aud, trail]));
    assert!(d.video[2].data == annexb(&[aud, vps, sps, pps, cra]));
}

#[test]
fn truncated_hvcc_is_refused() {
    let good = hvcc(&[0x40, 1], &[0x42, 1], &[0x44, 1]);
    for len in [0, 10, 22, 23, 26, 28, good.len() - 1] {
        let cfg = config(HEVC, good[..len].to_vec());
        assert!(
            matches!(TsMuxer::new(Some(&cfg), None), Err(TsError::HevcConfig(_))),
            "len {len}"
        );
    }
}

#[test]
fn av1_is_skipped_with_a_reason_and_no_track_is_an_error() {
    let av1 = config(Codec::Video(VideoCodec::Av1), vec![0x81, 0, 0x0c, 0]);
    match TsMuxer::new(Some(&av1), None) {
        Err(TsError::NoTracks { skipped }) => assert!(skipped[0].contains("av1")),
        other => panic!("expected NoTracks, got {other:?}"),
    }
    assert!(matches!(
        TsMuxer::new(None, None),
        Err(TsError::NoTracks { .. })
    ));

    let mut m = TsMuxer::new(Some(&av1), Some(&aac())).unwrap();
    assert_eq!(m.skipped().len(), 1);
    assert!(m.skipped()[0].contains("av1"));
    let mut out = Vec::new();
    m.segment_header(&mut out);
    // AV1 frames are dropped, AAC goes through; the PCR moves to the audio PID.
    let av1_frame = packet(
        Codec::Video(VideoCodec::Av1),
        0,
        0,
        true,
        Bytes::from_static(&[0x12, 0]),
    );
    m.push(&av1_frame, &mut out).unwrap();
    m.push(
        &packet(AAC, 0, 0, true, Bytes::from_static(&[1, 2, 3])),
        &mut out,
    )
    .unwrap();
    let d = demux(&concat(&out));
    assert_eq!(d.pmts[0].pcr_pid.map(|p| p.as_u16()), Some(AUDIO_PID));
    assert_eq!(d.pmts[0].es_info.len(), 1);
    assert_eq!((d.video.len(), d.audio.len()), (0, 1));
}

#[test]
fn bad_frames_are_errors_and_the_muxer_stays_usable() {
    let mut m = TsMuxer::new(Some(&avc()), Some(&aac())).unwrap();
    let mut out = Vec::new();
    m.segment_header(&mut out);
    m.push(&packet(H264, 0, 0, true, avcc(&[&[0x65, 1]])), &mut out)
        .unwrap();
    let bad = [
        &[0, 0, 0, 9, 0x41, 1][..],    // declares 9, has 2
        &[0, 0, 0][..],                // length prefix cut
        &[0, 0, 0, 2, 0x41, 1, 0][..], // second prefix cut
        &[0xff, 0xff, 0xff, 0xff][..],
        &[][..],
        &[0, 0, 0, 0][..], // only an empty NAL
    ];
    for b in bad {
        let r = m.push(
            &packet(H264, 40, 0, false, Bytes::copy_from_slice(b)),
            &mut out,
        );
        assert!(
            matches!(
                r,
                Err(TsError::TruncatedNal { .. } | TsError::EmptyFrame { .. })
            ),
            "{b:?}: {r:?}"
        );
    }
    let big = Bytes::from(vec![0u8; 9000]);
    assert!(matches!(
        m.push(&packet(AAC, 40, 0, true, big), &mut out),
        Err(TsError::Adts { .. })
    ));
    let mp3 = packet(
        Codec::Audio(AudioCodec::Mp3),
        40,
        0,
        true,
        Bytes::from_static(&[0xff, 0xfb]),
    );
    assert!(matches!(
        m.push(&mp3, &mut out),
        Err(TsError::CodecMismatch { .. })
    ));
    m.push(&packet(H264, 80, 0, false, avcc(&[&[0x41, 2]])), &mut out)
        .unwrap();
    let d = demux(&concat(&out)); // continuity intact
    assert_eq!(d.video.len(), 2);
}

#[test]
fn set_config_updates_parameter_sets_and_pmt() {
    let mut m = TsMuxer::new(Some(&avc()), None).unwrap();
    let mut out = Vec::new();
    m.segment_header(&mut out);
    m.push(&packet(H264, 0, 0, true, avcc(&[&[0x65, 1]])), &mut out)
        .unwrap();
    // New SPS/PPS: the next IDR carries them. Audio appears: PMT v1 with both streams.
    let new_avcc = [
        1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 3, 0x67, 0x64, 0x1f, 1, 0, 2, 0x68, 0xee,
    ];
    m.set_config(&config(H264, new_avcc.to_vec())).unwrap();
    m.set_config(&aac()).unwrap();
    m.push(&packet(H264, 40, 0, true, avcc(&[&[0x65, 2]])), &mut out)
        .unwrap();
    m.push(
        &packet(AAC, 40, 0, true, Bytes::from_static(&[7; 10])),
        &mut out,
    )
    .unwrap();
    let d = demux(&concat(&out));
    assert_eq!(d.pmts.len(), 2);
    assert_eq!(d.pmts[1].es_info.len(), 2);
    assert_eq!(d.pmts[1].version_number.as_u8(), 1);
    assert!(
        d.video[1].data
            == annexb(&[
                &[0x09, 0xf0],
                &[0x67, 0x64, 0x1f],
                &[0x68, 0xee],
                &[0x65, 2]
            ])
    );
    assert_eq!(d.audio.len(), 1);
    // An AV1 switch drops video (audio remains); frames of it are then ignored.
    let av1 = config(Codec::Video(VideoCodec::Av1), vec![0x81, 0, 0x0c, 0]);
    m.set_config(&av1).unwrap();
    assert_eq!(m.skipped().len(), 1);
    m.push(
        &packet(
            Codec::Video(VideoCodec::Av1),
            80,
            0,
            true,
            Bytes::from_static(&[1]),
        ),
        &mut out,
    )
    .unwrap();
}

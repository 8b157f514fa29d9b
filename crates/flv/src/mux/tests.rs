use super::*;
use crate::reader::{FileTag, FlvReader, TagType};
use crate::tag::{parse_audio, parse_video, Parsed};
use media::MediaEvent;
use proptest::prelude::*;

const AVCC: &[u8] = &[
    1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1, 0, 2, 0x68, 0xee,
];

fn concat(parts: &[Bytes]) -> Vec<u8> {
    parts.iter().flat_map(|b| b.iter().copied()).collect()
}

fn config(body: Bytes, video: bool) -> TrackConfig {
    let parsed = if video {
        parse_video(body, Millis::from_ms(1000))
    } else {
        parse_audio(body, Millis::from_ms(1000))
    };
    match parsed {
        Ok(Parsed::Event(MediaEvent::Config(c))) => c,
        other => panic!("not a config: {other:?}"),
    }
}

/// Walks the file checking every PreviousTagSize (including PreviousTagSize0 = 0).
fn check_previous_tag_sizes(file: &[u8], tags: &[FileTag]) {
    assert_eq!(&file[9..13], &[0, 0, 0, 0]);
    let mut expect_offset = 13;
    for t in tags {
        assert_eq!(t.offset, expect_offset);
        let end = t.offset + 11 + t.body.len();
        let pts = u32::from_be_bytes(file[end..end + 4].try_into().unwrap());
        assert_eq!(
            pts as usize,
            11 + t.body.len(),
            "PreviousTagSize after tag at {}",
            t.offset
        );
        expect_offset = end + 4;
    }
    assert_eq!(expect_offset, file.len());
}

fn finalize_into(mux: &FlvMuxer, buf: &mut [u8], duration: f64) {
    for p in mux.finalize(duration) {
        p.apply(buf).unwrap();
    }
}

#[test]
fn round_trip_with_metadata_b_frames_and_audio() {
    let video_cfg = config(
        Bytes::from([&[0x17u8, 0, 0, 0, 0][..], AVCC].concat()),
        true,
    );
    let audio_cfg = config(Bytes::from_static(&[0xaf, 0x00, 0x11, 0x90]), false);
    let mut info = MetaInfo::from_configs(Some(&video_cfg), Some(&audio_cfg));
    info.encoder = Some("liverec-test".into());
    info.width = Some(1280.0);
    info.height = Some(720.0);
    let base = 1000;
    let mut mux = FlvMuxer::new(info, Millis::from_ms(base));
    let mut out = vec![mux.header()];

    // (kind, dts, body): an IPBB GOP with negative composition offsets on B-frames,
    // interleaved AAC, and one audio frame 10 ms before the base (clamped to 0).
    let nal = |t: u8| -> Vec<u8> { vec![0, 0, 0, 2, t, 0x88] };
    let seq: Vec<(TrackKind, i64, Bytes)> = vec![
        (TrackKind::Video, 1000, video_cfg.flv.clone()),
        (TrackKind::Audio, 1000, audio_cfg.flv.clone()),
        (
            TrackKind::Audio,
            990,
            Bytes::from_static(&[0xaf, 1, 0x21, 0x00]),
        ),
        (
            TrackKind::Video,
            1000,
            Bytes::from([&[0x17, 1, 0, 0, 0x42][..], &nal(0x65)].concat()),
        ),
        (
            TrackKind::Audio,
            1021,
            Bytes::from_static(&[0xaf, 1, 0x21, 0x01]),
        ),
        (
            TrackKind::Video,
            1033,
            Bytes::from([&[0x27, 1, 0, 0, 0x63][..], &nal(0x41)].concat()),
        ),
        (
            TrackKind::Video,
            1066,
            Bytes::from([&[0x27, 1, 0xff, 0xff, 0xdf][..], &nal(0x01)].concat()),
        ),
        (
            TrackKind::Video,
            1100,
            Bytes::from([&[0x27, 1, 0xff, 0xff, 0xbe][..], &nal(0x01)].concat()),
        ),
        (
            TrackKind::Audio,
            1043,
            Bytes::from_static(&[0xaf, 1, 0x21, 0x02]),
        ),
    ];
    for (kind, dts, body) in &seq {
        mux.write_tag(*kind, Millis::from_ms(*dts), body, &mut out);
    }
    let mut buf = concat(&out);
    assert_eq!(mux.bytes_written(), buf.len() as u64);
    finalize_into(&mux, &mut buf, 2.5);

    let r = FlvReader::new(Bytes::from(buf.clone())).unwrap();
    assert!(r.has_video && r.has_audio);
    assert_eq!(&buf[..9], b"FLV\x01\x05\x00\x00\x00\x09");
    let tags = r.read_all().unwrap();
    check_previous_tag_sizes(&buf, &tags);

    // onMetaData: a string then an ECMA array, with the patched values.
    assert_eq!(tags[0].tag_type, TagType::Script);
    assert_eq!(tags[0].timestamp, 0);
    let values = amf0::decode_all(&tags[0].body).unwrap();
    assert_eq!(values.len(), 2);
    assert_eq!(values[0].as_str(), Some("onMetaData"));
    let meta = &values[1];
    assert!(matches!(meta, amf0::Value::EcmaArray(_)));
    let num = |k: &str| meta.get(k).and_then(amf0::Value::as_number);
    assert_eq!(num("duration"), Some(2.5));
    assert_eq!(num("filesize"), Some(buf.len() as f64));
    assert_eq!(num("videocodecid"), Some(7.0));
    assert_eq!(num("audiocodecid"), Some(10.0));
    assert_eq!(num("audiosamplerate"), Some(48000.0));
    assert_eq!(num("audiochannels"), Some(2.0));
    assert_eq!(num("width"), Some(1280.0));
    assert_eq!(num("height"), Some(720.0));
    assert_eq!(meta.get("stereo"), Some(&amf0::Value::Boolean(true)));
    assert_eq!(meta.get("hasVideo"), Some(&amf0::Value::Boolean(true)));
    assert_eq!(
        meta.get("encoder").and_then(amf0::Value::as_str),
        Some("liverec-test")
    );

    // Media tags: same order, rebased timestamps, byte-identical bodies.
    let media = &tags[1..];
    assert_eq!(media.len(), seq.len());
    let expected_ts = [0, 0, 0, 0, 21, 33, 66, 100, 43];
    for ((t, (kind, _, body)), ts) in media.iter().zip(&seq).zip(expected_ts) {
        let want = match kind {
            TrackKind::Video => TagType::Video,
            TrackKind::Audio => TagType::Audio,
        };
        assert_eq!(t.tag_type, want);
        assert_eq!(t.timestamp, ts);
        assert_eq!(&t.body, body);
    }
    // Negative composition offsets survive the round trip.
    match parse_video(media[6].body.clone(), Millis::from_ms(66)) {
        Ok(Parsed::Event(MediaEvent::Packet(p))) => assert_eq!(p.cts, -33),
        other => panic!("{other:?}"),
    }
}

#[test]
fn zero_copy_bodies_and_header_emitted_on_demand() {
    let mut mux = FlvMuxer::new(MetaInfo::default(), Millis::from_ms(0));
    let body = Bytes::from(vec![0xaf, 1, 2, 3]);
    let mut out = Vec::new();
    // No header() call: write_tag emits it so the patch offsets stay valid.
    mux.try_write_tag(TrackKind::Audio, Millis::from_ms(5), &body, &mut out)
        .unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(&out[0][..3], b"FLV");
    assert_eq!(out[2].as_ptr(), body.as_ptr(), "body must not be copied");
    // Empty bodies get no empty Bytes.
    mux.try_write_tag(
        TrackKind::Audio,
        Millis::from_ms(6),
        &Bytes::new(),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), 6);
    let mut buf = concat(&out);
    assert_eq!(mux.bytes_written(), buf.len() as u64);
    finalize_into(&mux, &mut buf, 0.006);
    let r = FlvReader::new(Bytes::from(buf.clone())).unwrap();
    assert!(!r.has_audio && !r.has_video);
    let tags = r.read_all().unwrap();
    check_previous_tag_sizes(&buf, &tags);
    assert_eq!(tags[2].body.len(), 0);
}

#[test]
fn timestamps_clamp_instead_of_wrapping() {
    let mux = FlvMuxer::new(MetaInfo::default(), Millis::from_ms(10_000));
    assert_eq!(mux.file_timestamp(Millis::from_ms(10_000)), 0);
    assert_eq!(mux.file_timestamp(Millis::from_ms(9_990)), 0);
    assert_eq!(mux.file_timestamp(Millis::from_ms(i64::MIN)), 0);
    assert_eq!(
        mux.file_timestamp(Millis::from_ms(10_000 + (1 << 24) + 2)),
        (1 << 24) + 2
    );
    assert_eq!(
        mux.file_timestamp(Millis::from_ms(i64::MAX)),
        i32::MAX as u32
    );
    let mux = FlvMuxer::new(MetaInfo::default(), Millis::from_ms(i64::MIN));
    assert_eq!(
        mux.file_timestamp(Millis::from_ms(i64::MAX)),
        i32::MAX as u32
    );
}

#[test]
fn extended_timestamp_round_trips() {
    // Past 2^24 ms (4 h 39 m; reliability T1) the upper byte goes to TimestampExtended.
    let mut mux = FlvMuxer::new(MetaInfo::default(), Millis::from_ms(0));
    let mut out = vec![mux.header()];
    let ts = 0x0100_0002;
    mux.try_write_tag(
        TrackKind::Video,
        Millis::from_ms(ts),
        &Bytes::from_static(b"\x27\x01\0\0\0x"),
        &mut out,
    )
    .unwrap();
    let tags = FlvReader::new(Bytes::from(concat(&out)))
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(tags[1].timestamp, ts as u32);
}

#[test]
fn tag_header_layout() {
    assert_eq!(
        tag_header(9, 0x0a0b0c, 0x4433_2211),
        [9, 0x0a, 0x0b, 0x0c, 0x33, 0x22, 0x11, 0x44, 0, 0, 0]
    );
}

#[test]
fn oversized_body_is_refused() {
    let mut mux = FlvMuxer::new(MetaInfo::default(), Millis::from_ms(0));
    let mut out = Vec::new();
    let big = Bytes::from(vec![0u8; MAX_TAG_BODY + 1]);
    assert_eq!(
        mux.try_write_tag(TrackKind::Video, Millis::from_ms(0), &big, &mut out),
        Err(MuxError::TagTooLarge {
            len: MAX_TAG_BODY + 1
        })
    );
    assert!(out.is_empty());
    assert_eq!(mux.tags_dropped(), 0);
    // The infallible form leaves it out and counts it.
    mux.write_tag(TrackKind::Video, Millis::from_ms(0), &big, &mut out);
    assert!(out.is_empty());
    assert_eq!(mux.tags_dropped(), 1);
    assert_eq!(mux.bytes_written(), 0);
    // Exactly MAX_TAG_BODY fits.
    let max = big.slice(..MAX_TAG_BODY);
    mux.write_tag(TrackKind::Video, Millis::from_ms(0), &max, &mut out);
    assert_eq!(mux.tags_dropped(), 1);
    let tags = FlvReader::new(Bytes::from(concat(&out)))
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(tags[1].body.len(), MAX_TAG_BODY);
}

#[test]
fn finalize_sanitises_duration_and_patch_bounds() {
    let mut mux = FlvMuxer::new(MetaInfo::default(), Millis::from_ms(0));
    let mut buf = mux.header().to_vec();
    for d in [f64::NAN, -1.0, f64::INFINITY] {
        finalize_into(&mux, &mut buf, d);
        let tags = FlvReader::new(Bytes::from(buf.clone()))
            .unwrap()
            .read_all()
            .unwrap();
        let v = amf0::decode_all(&tags[0].body).unwrap();
        assert_eq!(
            v[1].get("duration").and_then(amf0::Value::as_number),
            Some(0.0)
        );
    }
    let p = Patch {
        offset: 10,
        bytes: [0; 8],
    };
    assert_eq!(
        p.apply(&mut [0u8; 17]),
        Err(MuxError::PatchOutOfRange {
            offset: 10,
            len: 17
        })
    );
    assert!(p.apply(&mut [0u8; 18]).is_ok());
    let far = Patch {
        offset: u64::MAX,
        bytes: [0; 8],
    };
    assert!(far.apply(&mut [0u8; 18]).is_err());
}

#[test]
fn recovery_finds_the_same_patches() {
    let info = MetaInfo {
        has_video: true,
        has_audio: true,
        video_codec_id: Some(7.0),
        audio_codec_id: Some(10.0),
        framerate: Some(30.0),
        encoder: Some("x".repeat(70_000)), // a long string must not confuse the walk
        ..MetaInfo::default()
    };
    let mut mux = FlvMuxer::new(info, Millis::from_ms(0));
    let mut out = vec![mux.header()];
    mux.try_write_tag(
        TrackKind::Audio,
        Millis::from_ms(0),
        &Bytes::from_static(b"\xaf\x01\x01"),
        &mut out,
    )
    .unwrap();
    let buf = concat(&out);
    assert_eq!(
        patches_for_existing(&buf, 12.5, buf.len() as u64),
        Some(mux.finalize(12.5))
    );
    assert_eq!(patches_for_existing(&buf[..20], 1.0, 0), None);
    assert_eq!(patches_for_existing(b"FLX", 1.0, 0), None);
    assert_eq!(patches_for_existing(&[], 1.0, 0), None);
}

#[test]
fn codec_ids_for_enhanced_and_legacy_tags() {
    let hvcc = [1u8; 23];
    let hevc = config(Bytes::from([&[0x90u8][..], b"hvc1", &hvcc].concat()), true);
    let av1 = config(
        Bytes::from([&[0x90u8][..], b"av01", &[0x81, 0, 0, 0]].concat()),
        true,
    );
    let mp4a = config(
        Bytes::from([&[0x90u8][..], b"mp4a", &[0x12, 0x08]].concat()),
        false,
    );
    let info = MetaInfo::from_configs(Some(&hevc), Some(&mp4a));
    assert_eq!(info.video_codec_id, Some(1_752_589_105.0)); // 'hvc1'
    assert_eq!(
        info.audio_codec_id,
        Some(f64::from(u32::from_be_bytes(*b"mp4a")))
    );
    assert_eq!(info.audio_sample_rate, Some(44100.0));
    assert_eq!(info.audio_channels, Some(1.0));
    assert!(info.has_video && info.has_audio);
    let info = MetaInfo::from_configs(Some(&av1), None);
    assert_eq!(info.video_codec_id, Some(1_635_135_537.0)); // spec example: 'av01'
    assert!(!info.has_audio);
    assert_eq!(info.audio_codec_id, None);
    let avc1 = config(Bytes::from([&[0x90u8][..], b"avc1", AVCC].concat()), true);
    assert_eq!(
        flv_codec_id(avc1.codec, &avc1.flv),
        f64::from(u32::from_be_bytes(*b"avc1"))
    );
    assert_eq!(
        flv_codec_id(Codec::Audio(AudioCodec::Mp3), b"\x2f\xff"),
        2.0
    );
    assert_eq!(
        flv_codec_id(Codec::Audio(AudioCodec::Mp3), b"\xe2\xff"),
        14.0
    );
    assert_eq!(
        flv_codec_id(Codec::Audio(AudioCodec::Mp3), b"\x91.mp3"),
        f64::from(u32::from_be_bytes(*b".mp3"))
    );
}

#[test]
fn stream_onmetadata_fills_gaps_only() {
    let body = amf0::encode_all(&[
        "onMetaData".into(),
        amf0::Value::EcmaArray(vec![
            ("width".into(), amf0::Value::Number(1920.0)),
            ("height".into(), amf0::Value::Number(1080.0)),
            ("fps".into(), amf0::Value::Number(29.97)),
            (
                "encoder".into(),
                amf0::Value::String("obs-output module".into()),
            ),
        ]),
    ]);
    let mut info = MetaInfo {
        width: Some(640.0),
        ..MetaInfo::default()
    };
    info.fill_from_onmetadata(&body);
    assert_eq!(info.width, Some(640.0));
    assert_eq!(info.height, Some(1080.0));
    assert_eq!(info.framerate, Some(29.97));
    assert_eq!(info.encoder.as_deref(), Some("obs-output module"));
    let before = info.clone();
    info.fill_from_onmetadata(b"\x08\xff\xff\xff\xff");
    assert_eq!(info, before);
}

fn arb_tags() -> impl Strategy<Value = (i64, Vec<(bool, i64, Vec<u8>)>)> {
    (
        -100_000i64..100_000,
        prop::collection::vec(
            (
                any::<bool>(),
                // Mostly forward, sometimes backward, occasionally huge jumps.
                prop_oneof![8 => -50i64..200, 1 => -(1i64 << 40)..(1i64 << 40)],
                prop::collection::vec(any::<u8>(), 0..5000),
            ),
            0..40,
        ),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn muxed_tags_read_back_equal((base, steps) in arb_tags()) {
        let mut mux = FlvMuxer::new(
            MetaInfo { has_video: true, has_audio: true, ..MetaInfo::default() },
            Millis::from_ms(base),
        );
        let mut out = vec![mux.header()];
        let mut dts = base;
        let mut expected = Vec::new();
        for (video, step, body) in steps {
            dts = dts.saturating_add(step);
            let kind = if video { TrackKind::Video } else { TrackKind::Audio };
            let body = Bytes::from(body);
            mux.write_tag(kind, Millis::from_ms(dts), &body, &mut out);
            let ts = (dts - base).clamp(0, i64::from(i32::MAX)) as u32;
            expected.push((kind, ts, body));
        }
        let mut buf = concat(&out);
        prop_assert_eq!(mux.bytes_written(), buf.len() as u64);
        finalize_into(&mux, &mut buf, 1.0);
        let tags = FlvReader::new(Bytes::from(buf.clone())).unwrap().read_all().unwrap();
        check_previous_tag_sizes(&buf, &tags);
        prop_assert_eq!(tags.len(), expected.len() + 1);
        for (t, (kind, ts, body)) in tags[1..].iter().zip(&expected) {
            let want = if *kind == TrackKind::Video { TagType::Video } else { TagType::Audio };
            prop_assert_eq!(t.tag_type, want);
            prop_assert_eq!(t.timestamp, *ts);
            prop_assert!(t.timestamp <= i32::MAX as u32);
            prop_assert_eq!(&t.body, body);
        }
        let meta = amf0::decode_all(&tags[0].body).unwrap();
        prop_assert_eq!(
            meta[1].get("filesize").and_then(amf0::Value::as_number),
            Some(buf.len() as f64)
        );
    }
}

//! The Enhanced RTMP fixtures (HEVC, AV1) are exactly what `mp4_to_eflv` makes of their
//! committed MP4, and carry that MP4's packets — as ffprobe demuxes the MP4 — byte for
//! byte, in order, with its presentation times. ffprobe is required.

use flv::{Parsed, TagType};
use liverec_testkit::eflv::mp4_to_eflv;
use liverec_testkit::probe::{hex, ERTMP_FIXTURES};
use liverec_testkit::{
    ffprobe_errors, fixture, flv_summary, probe_codecs, probe_packet_hashes, require_tool,
};
use media::{MediaEvent, TrackKind};
use sha2::{Digest, Sha256};

#[test]
fn ertmp_fixtures_hold_the_mp4_packets() {
    require_tool("ffprobe");
    for name in ERTMP_FIXTURES {
        let mp4 = fixture(&format!("{name}.mp4"));
        let flv = fixture(&format!("{name}.flv"));
        for p in [&mp4, &flv] {
            let size = std::fs::metadata(p).unwrap().len();
            assert!(size < 400_000, "{} is {size} bytes", p.display());
        }
        assert_eq!(ffprobe_errors(&mp4), "", "{name}.mp4: ffprobe errors");
        let want_codec = if name.starts_with("hevc") {
            "hevc"
        } else {
            "av1"
        };
        assert_eq!(probe_codecs(&mp4), [want_codec, "aac"], "{name}.mp4");

        // The committed FLV is the converter's output (the tool is deterministic).
        let made = mp4_to_eflv(&std::fs::read(&mp4).unwrap()).expect("convert");
        assert!(
            made == std::fs::read(&flv).unwrap(),
            "{name}.flv is not what mp4_to_eflv makes of {name}.mp4: run fixtures/make.sh {name}"
        );

        let want = probe_packet_hashes(&mp4);
        let count = |k| want.iter().filter(|p| p.kind == k).count();
        let s = flv_summary(&flv);
        assert!(s.read_error.is_none(), "{name}: {:?}", s.read_error);
        assert!(s.first_tag_is_metadata && s.headers_first, "{name}");
        assert_eq!(s.first_video_is_key, Some(true), "{name}");
        assert_eq!(
            (s.video_frames, s.audio_frames),
            (count(TrackKind::Video), count(TrackKind::Audio)),
            "{name}: frames"
        );
        assert_eq!(
            s.video_keyframes,
            want.iter()
                .filter(|p| p.kind == TrackKind::Video && p.key)
                .count(),
            "{name}: keyframes"
        );
        let meta = s.metadata.as_ref().expect("onMetaData");
        let fourcc = if want_codec == "hevc" {
            b"hvc1"
        } else {
            b"av01"
        };
        assert_eq!(
            meta.get("videocodecid").and_then(amf0::Value::as_number),
            Some(f64::from(u32::from_be_bytes(*fourcc))),
            "{name}: videocodecid is the FourCC"
        );

        // Frame by frame: the payload each tag parses to is the MP4 packet, and DTS + CTS
        // is its presentation time (one shift for the whole file, ms rounding).
        let mut next = [0usize; 2];
        let mut shift = None;
        let (mut with_cts, mut ex_headers) = (0, 0);
        for tag in liverec_testkit::probe::flv_tags(&flv) {
            let parsed = match tag.tag_type {
                TagType::Video => {
                    let b0 = tag.body[0];
                    assert!(b0 & 0x80 != 0, "{name}: legacy video tag at {}", tag.offset);
                    assert_eq!(&tag.body[1..5], fourcc, "{name}: FourCC");
                    ex_headers += 1;
                    flv::parse_video(
                        tag.body.clone(),
                        media::Millis::from_ms(i64::from(tag.timestamp)),
                    )
                }
                TagType::Audio => {
                    assert_eq!(tag.body[0], 0xaf, "{name}: legacy AAC audio tag");
                    flv::parse_audio(
                        tag.body.clone(),
                        media::Millis::from_ms(i64::from(tag.timestamp)),
                    )
                }
                _ => continue,
            };
            let p = match parsed {
                Ok(Parsed::Event(MediaEvent::Packet(p))) => p,
                Ok(_) => continue,
                Err(e) => panic!("{name}: tag at {}: {e}", tag.offset),
            };
            let k = p.codec.kind();
            let i = usize::from(k == TrackKind::Audio);
            let w = want
                .iter()
                .filter(|w| w.kind == k)
                .nth(next[i])
                .unwrap_or_else(|| panic!("{name}: more {k:?} frames than the MP4"));
            assert_eq!(
                hex(&Sha256::digest(&p.data)),
                w.sha256,
                "{name}: {k:?} frame {}",
                next[i]
            );
            next[i] += 1;
            with_cts += usize::from(p.cts != 0);
            let pts = (p.dts.as_ms() + i64::from(p.cts)) as f64;
            let shift = *shift.get_or_insert(w.pts_ms - pts);
            assert!(
                (pts + shift - w.pts_ms).abs() <= 1.0,
                "{name}: {k:?} frame at {pts} ms (+{shift}) vs {} ms in the MP4",
                w.pts_ms
            );
        }
        assert_eq!(
            next,
            [count(TrackKind::Video), count(TrackKind::Audio)],
            "{name}: frames parsed"
        );
        assert!(ex_headers > s.video_frames, "{name}: header + frames + end");
        if want_codec == "hevc" {
            assert!(with_cts > 0, "{name}: B-frames give composition offsets");
        } else {
            assert_eq!(with_cts, 0, "{name}: AV1 has no composition offsets");
        }
    }
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    assert!(mp4_to_eflv(b"").is_err());
    assert!(mp4_to_eflv(b"\0\0\0\x10ftypisom\0\0\0\0").is_err());
    let mp4 = std::fs::read(fixture("hevc_aac.mp4")).unwrap();
    for cut in [100, mp4.len() / 2, mp4.len() - 1] {
        assert!(mp4_to_eflv(&mp4[..cut]).is_err(), "cut at {cut}");
    }
}

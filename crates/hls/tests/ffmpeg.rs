//! A playlist of TS segments made by our muxer, played by ffmpeg 5.1 (R-FM-2, R-FM-6).
//! ffmpeg/ffprobe are required: a missing tool fails the test.

use std::process::Command;

use bytes::Bytes;
use liverec_hls::{MediaPlaylist, Segment};
use media::{MediaEvent, Millis, Packet, TrackConfig, TrackKind};
use mpegts::TsMuxer;

fn fixture_events(name: &str) -> (Option<TrackConfig>, Option<TrackConfig>, Vec<Packet>) {
    let (mut video, mut audio, mut packets) = (None, None, Vec::new());
    for tag in testkit::fixture_tags(name) {
        let dts = i64::from(tag.timestamp);
        let parsed = match tag.tag_type {
            flv::TagType::Audio => flv::parse_audio(tag.body.clone(), Millis::from_ms(dts)),
            flv::TagType::Video => flv::parse_video(tag.body.clone(), Millis::from_ms(dts)),
            _ => continue,
        };
        match parsed.expect("fixture tags parse") {
            flv::Parsed::Event(MediaEvent::Config(c)) => match c.kind() {
                TrackKind::Video => video = Some(c),
                TrackKind::Audio => audio = Some(c),
            },
            flv::Parsed::Event(MediaEvent::Packet(p)) => packets.push(p),
            _ => {}
        }
    }
    (video, audio, packets)
}

#[test]
fn playlist_of_our_segments_decodes_cleanly() {
    let ffmpeg = testkit::require_tool("ffmpeg");
    testkit::require_tool("ffprobe");
    let (video, audio, packets) = fixture_events("avc_aac_2s.flv");
    let mut m = TsMuxer::new(video.as_ref(), audio.as_ref()).unwrap();

    // Cut at the first video keyframe at least 7 s into the segment: 3 segments
    // (keyframes every 2 s over 20 s), each starting with PAT/PMT and a keyframe.
    let frame_ms = 1000.0 / 30.0;
    let mut segments: Vec<(i64, Vec<Bytes>)> = Vec::new();
    let mut last_video = 0;
    for p in &packets {
        let cut = p.is_video_key()
            && segments
                .last()
                .is_none_or(|(start, _)| p.dts.as_ms() - start >= 7000);
        if cut {
            let mut out = Vec::new();
            m.segment_header(&mut out);
            segments.push((p.dts.as_ms(), out));
        }
        let Some((_, out)) = segments.last_mut() else {
            continue; // nothing precedes the first keyframe in this fixture
        };
        m.push(p, out).unwrap();
        if p.kind() == TrackKind::Video {
            last_video = p.dts.as_ms();
        }
    }
    assert_eq!(segments.len(), 3);

    let dir = tempfile::tempdir().unwrap();
    let mut pl = MediaPlaylist::new();
    let t0 = chrono::DateTime::from_timestamp_millis(1_740_000_000_000).unwrap();
    for (i, (start, chunks)) in segments.iter().enumerate() {
        let name = format!("seg-{i}.ts");
        let bytes: Vec<u8> = chunks.iter().flat_map(|b| b.iter().copied()).collect();
        std::fs::write(dir.path().join(&name), bytes).unwrap();
        let end = segments
            .get(i + 1)
            .map_or(last_video as f64 + frame_ms, |(s, _)| *s as f64);
        pl.push_segment(Segment {
            uri: name,
            duration: (end - *start as f64) / 1000.0,
            program_date_time: Some(t0 + chrono::Duration::milliseconds(*start)),
            discontinuity: false,
        });
    }
    let text = pl.render(true);
    m3u8_rs::parse_media_playlist_res(text.as_bytes()).expect("m3u8-rs parses it");
    let path = dir.path().join("playlist.m3u8");
    std::fs::write(&path, &text).unwrap();
    assert!(
        (pl.total_duration() - 20.0).abs() < 0.05,
        "{}",
        pl.total_duration()
    );

    let decode = Command::new(ffmpeg)
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(decode.status.success());
    assert_eq!(String::from_utf8_lossy(&decode.stderr).trim(), "");
    assert_eq!(testkit::ffprobe_errors(&path), "");
    let probed = testkit::probe_packets(&path);
    let v = probed.iter().filter(|p| p.kind == TrackKind::Video).count();
    let a = probed.iter().filter(|p| p.kind == TrackKind::Audio).count();
    assert_eq!((v, a), (600, 939));
}

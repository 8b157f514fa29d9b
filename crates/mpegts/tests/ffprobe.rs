//! The fixture through our TS muxer, checked by ffprobe/ffmpeg 5.1 (R-FM-5, R-FM-6).
//! ffprobe is required: a missing tool fails the test, it never skips.

mod common;

use std::process::Command;

use common::{concat, fixture_events};
use liverec_mpegts::TsMuxer;
use media::TrackKind;

#[test]
fn fixture_muxes_to_a_clean_faithful_ts() {
    let ffmpeg = testkit::require_tool("ffmpeg");
    testkit::require_tool("ffprobe");
    let (video, audio, packets) = fixture_events("avc_aac_2s.flv");
    let mut m = TsMuxer::new(video.as_ref(), audio.as_ref()).unwrap();
    let mut out = Vec::new();
    m.segment_header(&mut out);
    for p in &packets {
        m.push(p, &mut out).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.ts");
    std::fs::write(&path, concat(&out)).unwrap();

    assert_eq!(testkit::ffprobe_errors(&path), "");
    let probed = testkit::probe_packets(&path);
    let pv: Vec<_> = probed
        .iter()
        .filter(|p| p.kind == TrackKind::Video)
        .collect();
    let pa = probed.iter().filter(|p| p.kind == TrackKind::Audio).count();
    assert_eq!((pv.len(), pa), (600, 939));

    let decode = Command::new(ffmpeg)
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(decode.status.success());
    let errors = String::from_utf8_lossy(&decode.stderr);
    assert_eq!(errors.trim(), "", "ffmpeg decode errors");

    // Video PTS relative to the first, in decode order, equals the input's (ms).
    let input: Vec<i64> = packets
        .iter()
        .filter(|p| p.kind() == TrackKind::Video)
        .map(|p| p.pts().as_ms())
        .collect();
    assert_eq!(input.len(), 600);
    for (i, (got, want)) in pv.iter().zip(&input).enumerate() {
        let rel = got.pts_ms - pv[0].pts_ms;
        let want = (want - input[0]) as f64;
        assert!((rel - want).abs() <= 1.0, "video {i}: {rel} vs {want}");
    }
    // A/V start skew is the input's: first audio PTS − first video PTS.
    let pa0 = probed.iter().find(|p| p.kind == TrackKind::Audio).unwrap();
    let ia0 = packets
        .iter()
        .find(|p| p.kind() == TrackKind::Audio)
        .unwrap();
    let skew_in = (ia0.pts().as_ms() - input[0]) as f64;
    assert!((pa0.pts_ms - pv[0].pts_ms - skew_in).abs() <= 1.0);
}

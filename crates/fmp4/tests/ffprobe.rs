//! R-FM-6 with the real tools: ffprobe/ffmpeg read our files without a word.

mod common;

use common::*;
use media::{Millis, TrackKind};
use std::process::Command;

fn count(p: &[testkit::ProbePacket], k: TrackKind) -> usize {
    p.iter().filter(|p| p.kind == k).count()
}

fn ffmpeg_decode_errors(path: &std::path::Path) -> String {
    let ffmpeg = testkit::require_tool("ffmpeg");
    let out = Command::new(ffmpeg)
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn avc_aac_fixture_probes_clean_and_faithful() {
    testkit::require_tool("ffprobe");
    let f = load("avc_aac_2s.flv");
    let base = f.packets.iter().map(|p| p.dts).min().unwrap();
    let (parts, patches) = mux(&f, base);
    let mut file = concat(&parts);
    apply(&mut file, &patches);
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "x.mp4", &file);

    assert_eq!(testkit::ffprobe_errors(&path), "");
    let packets = testkit::probe_packets(&path);
    assert_eq!(count(&packets, TrackKind::Video), 600);
    assert_eq!(count(&packets, TrackKind::Audio), 939);
    // Duration within one frame of the media held. `testkit::media_duration` spans the
    // video only (20.000 s), but this file's audio starts 46 ms after the first video DTS
    // and ends at 20.078 s, and ffmpeg reports a fragmented track's duration as the end
    // of its timeline (its own `-movflags frag_keyframe+empty_moov` copy of this fixture
    // probes 20.0775 s too). So the reference is the end of the last media on the file's
    // timeline, which starts at 0 = `base` (R-FM-5 rebase).
    let held_end = packets
        .iter()
        .map(|p| p.dts_ms.max(p.pts_ms) + p.duration_ms)
        .fold(0.0, f64::max)
        / 1000.0;
    let format = testkit::probe_duration(&path);
    assert!(
        (format - held_end).abs() <= 0.033,
        "format duration {format} vs media end {held_end}"
    );
    let video_span = testkit::media_duration(&packets);
    assert!((video_span - 20.0).abs() < 0.001, "video span {video_span}");
    assert_eq!(ffmpeg_decode_errors(&path), "");

    // Video PTS relative to the first equals the input's (R-FM-5).
    let mut ours: Vec<f64> = packets
        .iter()
        .filter(|p| p.kind == TrackKind::Video)
        .map(|p| p.pts_ms)
        .collect();
    let mut theirs: Vec<f64> = f
        .packets
        .iter()
        .filter(|p| p.kind() == TrackKind::Video)
        .map(|p| p.pts().as_ms() as f64)
        .collect();
    // Both in decode order; compare as sets of presentation times in order.
    ours.sort_by(f64::total_cmp);
    theirs.sort_by(f64::total_cmp);
    let (o0, t0) = (ours[0], theirs[0]);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(
            ((a - o0) - (b - t0)).abs() <= 1.0,
            "video frame {i}: pts {} vs input {}",
            a - o0,
            b - t0
        );
    }
    // A/V start skew equals the input's (first audio vs first video, decode order).
    let first = |k: TrackKind| {
        packets
            .iter()
            .filter(|p| p.kind == k)
            .map(|p| p.pts_ms)
            .fold(f64::INFINITY, f64::min)
    };
    let in_first = |k: TrackKind| {
        f.packets
            .iter()
            .filter(|p| p.kind() == k)
            .map(|p| p.pts())
            .min()
            .unwrap()
            .as_ms() as f64
    };
    let skew = first(TrackKind::Video) - first(TrackKind::Audio);
    let in_skew = in_first(TrackKind::Video) - in_first(TrackKind::Audio);
    assert!((skew - in_skew).abs() <= 1.0, "skew {skew} vs {in_skew}");
}

#[test]
fn cut_file_probes_up_to_last_fragment() {
    testkit::require_tool("ffprobe");
    let f = load("avc_aac_2s.flv");
    let base = f.packets.iter().map(|p| p.dts).min().unwrap();
    let mut m = liverec_fmp4::Fmp4Muxer::new(f.video.as_ref(), f.audio.as_ref(), base).unwrap();
    let mut out = vec![m.init_segment()];
    // Feed ~7 s: three complete 2 s GOP fragments are out, the fourth is pending.
    for p in f
        .packets
        .iter()
        .filter(|p| p.dts < base + Millis::from_ms(7000))
    {
        m.push(p, &mut out).unwrap();
    }
    // The crash: no finish(), just the bytes emitted so far.
    let file = concat(&out);
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "crash.mp4", &file);
    assert_eq!(testkit::ffprobe_errors(&path), "");
    let packets = testkit::probe_packets(&path);
    assert_eq!(count(&packets, TrackKind::Video), 180, "3 GOPs of 60");
    assert!(count(&packets, TrackKind::Audio) > 270);
    assert_eq!(ffmpeg_decode_errors(&path), "");
}

#[test]
fn audio_only_and_video_only_probe_clean() {
    testkit::require_tool("ffprobe");
    for (name, video, audio) in [("aac_only.flv", 0, 863), ("avc_only.flv", 600, 0)] {
        let f = load(name);
        let base = f.packets.iter().map(|p| p.dts).min().unwrap();
        let (parts, patches) = mux(&f, base);
        let mut file = concat(&parts);
        apply(&mut file, &patches);
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "x.mp4", &file);
        assert_eq!(testkit::ffprobe_errors(&path), "", "{name}");
        let packets = testkit::probe_packets(&path);
        assert_eq!(count(&packets, TrackKind::Video), video, "{name}");
        assert_eq!(count(&packets, TrackKind::Audio), audio, "{name}");
        let media = testkit::media_duration(&packets);
        let format = testkit::probe_duration(&path);
        assert!(
            (format - media).abs() <= 0.033,
            "{name}: format duration {format} vs media {media}"
        );
        assert_eq!(ffmpeg_decode_errors(&path), "", "{name}");
    }
}

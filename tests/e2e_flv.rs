//! End to end: the real daemon, real pushes (ffmpeg and our test publisher), every
//! recorded file checked with ffprobe and our own FLV parser (R-FM-1, R-FM-5, R-FM-6,
//! R-SG-1, R-SG-3, R-IN-1).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{ordered, Daemon};
use media::TrackKind;
use testkit::{
    ffprobe_errors, flv_summary, media_duration, probe_packets, require_tool, FlvSummary,
    PublishOptions,
};

const INTERVAL_S: i64 = 4;

fn config() -> String {
    format!(
        "[record]\ndefault_template = 1\n[[template]]\nid = 1\nname = \"e2e\"\nflv = {{ enable = true, record_interval = {INTERVAL_S}, file_name = \"{{StreamID}}-{{Seq}}\" }}\n"
    )
}

/// A media frame as the checks see it: track, timestamp (ms) and body hash.
#[derive(Debug, Clone, PartialEq)]
struct Frame {
    kind: TrackKind,
    ts: i64,
    key: bool,
    hash: [u8; 32],
}

fn frames(s: &FlvSummary) -> Vec<Frame> {
    s.tags
        .iter()
        .filter(|t| t.is_frame())
        .filter_map(|t| {
            Some(Frame {
                kind: t.track()?,
                ts: i64::from(t.timestamp),
                key: t.key,
                hash: t.sha256,
            })
        })
        .collect()
}

/// Checks every file of one push against the fixture it came from.
fn check_recording(files: &[PathBuf], fixture: &Path) {
    assert!(
        !files.is_empty(),
        "no files recorded for {}",
        fixture.display()
    );
    let input = flv_summary(fixture);
    let input_frames = frames(&input);
    let has_video = input.video_frames > 0;
    let mut got: Vec<Frame> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let what = format!("{} (file {i} of {})", f.display(), files.len());
        let errors = ffprobe_errors(f);
        assert!(errors.is_empty(), "{what}: ffprobe errors:\n{errors}");
        let s = flv_summary(f);
        assert!(s.read_error.is_none(), "{what}: {:?}", s.read_error);
        assert!(
            s.first_tag_is_metadata,
            "{what}: onMetaData is not the first tag"
        );
        assert!(
            s.headers_first,
            "{what}: sequence headers do not precede the frames"
        );
        if has_video {
            assert_eq!(
                s.first_video_is_key,
                Some(true),
                "{what}: does not start on a keyframe"
            );
            let first = s.tags.iter().find(|t| t.is_frame()).map(|t| t.track());
            assert_eq!(
                first,
                Some(Some(TrackKind::Video)),
                "{what}: first frame is not the keyframe"
            );
        }
        // onMetaData states the real size and duration (R-FM-1).
        assert_eq!(
            s.filesize,
            Some(s.file_size as f64),
            "{what}: filesize metadata"
        );
        let packets = probe_packets(f);
        let kind = if has_video {
            TrackKind::Video
        } else {
            TrackKind::Audio
        };
        let frame_ms = packets
            .iter()
            .filter(|p| p.kind == kind && p.duration_ms.is_finite())
            .map(|p| p.duration_ms)
            .fold(0.0, f64::max);
        assert!(frame_ms > 0.0, "{what}: ffprobe gives no frame duration");
        let probed = media_duration(&packets);
        let meta = s.duration.unwrap_or(-1.0);
        assert!(
            (meta - probed).abs() * 1000.0 <= frame_ms + 0.5,
            "{what}: metadata duration {meta} s vs probed {probed} s (one frame = {frame_ms} ms)"
        );
        // Files are cut at the first keyframe at or after the interval (R-SG-1): every
        // file but the last holds at least the interval, and less than interval + 1 GOP.
        if i + 1 < files.len() {
            assert!(
                probed >= INTERVAL_S as f64 - 0.1,
                "{what}: cut early at {probed} s"
            );
            assert!(
                probed < INTERVAL_S as f64 + 2.1,
                "{what}: cut late at {probed} s"
            );
        }
        // Relative timing inside the file equals the input's (R-FM-5): the file is the
        // input shifted by one constant, which also keeps the A/V start skew.
        let fr = frames(&s);
        let Some(first) = fr.first() else {
            panic!("{what}: no frames")
        };
        let pos = input_frames
            .iter()
            .position(|x| x.hash == first.hash && x.kind == first.kind)
            .unwrap_or_else(|| panic!("{what}: first frame not found in the input"));
        let offset = input_frames[pos].ts - first.ts;
        for (j, x) in fr.iter().enumerate() {
            let inp = &input_frames[pos + j];
            assert_eq!(
                (x.kind, x.hash),
                (inp.kind, inp.hash),
                "{what}: frame {j} differs from input frame {}",
                pos + j
            );
            assert_eq!(x.ts + offset, inp.ts, "{what}: frame {j} re-timed");
        }
        got.extend(fr);
    }
    // All files together hold exactly the input's frames: none dropped, none duplicated
    // at the cuts, in order.
    assert_eq!(got.len(), input_frames.len(), "frame count over all files");
    let gv: Vec<_> = got
        .iter()
        .filter(|f| f.kind == TrackKind::Video)
        .map(|f| f.hash)
        .collect();
    let iv: Vec<_> = input_frames
        .iter()
        .filter(|f| f.kind == TrackKind::Video)
        .map(|f| f.hash)
        .collect();
    assert_eq!(gv, iv, "video frames");
    let ga: Vec<_> = got
        .iter()
        .filter(|f| f.kind == TrackKind::Audio)
        .map(|f| f.hash)
        .collect();
    let ia: Vec<_> = input_frames
        .iter()
        .filter(|f| f.kind == TrackKind::Audio)
        .map(|f| f.hash)
        .collect();
    assert_eq!(ga, ia, "audio frames");
}

const FIXTURES: [&str; 4] = ["avc_aac_2s", "avc_aac_1s", "aac_only", "avc_only"];

#[test]
fn ffmpeg_pushes_of_every_fixture_are_recorded_exactly() {
    let ffmpeg = require_tool("ffmpeg");
    require_tool("ffprobe");
    let mut d = Daemon::start(&config());
    // All four at once: concurrent publishers on one daemon.
    let mut children: Vec<_> = FIXTURES
        .iter()
        .map(|name| {
            let child = Command::new(&ffmpeg)
                .args(["-hide_banner", "-loglevel", "error", "-re", "-i"])
                .arg(testkit::fixture(&format!("{name}.flv")))
                .args(["-c", "copy", "-f", "flv"])
                .arg(d.url("live", &format!("ff_{name}")))
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn ffmpeg");
            (name, child)
        })
        .collect();
    for (name, c) in &mut children {
        let st = c.wait().expect("ffmpeg wait");
        assert!(
            st.success(),
            "ffmpeg push of {name} failed: {st}; daemon log:\n{}",
            d.log()
        );
    }
    for name in FIXTURES {
        let files = d.wait_files(
            "localhost",
            "live",
            &format!("ff_{name}"),
            "flv",
            1,
            Duration::from_secs(20),
        );
        check_recording(&ordered(files), &testkit::fixture(&format!("{name}.flv")));
    }
    assert_eq!(d.stop(), Some(0), "daemon exit code; log:\n{}", d.log());
}

#[test]
fn test_publisher_pushes_at_full_speed_are_recorded_exactly() {
    require_tool("ffprobe");
    let mut d = Daemon::start(&config());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, name) in FIXTURES.iter().enumerate() {
            let url = d.url("live", &format!("tk_{name}"));
            let tags = Arc::new(testkit::fixture_tags(&format!("{name}.flv")));
            // Small chunks on one of them: the worst case for chunk reassembly.
            let opts = PublishOptions {
                chunk_size: if i == 1 { 128 } else { 4096 },
                complex_handshake: i == 2,
                ..PublishOptions::default()
            };
            tasks.push(tokio::spawn(async move {
                testkit::publish_flv(&url, &tags, &opts).await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("join"));
        }
        out
    });
    for (name, r) in FIXTURES.iter().zip(results) {
        r.unwrap_or_else(|e| panic!("publish {name}: {e}; log:\n{}", d.log()));
    }
    for name in FIXTURES {
        let files = d.wait_files(
            "localhost",
            "live",
            &format!("tk_{name}"),
            "flv",
            1,
            Duration::from_secs(20),
        );
        check_recording(&ordered(files), &testkit::fixture(&format!("{name}.flv")));
    }
    assert!(
        !d.log().contains("fell behind"),
        "a recorder lagged:\n{}",
        d.log()
    );
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn default_config_records_one_flv_named_by_the_default_pattern() {
    require_tool("ffprobe");
    // No template: the built-in template 0 (FLV, 1800 s) and the default name pattern.
    let mut d = Daemon::start("");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tags = testkit::fixture_tags("avc_aac_1s.flv");
    rt.block_on(testkit::publish_flv(
        &d.url("live", "cam1"),
        &tags,
        &PublishOptions::default(),
    ))
    .unwrap_or_else(|e| panic!("publish: {e}"));
    let files = d.wait_files(
        "localhost",
        "live",
        "cam1",
        "flv",
        1,
        Duration::from_secs(20),
    );
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0]
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    // cam1_YYYY-MM-DD-HH-MM-SS_YYYY-MM-DD-HH-MM-SS.flv
    let parts: Vec<&str> = name.trim_end_matches(".flv").split('_').collect();
    assert_eq!(parts.len(), 3, "{name}");
    assert_eq!(parts[0], "cam1");
    for p in &parts[1..] {
        let fields: Vec<&str> = p.split('-').collect();
        assert_eq!(fields.len(), 6, "{name}");
        assert!(
            fields.iter().all(|f| f.chars().all(|c| c.is_ascii_digit())),
            "{name}"
        );
    }
    check_recording(&files, &testkit::fixture("avc_aac_1s.flv"));
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn gstreamer_rtmp2sink_push_is_recorded_and_ends_cleanly() {
    let gst = require_tool("gst-launch-1.0");
    require_tool("ffprobe");
    let mut d = Daemon::start(&config());
    let fixture = testkit::fixture("avc_aac_2s.flv");
    // Remux only (flvdemux → flvmux), so the frames are the fixture's; rtmp2sink is
    // GStreamer's RTMP client with its own handshake and command flow (R-IN-1).
    let st = Command::new(gst)
        .arg("-q")
        .arg("filesrc")
        .arg(format!("location={}", fixture.display()))
        .args([
            "!",
            "flvdemux",
            "name=d",
            "d.video",
            "!",
            "queue",
            "!",
            "h264parse",
            "!",
            "flvmux",
            "name=m",
            "streamable=true",
            "!",
            "rtmp2sink",
            "sync=false",
        ])
        .arg(format!("location={}", d.url("live", "gst")))
        .args(["d.audio", "!", "queue", "!", "aacparse", "!", "m."])
        .stdin(Stdio::null())
        .status()
        .expect("run gst-launch-1.0");
    assert!(st.success(), "gst-launch failed: {st}; log:\n{}", d.log());
    let files = ordered(d.wait_files(
        "localhost",
        "live",
        "gst",
        "flv",
        1,
        Duration::from_secs(20),
    ));
    let input = flv_summary(&fixture);
    let (mut v, mut a) = (0, 0);
    for f in &files {
        let errors = ffprobe_errors(f);
        assert!(errors.is_empty(), "{}: {errors}", f.display());
        let s = flv_summary(f);
        assert_eq!(s.first_video_is_key, Some(true), "{}", f.display());
        assert!(
            s.first_tag_is_metadata && s.headers_first,
            "{}",
            f.display()
        );
        v += s.video_frames;
        a += s.audio_frames;
    }
    assert_eq!(
        (v, a),
        (input.video_frames, input.audio_frames),
        "frames over {} files",
        files.len()
    );
    // The end of the push (FCUnpublish/deleteStream as rtmp2sink sends them) is a normal
    // unpublish, not a protocol error.
    assert!(!d.log().contains("protocol error"), "log:\n{}", d.log());
    assert_eq!(d.stop(), Some(0));
}

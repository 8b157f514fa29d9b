//! Issue 12, R-SP-1…3: splicing interrupted pushes. With `continue_timeout` a recording
//! outlives its push; the same stream publishing again inside the window continues it —
//! HLS after `#EXT-X-DISCONTINUITY`, FLV/MP4/AAC on one continuous timeline when the codec
//! configuration is unchanged (a new file when it changed) — and a push after the window
//! starts new files.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::Daemon;
use flv::{FileTag, TagType};
use media::TrackKind;
use testkit::{
    ffprobe_errors, media_duration, probe_codecs, probe_packet_hashes, probe_packets, require_tool,
    HashedPacket, PublishOptions,
};

/// Seconds the recordings wait for the stream to come back.
const WINDOW_S: u64 = 4;

fn template(formats: &[&str]) -> String {
    let mut t = String::from("[record]\ndefault_template = 1\n[[template]]\nid = 1\n");
    for f in formats {
        let extra = if *f == "hls" {
            ", segment_duration = 2"
        } else {
            ""
        };
        t.push_str(&format!(
            "{f} = {{ enable = true, record_interval = 600, continue_timeout = {WINDOW_S}{extra} }}\n"
        ));
    }
    t
}

fn push(d: &Daemon, stream: &str, fixture: &str) {
    let url = d.url("live", stream);
    let tags = Arc::new(testkit::fixture_tags(fixture));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move { testkit::publish_flv(&url, &tags, &PublishOptions::default()).await })
        .expect("publish");
}

/// The loop period of a fixture (span plus one video frame, or one audio frame for an
/// audio-only one): where a continuation's first frame lands.
fn period(tags: &[FileTag]) -> f64 {
    let frames = |k: TagType| -> Vec<u32> {
        tags.iter()
            .filter(|t| t.tag_type == k && t.body.get(1) == Some(&1))
            .map(|t| t.timestamp)
            .collect()
    };
    let v = frames(TagType::Video);
    let a = frames(TagType::Audio);
    let f = if v.len() >= 2 { &v } else { &a };
    let frame = f[f.len() - 1] - f[f.len() - 2];
    f64::from(tags.iter().map(|t| t.timestamp).max().expect("tags") + frame)
}

/// Both pushes' packets on one timeline (the second a loop period after the first).
fn both_pushes(fixture: &str) -> Vec<HashedPacket> {
    let p = period(&testkit::fixture_tags(fixture));
    let one = probe_packet_hashes(&testkit::fixture(fixture));
    (0..2)
        .flat_map(|k| {
            one.iter().map(move |h| HashedPacket {
                pts_ms: h.pts_ms + f64::from(k) * p,
                dts_ms: h.dts_ms + f64::from(k) * p,
                ..h.clone()
            })
        })
        .collect()
}

fn files(d: &Daemon, stream: &str, ext: &str, n: usize) -> Vec<PathBuf> {
    let f = d.wait_files(
        "localhost",
        "live",
        stream,
        ext,
        n,
        Duration::from_secs(WINDOW_S + 30),
    );
    assert_eq!(f.len(), n, "{ext}: {f:?}; log:\n{}", d.log());
    f
}

/// A push, a reconnect inside the window, the window passing: one file per format
/// holding both pushes back to back.
fn splice_twice(fixture: &str, formats: &[&str]) -> (Daemon, Vec<HashedPacket>) {
    require_tool("ffprobe");
    let d = Daemon::start(&template(formats));
    push(&d, "cam", fixture);
    std::thread::sleep(Duration::from_millis(1500));
    push(&d, "cam", fixture);
    (d, both_pushes(fixture))
}

#[test]
fn a_push_returning_inside_the_window_continues_every_file() {
    let (d, want) = splice_twice("avc_aac_2s.flv", &["flv", "mp4", "aac", "hls"]);
    let want_s = want.iter().filter(|p| p.kind == TrackKind::Video).count() as f64 / 30.0;
    for ext in ["flv", "mp4"] {
        let f = files(&d, "cam", ext, 1).remove(0);
        common::assert_monotonic(&f);
        // Both pushes' frames, in order, the second continuing one frame after the first.
        common::assert_follows_packets(std::slice::from_ref(&f), &want, true, 45.0);
        let got = media_duration(&probe_packets(&f));
        assert!(
            (got - want_s).abs() < 0.3,
            "{ext}: {got:.2} s of media for {want_s:.2} s pushed (not the wall clock)"
        );
    }
    let aac = files(&d, "cam", "aac", 1).remove(0);
    let audio = want.iter().filter(|p| p.kind == TrackKind::Audio).count();
    assert_eq!(
        probe_packets(&aac).len(),
        audio,
        "every audio frame of both pushes"
    );
    let playlist = files(&d, "cam", "m3u8", 1).remove(0);
    assert_eq!(
        common::discontinuities(&playlist),
        1,
        "one #EXT-X-DISCONTINUITY at the splice"
    );
    common::assert_monotonic(&playlist);
    common::assert_follows_packets(std::slice::from_ref(&playlist), &want, false, 45.0);
    assert!(
        d.log().contains("the recording continues"),
        "log:\n{}",
        d.log()
    );
    // R-SP-4: each spliced file lists its interruption: ~1.5 s of wall clock, at the end
    // of the first push's media.
    let (status, body) = d.api_get("/v1/recordings?stream=cam");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let recs = v["recordings"].as_array().expect("recordings");
    assert_eq!(recs.len(), 4, "{body}");
    let first_push_ms = want_s * 1000.0 / 2.0;
    for r in recs {
        let gaps = r["gaps"].as_array().expect("gaps");
        assert_eq!(gaps.len(), 1, "{r}");
        let g = &gaps[0];
        let (start, end) = (
            g["start_time_ms"].as_i64().expect("start"),
            g["end_time_ms"].as_i64().expect("end"),
        );
        assert!(end - start >= 1000 && end - start < 10_000, "{r}");
        let offset = g["offset_ms"].as_i64().expect("offset") as f64;
        assert!((offset - first_push_ms).abs() < 200.0, "{r}");
    }
}

/// A reconnect faster than the recorder drains its ring: the second push (as fast as
/// the socket allows) starts while the first push's end is still being written. It
/// continues the same files all the same, with every frame of both pushes.
#[test]
fn a_push_that_returns_before_the_last_one_is_written_continues_the_files() {
    require_tool("ffprobe");
    let d = Daemon::start(&template(&["flv", "mp4", "hls"]));
    push(&d, "quick", "avc_aac_2s.flv");
    push(&d, "quick", "avc_aac_2s.flv");
    let want = both_pushes("avc_aac_2s.flv");
    for ext in ["flv", "mp4"] {
        let f = files(&d, "quick", ext, 1).remove(0);
        common::assert_monotonic(&f);
        common::assert_follows_packets(std::slice::from_ref(&f), &want, true, 45.0);
    }
    let playlist = files(&d, "quick", "m3u8", 1).remove(0);
    assert_eq!(common::discontinuities(&playlist), 1);
    common::assert_follows_packets(std::slice::from_ref(&playlist), &want, false, 45.0);
}

#[test]
fn video_only_and_audio_only_pushes_splice_too() {
    for (fixture, stream) in [("avc_only.flv", "video"), ("aac_only.flv", "audio")] {
        require_tool("ffprobe");
        let d = Daemon::start(&template(&["flv", "hls"]));
        push(&d, stream, fixture);
        std::thread::sleep(Duration::from_millis(1500));
        push(&d, stream, fixture);
        let want = both_pushes(fixture);
        let f = files(&d, stream, "flv", 1).remove(0);
        common::assert_monotonic(&f);
        common::assert_follows_packets(std::slice::from_ref(&f), &want, true, 45.0);
        let playlist = files(&d, stream, "m3u8", 1).remove(0);
        assert_eq!(common::discontinuities(&playlist), 1, "{fixture}");
        common::assert_follows_packets(std::slice::from_ref(&playlist), &want, false, 45.0);
    }
}

#[test]
fn a_push_after_the_window_gets_new_files() {
    require_tool("ffprobe");
    let d = Daemon::start(&template(&["flv", "hls"]));
    push(&d, "late", "avc_aac_2s.flv");
    // Meanwhile `/v1/streams` shows the stream waiting, with its window's end (once the
    // recorders have read the end of the push).
    let polled = std::time::Instant::now();
    let (body, s) = loop {
        let (status, body) = d.api_get("/v1/streams");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let found = v["streams"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["stream"] == "late"))
            .cloned();
        if let Some(s) = found {
            break (body, s);
        }
        assert!(
            polled.elapsed() < Duration::from_secs(3),
            "not listed while waiting: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(s["state"], "waiting", "{body}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let deadline = s["deadline"].as_i64().expect("deadline");
    assert!(
        deadline >= now && deadline <= now + WINDOW_S as i64 + 1,
        "{body}"
    );
    files(&d, "late", "flv", 1);
    let (_, body) = d.api_get("/v1/streams");
    assert!(
        !body.contains("\"late\""),
        "still listed after the window: {body}"
    );
    std::thread::sleep(Duration::from_secs(WINDOW_S + 1));
    assert!(
        d.log().contains("continuation window over"),
        "log:\n{}",
        d.log()
    );
    push(&d, "late", "avc_aac_2s.flv");
    let flv = files(&d, "late", "flv", 2);
    let playlists = files(&d, "late", "m3u8", 2);
    for p in &playlists {
        assert_eq!(common::discontinuities(p), 0);
    }
    for f in &flv {
        common::assert_monotonic(f);
    }
}

#[test]
fn a_resolution_change_across_a_splice_starts_new_flv_and_mp4_files_and_hls_continues() {
    require_tool("ffprobe");
    let d = Daemon::start(&template(&["flv", "mp4", "hls"]));
    push(&d, "res", "avc_aac_2s.flv");
    std::thread::sleep(Duration::from_millis(1500));
    // Another encoder configuration: 426x240 instead of 640x360.
    push(&d, "res", "avc_aac_1s.flv");
    for ext in ["flv", "mp4"] {
        let f = files(&d, "res", ext, 2);
        for x in &f {
            common::assert_monotonic(x);
            assert!(probe_codecs(x).contains(&"h264".to_string()));
        }
    }
    let playlist = files(&d, "res", "m3u8", 1).remove(0);
    assert_eq!(common::discontinuities(&playlist), 1);
    let errors = ffprobe_errors(&playlist);
    assert!(errors.is_empty(), "{errors}");
    let got = media_duration(&probe_packets(&playlist));
    assert!(got > 39.0, "both pushes in the playlist: {got:.2} s");
}

#[test]
fn a_graceful_shutdown_inside_the_window_finalizes_at_once() {
    require_tool("ffprobe");
    // A long window: the shutdown, not the window, must end the files.
    let mut d = Daemon::start(&template(&["flv", "hls"]).replace(
        &format!("continue_timeout = {WINDOW_S}"),
        "continue_timeout = 600",
    ));
    push(&d, "bye", "avc_aac_2s.flv");
    let started = std::time::Instant::now();
    assert_eq!(d.stop(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the shutdown waited for the window"
    );
    let flv = d.files("localhost", "live", "bye", "flv");
    assert_eq!(flv.len(), 1, "log:\n{}", d.log());
    common::assert_monotonic(&flv[0]);
    let playlists = d.files("localhost", "live", "bye", "m3u8");
    assert_eq!(playlists.len(), 1);
    let text = std::fs::read_to_string(&playlists[0]).expect("playlist");
    assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
}

#[test]
fn a_task_window_continues_its_file_across_a_reconnect() {
    require_tool("ffprobe");
    let d = Daemon::start(
        "[record]\ndefault_template = -1\n[[template]]\nid = 2\nname = \"task\"\nflv = { enable = true, record_interval = 600, continue_timeout = 600, file_name = \"task-{TaskId}\" }\n",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let body = serde_json::json!({
        "domain": "localhost", "app": "live", "stream": "tasked",
        "start_time": now, "end_time": now + 300, "template_id": 2
    });
    let (status, text) = d.api_post("/v1/tasks", &body.to_string());
    assert_eq!(status, 201, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let id = v["task_id"].as_str().expect("task id").to_string();
    push(&d, "tasked", "avc_aac_2s.flv");
    std::thread::sleep(Duration::from_millis(1500));
    push(&d, "tasked", "avc_aac_2s.flv");
    // The task ends while the recording waits (a long window) for a third push: its file
    // ends then, at the task's stop, holding both pushes.
    std::thread::sleep(Duration::from_millis(500));
    let (status, text) = d.api_post(&format!("/v1/tasks/{id}/stop"), "");
    assert_eq!(status, 200, "{text}");
    let f = files(&d, "tasked", "flv", 1).remove(0);
    assert!(
        f.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("task-{id}"))),
        "{f:?}"
    );
    common::assert_monotonic(&f);
    common::assert_follows_packets(
        std::slice::from_ref(&f),
        &both_pushes("avc_aac_2s.flv"),
        true,
        45.0,
    );
}

/// A real encoder's reconnect: `ffmpeg` pushes, stops, and pushes again inside the
/// window. The playlist decodes with `ffmpeg -i x.m3u8 -f null -` without an error, has
/// one `#EXT-X-DISCONTINUITY`, and holds both pushes' frames, as do one FLV and one MP4.
#[test]
fn ffmpeg_reconnecting_inside_the_window_gives_one_file_per_format() {
    let ffmpeg = require_tool("ffmpeg");
    require_tool("ffprobe");
    let d = Daemon::start(&template(&["flv", "mp4", "hls"]));
    let fixture = testkit::fixture("avc_aac_2s.flv");
    for _ in 0..2 {
        let out = std::process::Command::new(&ffmpeg)
            .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-i"])
            .arg(&fixture)
            .args(["-c", "copy", "-f", "flv"])
            .arg(d.url("live", "obs"))
            .output()
            .expect("run ffmpeg");
        assert!(
            out.status.success(),
            "ffmpeg push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(1500));
    }
    let one_push = probe_packets(&fixture);
    let count = |k: TrackKind, p: &[testkit::ProbePacket]| p.iter().filter(|x| x.kind == k).count();
    for ext in ["flv", "mp4"] {
        let f = files(&d, "obs", ext, 1).remove(0);
        common::assert_monotonic(&f);
        let got = probe_packets(&f);
        for k in [TrackKind::Video, TrackKind::Audio] {
            assert_eq!(count(k, &got), 2 * count(k, &one_push), "{ext} {k:?}");
        }
        let secs = media_duration(&got);
        let want = 2.0 * media_duration(&one_push);
        assert!(
            (secs - want).abs() < 0.3,
            "{ext}: {secs:.2} s of media, {want:.2} s pushed"
        );
    }
    let playlist = files(&d, "obs", "m3u8", 1).remove(0);
    assert_eq!(common::discontinuities(&playlist), 1);
    let decode = std::process::Command::new(&ffmpeg)
        .args(["-hide_banner", "-nostdin", "-v", "error", "-i"])
        .arg(&playlist)
        .args(["-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(decode.status.success());
    assert_eq!(
        String::from_utf8_lossy(&decode.stderr).trim(),
        "",
        "ffmpeg -i playlist -f null - reports errors"
    );
    let got = probe_packets(&playlist);
    assert_eq!(
        count(TrackKind::Video, &got),
        2 * count(TrackKind::Video, &one_push),
        "every video frame of both pushes in the playlist"
    );
}

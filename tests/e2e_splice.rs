//! Issue 12, R-SP-1…3: splicing interrupted pushes. With `continue_timeout` a recording
//! outlives its push; the same stream publishing again inside the window continues it —
//! HLS after `#EXT-X-DISCONTINUITY`, FLV/MP4/AAC on one continuous timeline when the codec
//! configuration is unchanged (a new file when it changed) — and a push after the window
//! starts new files.

mod common;

use std::path::{Path, PathBuf};
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

fn assert_monotonic(f: &Path) {
    let errors = ffprobe_errors(f);
    assert!(errors.is_empty(), "{}: {errors}", f.display());
    let packets = probe_packets(f);
    for kind in [TrackKind::Video, TrackKind::Audio] {
        let dts: Vec<f64> = packets
            .iter()
            .filter(|p| p.kind == kind && !p.dts_ms.is_nan())
            .map(|p| p.dts_ms)
            .collect();
        for w in dts.windows(2) {
            assert!(
                w[1] > w[0],
                "{}: {kind:?} DTS {} then {}",
                f.display(),
                w[0],
                w[1]
            );
        }
    }
}

fn discontinuities(playlist: &Path) -> usize {
    std::fs::read_to_string(playlist)
        .expect("playlist")
        .lines()
        .filter(|l| l.trim() == "#EXT-X-DISCONTINUITY")
        .count()
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
        assert_monotonic(&f);
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
        discontinuities(&playlist),
        1,
        "one #EXT-X-DISCONTINUITY at the splice"
    );
    assert_monotonic(&playlist);
    common::assert_follows_packets(std::slice::from_ref(&playlist), &want, false, 45.0);
    assert!(
        d.log().contains("the recording continues"),
        "log:\n{}",
        d.log()
    );
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
        assert_monotonic(&f);
        common::assert_follows_packets(std::slice::from_ref(&f), &want, true, 45.0);
        let playlist = files(&d, stream, "m3u8", 1).remove(0);
        assert_eq!(discontinuities(&playlist), 1, "{fixture}");
        common::assert_follows_packets(std::slice::from_ref(&playlist), &want, false, 45.0);
    }
}

#[test]
fn a_push_after_the_window_gets_new_files() {
    require_tool("ffprobe");
    let d = Daemon::start(&template(&["flv", "hls"]));
    push(&d, "late", "avc_aac_2s.flv");
    files(&d, "late", "flv", 1);
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
        assert_eq!(discontinuities(p), 0);
    }
    for f in &flv {
        assert_monotonic(f);
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
            assert_monotonic(x);
            assert!(probe_codecs(x).contains(&"h264".to_string()));
        }
    }
    let playlist = files(&d, "res", "m3u8", 1).remove(0);
    assert_eq!(discontinuities(&playlist), 1);
    let errors = ffprobe_errors(&playlist);
    assert!(errors.is_empty(), "{errors}");
    let got = media_duration(&probe_packets(&playlist));
    assert!(got > 39.0, "both pushes in the playlist: {got:.2} s");
}

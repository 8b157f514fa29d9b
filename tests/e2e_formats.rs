//! End to end: FLV, fragmented MP4 (R-FM-3) and raw AAC (R-FM-4) recorded at once with
//! the same interval, so their files cover the same spans (R-SG-4); checked with ffprobe,
//! our own parsers, and against ffmpeg's own ADTS output of the same input.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{ordered, Daemon};
use testkit::{ffprobe_errors, flv_summary, probe_packets, require_tool, PublishOptions};

const CONFIG: &str = "[record]\ndefault_template = 1\n[[template]]\nid = 1\nname = \"three formats\"\nflv = { enable = true, record_interval = 4, file_name = \"{StreamID}-{Seq}\" }\nmp4 = { enable = true, record_interval = 4, file_name = \"{StreamID}-{Seq}\" }\naac = { enable = true, record_interval = 4, file_name = \"{StreamID}-{Seq}\" }\n";

/// What ffmpeg's ADTS muxer makes of the fixture's audio: the reference bytes.
fn ffmpeg_adts(fixture: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("reference.aac");
    let st = Command::new(require_tool("ffmpeg"))
        .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(fixture)
        .args(["-vn", "-c:a", "copy", "-f", "adts"])
        .arg(&out)
        .status()
        .expect("run ffmpeg");
    assert!(st.success());
    std::fs::read(&out).expect("read reference")
}

#[test]
fn flv_mp4_and_aac_recordings_hold_every_frame_in_aligned_files() {
    require_tool("ffprobe");
    let mut d = Daemon::start(CONFIG);
    let names = ["avc_aac_2s", "aac_only", "avc_only"];
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut tasks = Vec::new();
        for name in names {
            let url = d.url("live", name);
            let tags = Arc::new(testkit::fixture_tags(&format!("{name}.flv")));
            tasks.push(tokio::spawn(async move {
                testkit::publish_flv(&url, &tags, &PublishOptions::default()).await
            }));
        }
        for t in tasks {
            t.await.expect("join").expect("publish");
        }
    });

    for name in ["avc_aac_2s", "aac_only", "avc_only"] {
        let flv =
            ordered(d.wait_files("localhost", "live", name, "flv", 1, Duration::from_secs(20)));
        let mp4 =
            ordered(d.wait_files("localhost", "live", name, "mp4", 1, Duration::from_secs(20)));
        assert_eq!(
            mp4.len(),
            flv.len(),
            "{name}: MP4 and FLV cut at the same points (R-SG-4)"
        );
        let input = flv_summary(&testkit::fixture(&format!("{name}.flv")));
        let (mut v, mut a) = (0, 0);
        for (m, f) in mp4.iter().zip(&flv) {
            let errors = ffprobe_errors(m);
            assert!(errors.is_empty(), "{}: {errors}", m.display());
            let packets = probe_packets(m);
            let pv: Vec<_> = packets
                .iter()
                .filter(|p| p.kind == media::TrackKind::Video)
                .collect();
            let pa = packets
                .iter()
                .filter(|p| p.kind == media::TrackKind::Audio)
                .count();
            let fs = flv_summary(f);
            // Same frames as the FLV file of the same span, starting on a keyframe.
            assert_eq!(
                (pv.len(), pa),
                (fs.video_frames, fs.audio_frames),
                "{} vs {}",
                m.display(),
                f.display()
            );
            if let Some(first) = pv.first() {
                assert!(
                    first.key,
                    "{}: first video packet is not a keyframe",
                    m.display()
                );
            }
            v += pv.len();
            a += pa;
        }
        assert_eq!(
            (v, a),
            (input.video_frames, input.audio_frames),
            "{name}: MP4 frames over all files"
        );
        // Faithfulness (R-FM-5), with ffprobe on both sides: the MP4 files together hold
        // the input's packets byte for byte, in order, each file with the input's relative
        // timing (one constant shift per file; MP4 audio timing comes from sample counts,
        // so allow the input's 1 ms rounding).
        common::assert_follows_input(&mp4, &testkit::fixture(&format!("{name}.flv")), true, 1.5);
    }

    for name in ["avc_aac_2s", "aac_only"] {
        let fixture = testkit::fixture(&format!("{name}.flv"));
        let flv =
            ordered(d.wait_files("localhost", "live", name, "flv", 1, Duration::from_secs(20)));
        let aac =
            ordered(d.wait_files("localhost", "live", name, "aac", 1, Duration::from_secs(20)));
        assert!(
            flv.len() > 1,
            "{name}: the push should span several intervals"
        );
        assert_eq!(
            aac.len(),
            flv.len(),
            "{name}: AAC and FLV cut at the same points (R-SG-4)"
        );
        let mut all = Vec::new();
        for (a, f) in aac.iter().zip(&flv) {
            let errors = ffprobe_errors(a);
            assert!(errors.is_empty(), "{}: {errors}", a.display());
            let bytes = std::fs::read(a).expect("read aac");
            let frames = aac::split_frames(&bytes);
            let framed: usize = frames.iter().map(|(h, _)| h.frame_length).sum();
            assert_eq!(
                framed,
                bytes.len(),
                "{}: nothing but whole ADTS frames",
                a.display()
            );
            // The AAC file holds exactly the audio of the FLV file of the same span.
            assert_eq!(
                frames.len(),
                flv_summary(f).audio_frames,
                "{} vs {}",
                a.display(),
                f.display()
            );
            assert_eq!(
                probe_packets(a).len(),
                frames.len(),
                "{}: ffprobe frame count",
                a.display()
            );
            all.extend_from_slice(&bytes);
        }
        // Together the files are exactly ffmpeg's ADTS of the whole input: every frame
        // once, in order, with identical headers (R-FM-5).
        let dir = tempfile::tempdir().expect("tempdir");
        let reference = ffmpeg_adts(&fixture, dir.path());
        assert_eq!(all.len(), reference.len(), "{name}: total ADTS bytes");
        assert!(all == reference, "{name}: ADTS bytes differ from ffmpeg's");
    }

    // A stream without audio gets no .aac file, and a warning that says why.
    let flv = d.wait_files(
        "localhost",
        "live",
        "avc_only",
        "flv",
        1,
        Duration::from_secs(20),
    );
    assert!(!flv.is_empty());
    assert!(d.files("localhost", "live", "avc_only", "aac").is_empty());
    assert!(
        d.log()
            .contains("not recording raw AAC: the stream has no audio configuration"),
        "log:\n{}",
        d.log()
    );
    assert_eq!(d.stop(), Some(0));
}

/// Crash safety by construction (DESIGN.md): `kill -9` in the middle of a push leaves, in
/// the spool, an FLV readable to its last tag and an MP4 readable to its last fragment,
/// and an HLS playlist that lists only complete segments — nothing finalized, nothing
/// corrupt.
#[test]
fn kill_9_mid_push_leaves_playable_spool_files() {
    require_tool("ffprobe");
    // Long intervals: the files are still open when the daemon dies.
    let mut d = Daemon::start(
        "[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = { enable = true, record_interval = 600 }\nmp4 = { enable = true, record_interval = 600 }\nhls = { enable = true, record_interval = 600, segment_duration = 2 }\n",
    );
    let url = d.url("live", "crash");
    let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let push = rt.spawn(async move {
        let opts = PublishOptions {
            realtime: true,
            ..PublishOptions::default()
        };
        testkit::publish_flv(&url, &tags, &opts).await
    });
    // Wait until both spool files hold at least one flushed batch, then crash.
    let dir = d.spool().join("localhost/live/crash");
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    loop {
        let sizes: Vec<u64> = common::list(&dir, "part")
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok().map(|m| m.len()))
            .collect();
        // FLV and MP4 (the open TS segment is a third, small, file).
        let big = sizes.iter().filter(|&&s| s > 100_000).count();
        if big >= 2 && !d.files("localhost", "live", "crash", "m3u8").is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spool files did not grow: {sizes:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    d.kill9();
    push.abort();
    let parts: Vec<_> = common::list(&dir, "part")
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains(".ts."))
        .collect();
    assert_eq!(parts.len(), 2, "{parts:?}");
    // The playlist names complete segments only, and each of them is whole.
    let playlists = d.files("localhost", "live", "crash", "m3u8");
    assert_eq!(playlists.len(), 1, "{playlists:?}");
    let text = std::fs::read_to_string(&playlists[0]).expect("read playlist");
    let (playlist, ended) = hls::MediaPlaylist::parse(&text).expect("playlist parses");
    assert!(!ended, "a crashed recording has no ENDLIST");
    assert!(!playlist.segments().is_empty(), "{text}");
    for s in playlist.segments() {
        let seg = playlists[0].parent().expect("dir").join(&s.uri);
        let errors = ffprobe_errors(&seg);
        assert!(errors.is_empty(), "{}: {errors}", seg.display());
    }
    for part in parts {
        let name = part
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        // ffprobe picks the demuxer by content; give it the real extension anyway.
        let ext = if name.contains(".flv.") { "flv" } else { "mp4" };
        let copy = d.dir.path().join(format!("crashed.{ext}"));
        std::fs::copy(&part, &copy).expect("copy spool file");
        let errors = ffprobe_errors(&copy);
        assert!(errors.is_empty(), "{name}: {errors}");
        let packets = probe_packets(&copy);
        let video = packets
            .iter()
            .filter(|p| p.kind == media::TrackKind::Video)
            .count();
        assert!(video >= 30, "{name}: only {video} video frames survived");
        assert!(
            packets
                .iter()
                .find(|p| p.kind == media::TrackKind::Video)
                .is_some_and(|p| p.key),
            "{name}: first video frame is not a keyframe"
        );
    }

    // Restart on the same spool: recovery finalizes and stores all of it (R-ST-4).
    d.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !common::walk(&d.spool()).iter().all(|p| {
        !p.to_string_lossy().ends_with(".part") && !p.to_string_lossy().ends_with(".m3u8.json")
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "spool not recovered; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        d.log().contains("recovered unfinished files"),
        "{}",
        d.log()
    );
    let flv = d.files("localhost", "live", "crash", "flv");
    assert_eq!(flv.len(), 1, "{flv:?}");
    let summary = flv_summary(&flv[0]);
    assert!(
        summary.duration.unwrap_or(0.0) > 1.0,
        "FLV duration patched on recovery"
    );
    assert_eq!(
        summary.filesize,
        Some(summary.file_size as f64),
        "FLV filesize patched"
    );
    let mp4 = d.files("localhost", "live", "crash", "mp4");
    assert_eq!(mp4.len(), 1, "{mp4:?}");
    // The recovered MP4 states its duration in mehd like a normally closed one; it was
    // cut back to its last whole fragment (≤ 2 s), the FLV to its last whole tag.
    let bytes = std::fs::read(&mp4[0]).expect("read mp4");
    let mut buf = &bytes[..];
    use mp4_atom::Decode;
    mp4_atom::Ftyp::decode(&mut buf).expect("ftyp");
    let moov = mp4_atom::Moov::decode(&mut buf).expect("moov");
    let mehd_ms = moov
        .mvex
        .as_ref()
        .and_then(|m| m.mehd.as_ref())
        .map_or(0, |m| m.fragment_duration) as f64;
    let flv_ms = summary.duration.unwrap_or(0.0) * 1000.0;
    assert!(
        mehd_ms > 1000.0 && (mehd_ms - flv_ms).abs() < 3000.0,
        "mehd {mehd_ms} ms vs FLV {flv_ms} ms"
    );
    for f in flv.iter().chain(mp4.iter()) {
        let errors = ffprobe_errors(f);
        assert!(errors.is_empty(), "{}: {errors}", f.display());
    }
    let text = std::fs::read_to_string(&playlists[0]).expect("read playlist");
    let (recovered, ended) = hls::MediaPlaylist::parse(&text).expect("playlist parses");
    assert!(ended, "recovery ends the playlist: {text}");
    assert!(recovered.segments().len() >= playlist.segments().len());
    for s in recovered.segments() {
        let seg = playlists[0].parent().expect("dir").join(&s.uri);
        let errors = ffprobe_errors(&seg);
        assert!(errors.is_empty(), "{}: {errors}", seg.display());
    }
}

/// HLS (R-FM-2): a playlist per recording interval, TS segments cut on keyframes, every
/// playlist finalized with ENDLIST, decodable by ffmpeg, holding exactly the frames of
/// the FLV file of the same span (R-SG-4).
#[test]
fn hls_playlists_and_segments_match_the_flv_files() {
    require_tool("ffprobe");
    let ffmpeg = require_tool("ffmpeg");
    let mut d = Daemon::start(
        "[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = { enable = true, record_interval = 6, file_name = \"{StreamID}-{Seq}\" }\nhls = { enable = true, record_interval = 6, segment_duration = 2, file_name = \"{StreamID}-{Seq}\" }\n",
    );
    let names = ["avc_aac_2s", "aac_only", "avc_only"];
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut tasks = Vec::new();
        for name in names {
            let url = d.url("live", &format!("h_{name}"));
            let tags = Arc::new(testkit::fixture_tags(&format!("{name}.flv")));
            tasks.push(tokio::spawn(async move {
                testkit::publish_flv(&url, &tags, &PublishOptions::default()).await
            }));
        }
        for t in tasks {
            t.await.expect("join").expect("publish");
        }
    });
    for name in names {
        let stream = format!("h_{name}");
        let flv = ordered(d.wait_files(
            "localhost",
            "live",
            &stream,
            "flv",
            1,
            Duration::from_secs(20),
        ));
        let m3u8 = ordered(d.wait_files(
            "localhost",
            "live",
            &stream,
            "m3u8",
            1,
            Duration::from_secs(20),
        ));
        assert_eq!(m3u8.len(), flv.len(), "{name}: one playlist per FLV file");
        for (pl, f) in m3u8.iter().zip(&flv) {
            let text = std::fs::read_to_string(pl).expect("read playlist");
            let (playlist, ended) =
                hls::MediaPlaylist::parse(&text).expect("m3u8-rs parses our playlist");
            assert!(ended, "{}: no ENDLIST:\n{text}", pl.display());
            assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:"), "{text}");
            assert!(!playlist.segments().is_empty());
            let longest = playlist
                .segments()
                .iter()
                .map(|s| s.duration)
                .fold(0.0, f64::max);
            assert!(
                text.contains(&format!(
                    "#EXT-X-TARGETDURATION:{}\n",
                    longest.ceil() as u64
                )),
                "{text}"
            );
            for s in playlist.segments() {
                let seg = pl.parent().expect("dir").join(&s.uri);
                let errors = ffprobe_errors(&seg);
                assert!(errors.is_empty(), "{}: {errors}", seg.display());
            }
            let out = Command::new(&ffmpeg)
                .args(["-hide_banner", "-v", "error", "-i"])
                .arg(pl)
                .args(["-f", "null", "-"])
                .output()
                .expect("run ffmpeg");
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "{}: {}",
                pl.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            // The playlist holds exactly the frames of the FLV file of the same span.
            let packets = probe_packets(pl);
            let v = packets
                .iter()
                .filter(|p| p.kind == media::TrackKind::Video)
                .count();
            let a = packets
                .iter()
                .filter(|p| p.kind == media::TrackKind::Audio)
                .count();
            let fs = flv_summary(f);
            assert_eq!(
                (v, a),
                (fs.video_frames, fs.audio_frames),
                "{} vs {}",
                pl.display(),
                f.display()
            );
            // Segment durations add up to the file's media span (within one frame).
            let meta = fs.duration.unwrap_or(0.0);
            assert!(
                (playlist.total_duration() - meta).abs() <= 0.05,
                "{}: {} vs {meta}",
                pl.display(),
                playlist.total_duration()
            );
        }
        // Timing (R-FM-5): each packet keeps the input's presentation time, shifted by
        // one constant per playlist. (TS payloads are rewritten — Annex B with AUD and
        // parameter sets, ADTS — so bytes are compared by the muxer's own tests.)
        common::assert_follows_input(&m3u8, &testkit::fixture(&format!("{name}.flv")), false, 1.0);
    }
    assert!(d.spool().join("localhost/live").exists());
    assert_eq!(d.stop(), Some(0));
}

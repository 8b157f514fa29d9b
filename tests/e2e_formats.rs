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

//! End to end: raw AAC recording (R-FM-4) next to FLV with the same interval (R-SG-4),
//! checked against ffmpeg's own ADTS output of the same input and with ffprobe.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{ordered, Daemon};
use testkit::{ffprobe_errors, flv_summary, probe_packets, require_tool, PublishOptions};

const CONFIG: &str = "[record]\ndefault_template = 1\n[[template]]\nid = 1\nname = \"flv+aac\"\nflv = { enable = true, record_interval = 4, file_name = \"{StreamID}-{Seq}\" }\naac = { enable = true, record_interval = 4, file_name = \"{StreamID}-{Seq}\" }\n";

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
fn aac_recording_holds_every_audio_frame_in_files_aligned_with_flv() {
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
        d.log().contains("not recording this format"),
        "log:\n{}",
        d.log()
    );
    assert_eq!(d.stop(), Some(0));
}

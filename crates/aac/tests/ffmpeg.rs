//! Our ADTS framing of a fixture's AAC frames is byte-identical to what ffmpeg's own
//! ADTS muxer makes of the same file.

use std::process::Command;

use liverec_aac::AdtsParams;

#[test]
fn adts_of_fixture_matches_ffmpeg_byte_for_byte() {
    let ffmpeg = testkit::require_tool("ffmpeg");
    for name in ["avc_aac_2s.flv", "aac_only.flv"] {
        let fixture = testkit::fixture(name);
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join(format!("{name}.aac"));
        let st = Command::new(&ffmpeg)
            .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
            .arg(&fixture)
            .args(["-vn", "-c:a", "copy", "-f", "adts"])
            .arg(&out)
            .status()
            .expect("run ffmpeg");
        assert!(st.success(), "ffmpeg failed on {name}");
        let theirs = std::fs::read(&out).expect("read ffmpeg output");

        let mut params = None;
        let mut ours = Vec::new();
        for tag in testkit::fixture_tags(name) {
            if tag.tag_type != flv::TagType::Audio {
                continue;
            }
            match flv::parse_audio(tag.body.clone(), media::Millis::ZERO)
                .expect("fixture audio parses")
            {
                flv::Parsed::Event(media::MediaEvent::Config(c)) => {
                    params = Some(AdtsParams::from_asc(&c.record).expect("ASC"));
                }
                flv::Parsed::Event(media::MediaEvent::Packet(p)) => {
                    let p2 = params.expect("config before frames");
                    for b in p2.frame(&p.data).expect("frame") {
                        ours.extend_from_slice(&b);
                    }
                }
                _ => {}
            }
        }
        assert!(!ours.is_empty());
        assert_eq!(ours.len(), theirs.len(), "{name}: length");
        assert!(ours == theirs, "{name}: bytes differ");
    }
}

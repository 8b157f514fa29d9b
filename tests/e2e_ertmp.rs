//! End to end (issue 3): HEVC and AV1 pushed over Enhanced RTMP by our test publisher
//! (Debian's ffmpeg 5.1 cannot send E-RTMP) and recorded as FLV, fragmented MP4, HLS and
//! raw AAC at once. The fixtures are E-RTMP FLV made from committed MP4s
//! (`fixtures/make.sh`, `testkit::eflv`); ffprobe reads those MP4s, so every output is
//! compared with ffprobe on both sides: the input's packets, byte for byte where the
//! container keeps them (MP4), at the input's presentation times (MP4 and HLS).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{ordered, Daemon};
use flv::{FileTag, TagType};
use media::TrackKind;
use testkit::{
    ffprobe_errors, flv_summary, probe_codecs, probe_packet_hashes, require_tool, HashedPacket,
    PublishOptions,
};

const CONFIG: &str = "[record]\ndefault_template = 1\n[[template]]\nid = 1\nname = \"all formats\"\nflv = { enable = true, record_interval = 2, file_name = \"{StreamID}-{Seq}\" }\nmp4 = { enable = true, record_interval = 2, file_name = \"{StreamID}-{Seq}\" }\nhls = { enable = true, record_interval = 2, segment_duration = 1, file_name = \"{StreamID}-{Seq}\" }\naac = { enable = true, record_interval = 2, file_name = \"{StreamID}-{Seq}\" }\n";

const WAIT: Duration = Duration::from_secs(20);

fn count(packets: &[HashedPacket], kind: TrackKind) -> usize {
    packets.iter().filter(|p| p.kind == kind).count()
}

/// `ffmpeg -v error -i PATH -f null -` prints nothing and succeeds.
fn assert_decodes(ffmpeg: &Path, path: &Path) {
    let out = Command::new(ffmpeg)
        .args(["-hide_banner", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Audio frames of an FLV fixture ahead of its first video frame. A recording starts on
/// a keyframe, so these are not recorded: in the AV1 fixture the AAC priming frame (MP4
/// edit list: -21.3 ms) comes 21 ms before the first video frame. No more than one
/// video frame interval's worth is allowed, so a real loss still fails.
fn leading_audio(input: &Path) -> usize {
    let s = flv_summary(input);
    let frames: Vec<_> = s.tags.iter().filter(|t| t.is_frame()).collect();
    let first_video = frames
        .iter()
        .position(|t| t.track() == Some(TrackKind::Video))
        .expect("fixture has video");
    if let Some(first) = frames.first() {
        let gap = frames[first_video].timestamp - first.timestamp;
        assert!(
            gap < 40,
            "{}: audio leads video by {gap} ms",
            input.display()
        );
    }
    first_video
}

/// `packets` without the first `n` audio packets.
fn skip_audio(packets: &[HashedPacket], n: usize) -> Vec<HashedPacket> {
    let mut left = n;
    packets
        .iter()
        .filter(|p| {
            if p.kind == TrackKind::Audio && left > 0 {
                left -= 1;
                return false;
            }
            true
        })
        .cloned()
        .collect()
}

/// The FLV files: readable by our reader, onMetaData first with the codec's FourCC,
/// sequence headers and a keyframe first, and together exactly the input's frame tags
/// (from its first video frame on, see [`leading_audio`]).
fn check_flv(name: &str, flv: &[PathBuf], input: &Path, fourcc: &[u8; 4]) {
    let want = flv_summary(input);
    let want_frames = want.frame_hashes()[leading_audio(input)..].to_vec();
    let mut got = Vec::new();
    for f in flv {
        let s = flv_summary(f);
        assert!(
            s.read_error.is_none(),
            "{}: {:?}",
            f.display(),
            s.read_error
        );
        assert!(s.first_tag_is_metadata, "{}", f.display());
        assert!(s.headers_first, "{}: sequence headers first", f.display());
        assert_eq!(s.first_video_is_key, Some(true), "{}", f.display());
        let codec = s
            .metadata
            .as_ref()
            .and_then(|m| m.get("videocodecid"))
            .and_then(amf0::Value::as_number);
        assert_eq!(
            codec,
            Some(f64::from(u32::from_be_bytes(*fourcc))),
            "{}: videocodecid",
            f.display()
        );
        // Video tags are the E-RTMP bodies as sent.
        assert!(
            s.tags
                .iter()
                .filter(|t| t.tag_type == TagType::Video && t.is_frame())
                .all(|t| t.size > 5),
            "{}",
            f.display()
        );
        got.extend(s.frame_hashes());
    }
    assert_eq!(
        got.len(),
        want_frames.len(),
        "{name}: FLV frames over all files"
    );
    assert!(
        got == want_frames,
        "{name}: FLV frame tags differ from the input's"
    );
}

/// The MP4 files: clean for ffprobe, the expected codecs, the FLV file of the same span's
/// frame counts, and together the input MP4's packets byte for byte.
fn check_mp4(name: &str, mp4: &[PathBuf], flv: &[PathBuf], want: &[HashedPacket], codec: &str) {
    assert_eq!(mp4.len(), flv.len(), "{name}: MP4 and FLV cut together");
    for (m, f) in mp4.iter().zip(flv) {
        let errors = ffprobe_errors(m);
        assert!(errors.is_empty(), "{}: {errors}", m.display());
        assert_eq!(probe_codecs(m), [codec, "aac"], "{}", m.display());
        let p = probe_packet_hashes(m);
        let fs = flv_summary(f);
        assert_eq!(
            (count(&p, TrackKind::Video), count(&p, TrackKind::Audio)),
            (fs.video_frames, fs.audio_frames),
            "{} vs {}",
            m.display(),
            f.display()
        );
        assert!(
            p.iter()
                .find(|p| p.kind == TrackKind::Video)
                .is_some_and(|p| p.key),
            "{}: first video packet is not a keyframe",
            m.display()
        );
    }
    // MP4 audio timing comes from sample counts and the fixture's from 1 ms FLV
    // timestamps: allow that rounding.
    common::assert_follows_packets(mp4, want, true, 1.5);
}

/// The raw AAC files: whole ADTS frames, as many as the FLV file of the same span.
fn check_aac(name: &str, aac: &[PathBuf], flv: &[PathBuf], want_frames: usize) {
    assert_eq!(aac.len(), flv.len(), "{name}: AAC and FLV cut together");
    let mut total = 0;
    for (a, f) in aac.iter().zip(flv) {
        let errors = ffprobe_errors(a);
        assert!(errors.is_empty(), "{}: {errors}", a.display());
        let bytes = std::fs::read(a).expect("read aac");
        let frames = aac::split_frames(&bytes);
        let framed: usize = frames.iter().map(|(h, _)| h.frame_length).sum();
        assert_eq!(framed, bytes.len(), "{}: whole ADTS frames", a.display());
        assert_eq!(frames.len(), flv_summary(f).audio_frames, "{}", a.display());
        total += frames.len();
    }
    assert_eq!(total, want_frames, "{name}: ADTS frames over all files");
}

/// Each playlist: ENDLIST, clean segments with `codecs`, decodable by ffmpeg, holding the
/// frames of the FLV file of the same span.
fn check_hls(ffmpeg: &Path, m3u8: &[PathBuf], flv: &[PathBuf], codecs: &[&str]) {
    assert_eq!(m3u8.len(), flv.len(), "one playlist per FLV file");
    for (pl, f) in m3u8.iter().zip(flv) {
        let text = std::fs::read_to_string(pl).expect("read playlist");
        let (playlist, ended) = hls::MediaPlaylist::parse(&text).expect("playlist parses");
        assert!(ended, "{}: no ENDLIST:\n{text}", pl.display());
        assert!(!playlist.segments().is_empty(), "{text}");
        for s in playlist.segments() {
            let seg = pl.parent().expect("dir").join(&s.uri);
            let errors = ffprobe_errors(&seg);
            assert!(errors.is_empty(), "{}: {errors}", seg.display());
            assert_eq!(probe_codecs(&seg), codecs, "{}", seg.display());
        }
        assert_decodes(ffmpeg, pl);
        let p = probe_packet_hashes(pl);
        let fs = flv_summary(f);
        let want_v = if codecs.contains(&"hevc") {
            fs.video_frames
        } else {
            0
        };
        assert_eq!(
            (count(&p, TrackKind::Video), count(&p, TrackKind::Audio)),
            (want_v, fs.audio_frames),
            "{} vs {}",
            pl.display(),
            f.display()
        );
    }
}

#[test]
fn hevc_and_av1_over_enhanced_rtmp_are_recorded_in_every_format() {
    require_tool("ffprobe");
    let ffmpeg = require_tool("ffmpeg");
    let mut d = Daemon::start(CONFIG);

    let hevc_tags = testkit::fixture_tags("hevc_aac.flv");
    let av1_tags = testkit::fixture_tags("av1_aac.flv");
    // AV1 without audio: nothing MPEG-TS can carry.
    let av1_video: Vec<FileTag> = av1_tags
        .iter()
        .filter(|t| t.tag_type != TagType::Audio)
        .cloned()
        .collect();
    let pushes = [
        ("hevc", hevc_tags),
        ("av1", av1_tags),
        ("av1_video", av1_video),
    ];
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (stream, tags) in &pushes {
            let url = d.url("live", stream);
            let tags = Arc::new(tags.clone());
            tasks.push(tokio::spawn(async move {
                testkit::publish_flv(&url, &tags, &PublishOptions::default()).await
            }));
        }
        for t in tasks {
            t.await.expect("join").expect("publish");
        }
    });

    let files =
        |stream: &str, ext: &str| ordered(d.wait_files("localhost", "live", stream, ext, 1, WAIT));

    // HEVC: every format, HLS included.
    {
        let input = testkit::fixture("hevc_aac.flv");
        let want = skip_audio(
            &probe_packet_hashes(&testkit::fixture("hevc_aac.mp4")),
            leading_audio(&input),
        );
        let flv = files("hevc", "flv");
        assert!(flv.len() > 1, "hevc: a 4 s push spans several 2 s files");
        check_flv("hevc", &flv, &input, b"hvc1");
        check_mp4("hevc", &files("hevc", "mp4"), &flv, &want, "hevc");
        check_aac(
            "hevc",
            &files("hevc", "aac"),
            &flv,
            count(&want, TrackKind::Audio),
        );
        let m3u8 = files("hevc", "m3u8");
        check_hls(&ffmpeg, &m3u8, &flv, &["hevc", "aac"]);
        // TS payloads are rewritten (Annex B, ADTS): timing only.
        common::assert_follows_packets(&m3u8, &want, false, 1.5);
    }

    // AV1 + AAC: FLV, MP4 and AAC hold everything from the first keyframe on (the AAC
    // priming frame 21 ms ahead of it is not recorded); MPEG-TS has no AV1 mapping players
    // read, so the HLS recording leaves the video out, says so, and carries the audio.
    {
        let input = testkit::fixture("av1_aac.flv");
        let want = skip_audio(
            &probe_packet_hashes(&testkit::fixture("av1_aac.mp4")),
            leading_audio(&input),
        );
        let flv = files("av1", "flv");
        assert!(flv.len() > 1, "av1: a 4 s push spans several 2 s files");
        check_flv("av1", &flv, &input, b"av01");
        check_mp4("av1", &files("av1", "mp4"), &flv, &want, "av1");
        check_aac(
            "av1",
            &files("av1", "aac"),
            &flv,
            count(&want, TrackKind::Audio),
        );
        let m3u8 = files("av1", "m3u8");
        check_hls(&ffmpeg, &m3u8, &flv, &["aac"]);
        let audio: Vec<HashedPacket> = want
            .iter()
            .filter(|p| p.kind == TrackKind::Audio)
            .cloned()
            .collect();
        common::assert_follows_packets(&m3u8, &audio, false, 1.5);
        let log = d.log();
        assert!(
            log.lines().any(|l| l.contains("localhost/live/av1 ")
                && l.contains("left out of the HLS segments: av1 video")),
            "no warning that AV1 video is left out of HLS; log:\n{log}"
        );
        // The playlists' "file finished" lines count what they hold: audio only.
        let finished: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("file finished") && l.contains("live/av1/") && l.contains(".m3u8")
            })
            .collect();
        assert_eq!(finished.len(), m3u8.len(), "{log}");
        for l in finished {
            assert!(
                l.contains("video_frames=0") && !l.contains("audio_frames=0"),
                "{l}"
            );
        }
    }

    // AV1 alone: no HLS at all (no playlist, no segment), with a warning; FLV and MP4 as
    // usual, no AAC file.
    {
        let flv = files("av1_video", "flv");
        let mp4 = files("av1_video", "mp4");
        assert_eq!(mp4.len(), flv.len());
        let want: Vec<HashedPacket> = probe_packet_hashes(&testkit::fixture("av1_aac.mp4"))
            .into_iter()
            .filter(|p| p.kind == TrackKind::Video)
            .collect();
        for m in &mp4 {
            let errors = ffprobe_errors(m);
            assert!(errors.is_empty(), "{}: {errors}", m.display());
            assert_eq!(probe_codecs(m), ["av1"], "{}", m.display());
        }
        common::assert_follows_packets(&mp4, &want, true, 1.5);
        let dir = d.root().join("localhost/live/av1_video");
        let hls: Vec<_> = common::walk(&dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "m3u8" || e == "ts"))
            .collect();
        assert!(hls.is_empty(), "AV1-only stream got HLS files: {hls:?}");
        assert!(d.files("localhost", "live", "av1_video", "aac").is_empty());
        let log = d.log();
        assert!(
            log.lines().any(|l| l.contains("av1_video")
                && l.contains("not recording HLS: no track MPEG-TS can carry")),
            "no warning that HLS is not recorded; log:\n{log}"
        );
    }

    assert_eq!(d.stop(), Some(0));
}

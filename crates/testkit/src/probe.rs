//! Checkers of produced files: ffprobe wrappers and an FLV summary built on our own
//! `flv::FlvReader`. Tools are required, never optional: a missing ffprobe fails the
//! test loudly instead of skipping it.

use std::path::{Path, PathBuf};
use std::process::Command;

use amf0::Value;
use bytes::Bytes;
use flv::{FileTag, FlvReader, TagType};
use media::TrackKind;
use sha2::{Digest, Sha256};

/// Finds `name` on PATH (or /usr/bin, /usr/local/bin); panics loudly when it is missing.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs =
        std::env::split_paths(&path).chain(["/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    let package = match name {
        "chromium" => "chromium",
        "chromedriver" => "chromium-driver",
        "ffmpeg" | "ffprobe" => "ffmpeg",
        other => other,
    };
    panic!(
        "\n\n*** {name} not found: install it (apt-get install -y {package}; scripts/test.sh installs every tool the tests use); tests must not skip ***\n\n"
    );
}

fn run(tool: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
    let exe = require_tool(tool);
    Command::new(&exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
}

/// Error text from `ffprobe -v error -i PATH` plus a full packet read
/// (`ffprobe -v error -show_packets -of compact PATH`); empty means clean.
pub fn ffprobe_errors(path: &Path) -> String {
    let p = path.as_os_str();
    let a = run(
        "ffprobe",
        &["-v".as_ref(), "error".as_ref(), "-i".as_ref(), p],
    );
    let b = run(
        "ffprobe",
        &[
            "-v".as_ref(),
            "error".as_ref(),
            "-show_packets".as_ref(),
            "-of".as_ref(),
            "compact".as_ref(),
            p,
        ],
    );
    let mut out = String::from_utf8_lossy(&a.stderr).into_owned();
    out.push_str(&String::from_utf8_lossy(&b.stderr));
    if !a.status.success() && out.is_empty() {
        out = format!("ffprobe exited with {}", a.status);
    }
    out.trim().to_string()
}

/// One packet as ffprobe reports it; times in milliseconds (NaN when ffprobe gives none).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbePacket {
    pub kind: TrackKind,
    pub stream_index: usize,
    pub pts_ms: f64,
    pub dts_ms: f64,
    pub duration_ms: f64,
    pub size: usize,
    pub key: bool,
}

fn probe_json(path: &Path, entries: &str) -> serde_json::Value {
    let out = run(
        "ffprobe",
        &[
            "-v".as_ref(),
            "error".as_ref(),
            "-show_entries".as_ref(),
            entries.as_ref(),
            "-of".as_ref(),
            "json".as_ref(),
            path.as_os_str(),
        ],
    );
    assert!(
        out.status.success(),
        "ffprobe failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ffprobe JSON for {}: {e}", path.display()))
}

fn num(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// Every audio/video packet of `path` (other stream types are left out), in file order.
pub fn probe_packets(path: &Path) -> Vec<ProbePacket> {
    let j = probe_json(
        path,
        "packet=stream_index,codec_type,pts_time,dts_time,duration_time,size,flags:stream=index,codec_type",
    );
    let kind_of = |t: &str| match t {
        "video" => Some(TrackKind::Video),
        "audio" => Some(TrackKind::Audio),
        _ => None,
    };
    let streams: Vec<(usize, Option<TrackKind>)> = j["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["index"].as_u64().unwrap_or(0) as usize,
                        kind_of(s["codec_type"].as_str().unwrap_or("")),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let ms = |v: &serde_json::Value| num(v).map_or(f64::NAN, |s| s * 1000.0);
    j["packets"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let idx = p["stream_index"].as_u64()? as usize;
            let kind = p["codec_type"]
                .as_str()
                .and_then(kind_of)
                .or_else(|| streams.iter().find(|s| s.0 == idx).and_then(|s| s.1))?;
            Some(ProbePacket {
                kind,
                stream_index: idx,
                pts_ms: ms(&p["pts_time"]),
                dts_ms: ms(&p["dts_time"]),
                duration_ms: ms(&p["duration_time"]),
                size: num(&p["size"]).unwrap_or(0.0) as usize,
                key: p["flags"].as_str().is_some_and(|f| f.starts_with('K')),
            })
        })
        .collect()
}

/// One packet as ffprobe demuxes it, with the SHA-256 of its data (lowercase hex).
#[derive(Debug, Clone, PartialEq)]
pub struct HashedPacket {
    pub kind: TrackKind,
    /// Times in milliseconds (NaN when ffprobe gives none).
    pub pts_ms: f64,
    pub dts_ms: f64,
    pub key: bool,
    pub sha256: String,
}

/// Every audio/video packet of `path` with its data hash
/// (`ffprobe -show_data_hash SHA256`), in file order. Read as JSON: in CSV, ffprobe 5.1
/// prints a packet's side data (e.g. the "Skip Samples" of AAC priming cut by an MP4
/// edit list) between its fields, which splits the packet over two lines.
pub fn probe_packet_hashes(path: &Path) -> Vec<HashedPacket> {
    let out = run(
        "ffprobe",
        &[
            "-v".as_ref(),
            "error".as_ref(),
            "-show_entries".as_ref(),
            "packet=codec_type,pts_time,dts_time,flags,data_hash".as_ref(),
            "-show_data_hash".as_ref(),
            "SHA256".as_ref(),
            "-of".as_ref(),
            "json".as_ref(),
            path.as_os_str(),
        ],
    );
    assert!(
        out.status.success(),
        "ffprobe failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ffprobe JSON for {}: {e}", path.display()));
    let ms = |v: &serde_json::Value| num(v).map_or(f64::NAN, |s| s * 1000.0);
    j["packets"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let kind = match p["codec_type"].as_str()? {
                "video" => TrackKind::Video,
                "audio" => TrackKind::Audio,
                _ => return None,
            };
            let hash = p["data_hash"].as_str()?;
            Some(HashedPacket {
                kind,
                pts_ms: ms(&p["pts_time"]),
                dts_ms: ms(&p["dts_time"]),
                key: p["flags"].as_str().is_some_and(|f| f.starts_with('K')),
                sha256: hash.strip_prefix("SHA256:").unwrap_or(hash).to_string(),
            })
        })
        .collect()
}

/// Lowercase hex of a digest, as ffprobe prints data hashes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `codec_name` of every stream of `path`, in stream order (ffprobe).
pub fn probe_codecs(path: &Path) -> Vec<String> {
    let j = probe_json(path, "stream=codec_name");
    j["streams"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|s| s["codec_name"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The container's duration (`format=duration`) in seconds.
pub fn probe_duration(path: &Path) -> f64 {
    let j = probe_json(path, "format=duration");
    num(&j["format"]["duration"])
        .unwrap_or_else(|| panic!("ffprobe reports no duration for {}", path.display()))
}

/// Duration of the media held, in seconds: max(pts + duration) − min(pts) over the
/// packets of each video track (audio tracks when there is no video); the longest
/// track wins. 0 when there are no packets.
pub fn media_duration(packets: &[ProbePacket]) -> f64 {
    let kind = if packets.iter().any(|p| p.kind == TrackKind::Video) {
        TrackKind::Video
    } else {
        TrackKind::Audio
    };
    let mut tracks: Vec<usize> = packets
        .iter()
        .filter(|p| p.kind == kind)
        .map(|p| p.stream_index)
        .collect();
    tracks.sort_unstable();
    tracks.dedup();
    tracks
        .into_iter()
        .map(|t| {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for p in packets
                .iter()
                .filter(|p| p.stream_index == t && p.kind == kind)
            {
                if p.pts_ms.is_nan() {
                    continue;
                }
                lo = lo.min(p.pts_ms);
                let d = if p.duration_ms.is_nan() {
                    0.0
                } else {
                    p.duration_ms
                };
                hi = hi.max(p.pts_ms + d);
            }
            if hi >= lo {
                (hi - lo) / 1000.0
            } else {
                0.0
            }
        })
        .fold(0.0, f64::max)
}

/// What an FLV audio/video tag body carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    /// Codec configuration (AVC/HEVC/AV1 sequence header, AAC AudioSpecificConfig).
    SequenceHeader,
    /// A media frame.
    Frame,
    /// End of sequence (AVC packet type 2 / Enhanced RTMP SequenceEnd).
    EndOfSequence,
    /// Anything else (empty body, video info/command frame, metadata, script).
    Other,
}

/// Classifies an FLV tag: `(kind, keyframe)`. Handles legacy AVC/AAC tags and Enhanced
/// RTMP (ExHeader) video and audio.
pub fn classify_tag(tag_type: TagType, body: &[u8]) -> (TagKind, bool) {
    let Some(&b0) = body.first() else {
        return (TagKind::Other, false);
    };
    match tag_type {
        TagType::Video => {
            if b0 & 0x80 != 0 {
                // Enhanced RTMP: frame type in bits 4-6, packet type in bits 0-3.
                let frame_type = (b0 >> 4) & 7;
                let key = frame_type == 1;
                if frame_type == 5 {
                    return (TagKind::Other, false);
                }
                let kind = match b0 & 0x0f {
                    0 | 5 => TagKind::SequenceHeader,
                    1 | 3 => TagKind::Frame,
                    2 => TagKind::EndOfSequence,
                    _ => TagKind::Other,
                };
                return (kind, key && kind == TagKind::Frame);
            }
            let frame_type = b0 >> 4;
            if frame_type == 5 {
                return (TagKind::Other, false);
            }
            let key = frame_type == 1;
            let codec = b0 & 0x0f;
            if codec == 7 || codec == 12 {
                match body.get(1) {
                    Some(0) => (TagKind::SequenceHeader, false),
                    Some(1) => (TagKind::Frame, key),
                    Some(2) => (TagKind::EndOfSequence, false),
                    _ => (TagKind::Other, false),
                }
            } else {
                (TagKind::Frame, key)
            }
        }
        TagType::Audio => {
            let format = b0 >> 4;
            match format {
                10 => match body.get(1) {
                    Some(0) => (TagKind::SequenceHeader, false),
                    Some(1) => (TagKind::Frame, true),
                    _ => (TagKind::Other, false),
                },
                9 => match b0 & 0x0f {
                    // Enhanced RTMP audio: packet type in the low nibble.
                    0 => (TagKind::SequenceHeader, false),
                    1 => (TagKind::Frame, true),
                    2 => (TagKind::EndOfSequence, false),
                    _ => (TagKind::Other, false),
                },
                _ if body.len() > 1 => (TagKind::Frame, true),
                _ => (TagKind::Other, false),
            }
        }
        _ => (TagKind::Other, false),
    }
}

/// One tag of an FLV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    pub tag_type: TagType,
    pub timestamp: u32,
    pub kind: TagKind,
    pub key: bool,
    pub size: usize,
    /// SHA-256 of the tag body.
    pub sha256: [u8; 32],
}

impl TagInfo {
    pub fn is_sequence_header(&self) -> bool {
        self.kind == TagKind::SequenceHeader
    }

    /// Audio/video media frame (not a header, EOS or script tag).
    pub fn is_frame(&self) -> bool {
        self.kind == TagKind::Frame
    }

    pub fn track(&self) -> Option<TrackKind> {
        match self.tag_type {
            TagType::Video => Some(TrackKind::Video),
            TagType::Audio => Some(TrackKind::Audio),
            _ => None,
        }
    }
}

/// What an FLV file holds, read with `flv::FlvReader`.
#[derive(Debug, Clone)]
pub struct FlvSummary {
    pub file_size: u64,
    /// Header flags.
    pub has_audio_flag: bool,
    pub has_video_flag: bool,
    /// True when the first tag is a script tag named `onMetaData`.
    pub first_tag_is_metadata: bool,
    /// The `onMetaData` object/ECMA array of the first script tag named so.
    pub metadata: Option<Value>,
    /// `onMetaData.duration` (seconds) and `onMetaData.filesize` (bytes).
    pub duration: Option<f64>,
    pub filesize: Option<f64>,
    pub tags: Vec<TagInfo>,
    /// Media frames, excluding sequence headers and end-of-sequence tags.
    pub video_frames: usize,
    pub audio_frames: usize,
    pub video_keyframes: usize,
    /// Whether the first video frame is a keyframe (`None`: no video frames).
    pub first_video_is_key: Option<bool>,
    /// Whether every track's sequence header (AVC/HEVC/AV1/AAC) comes before its first
    /// frame. Tracks whose codec has no header (e.g. MP3) are not held to it.
    pub headers_first: bool,
    /// Set when the file is truncated or malformed (tags up to that point are listed).
    pub read_error: Option<String>,
}

impl FlvSummary {
    /// `(track, sha256)` of every media frame in file order.
    pub fn frame_hashes(&self) -> Vec<(TrackKind, [u8; 32])> {
        self.tags
            .iter()
            .filter(|t| t.is_frame())
            .filter_map(|t| Some((t.track()?, t.sha256)))
            .collect()
    }

    /// Timestamps of the media frames of one track.
    pub fn frame_timestamps(&self, kind: TrackKind) -> Vec<u32> {
        self.tags
            .iter()
            .filter(|t| t.is_frame() && t.track() == Some(kind))
            .map(|t| t.timestamp)
            .collect()
    }
}

fn read_file(path: &Path) -> Bytes {
    Bytes::from(
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())),
    )
}

/// Decodes a script tag body: `Some((name, value))`.
pub fn script_data(body: &[u8]) -> Option<(String, Value)> {
    let mut vals = amf0::decode_all(body).ok()?.into_iter();
    let name = match vals.next()? {
        Value::String(s) => s,
        _ => return None,
    };
    Some((name, vals.next().unwrap_or(Value::Null)))
}

/// Summarises an FLV file from bytes.
pub fn flv_summary_bytes(data: Bytes) -> FlvSummary {
    let file_size = data.len() as u64;
    let mut s = FlvSummary {
        file_size,
        has_audio_flag: false,
        has_video_flag: false,
        first_tag_is_metadata: false,
        metadata: None,
        duration: None,
        filesize: None,
        tags: Vec::new(),
        video_frames: 0,
        audio_frames: 0,
        video_keyframes: 0,
        first_video_is_key: None,
        headers_first: true,
        read_error: None,
    };
    let mut r = match FlvReader::new(data) {
        Ok(r) => r,
        Err(e) => {
            s.read_error = Some(e.to_string());
            return s;
        }
    };
    s.has_audio_flag = r.has_audio;
    s.has_video_flag = r.has_video;
    let (mut seen_vh, mut seen_ah) = (false, false);
    loop {
        let tag = match r.next_tag() {
            Ok(Some(t)) => t,
            Ok(None) => break,
            Err(e) => {
                s.read_error = Some(e.to_string());
                break;
            }
        };
        if tag.tag_type == TagType::Script {
            if let Some((name, v)) = script_data(&tag.body) {
                if name == "onMetaData" {
                    if s.tags.is_empty() {
                        s.first_tag_is_metadata = true;
                    }
                    if s.metadata.is_none() {
                        s.duration = v.get("duration").and_then(Value::as_number);
                        s.filesize = v.get("filesize").and_then(Value::as_number);
                        s.metadata = Some(v);
                    }
                }
            }
        }
        let (kind, key) = classify_tag(tag.tag_type, &tag.body);
        let needs_header = |t: TagType, b: &[u8]| match t {
            TagType::Video => b
                .first()
                .is_some_and(|&x| x & 0x80 != 0 || matches!(x & 0x0f, 7 | 12)),
            TagType::Audio => b.first().is_some_and(|&x| matches!(x >> 4, 9 | 10)),
            _ => false,
        };
        match (tag.tag_type, kind) {
            (TagType::Video, TagKind::SequenceHeader) => seen_vh = true,
            (TagType::Audio, TagKind::SequenceHeader) => seen_ah = true,
            (TagType::Video, TagKind::Frame) => {
                if s.video_frames == 0 {
                    s.first_video_is_key = Some(key);
                    if !seen_vh && needs_header(tag.tag_type, &tag.body) {
                        s.headers_first = false;
                    }
                }
                s.video_frames += 1;
                s.video_keyframes += usize::from(key);
            }
            (TagType::Audio, TagKind::Frame) => {
                if s.audio_frames == 0 && !seen_ah && needs_header(tag.tag_type, &tag.body) {
                    s.headers_first = false;
                }
                s.audio_frames += 1;
            }
            _ => {}
        }
        s.tags.push(TagInfo {
            tag_type: tag.tag_type,
            timestamp: tag.timestamp,
            kind,
            key,
            size: tag.body.len(),
            sha256: Sha256::digest(&tag.body).into(),
        });
    }
    s
}

/// Summarises an FLV file (panics when it cannot be read at all; a truncated file gives
/// a summary with `read_error` set).
pub fn flv_summary(path: &Path) -> FlvSummary {
    flv_summary_bytes(read_file(path))
}

/// `(track, sha256 of the tag body)` of every media frame (not sequence headers) of an
/// FLV file, for frame-by-frame comparison of input and output.
pub fn frame_hashes_flv(path: &Path) -> Vec<(TrackKind, [u8; 32])> {
    flv_summary(path).frame_hashes()
}

/// The committed fixtures directory (`<workspace>/fixtures`).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Path of a committed fixture, e.g. `fixture("avc_aac_2s.flv")`; panics when missing.
pub fn fixture(name: &str) -> PathBuf {
    let p = fixtures_dir().join(name);
    assert!(
        p.is_file(),
        "fixture {} missing: run fixtures/make.sh",
        p.display()
    );
    p
}

/// All tags of a committed FLV fixture.
pub fn fixture_tags(name: &str) -> Vec<FileTag> {
    flv_tags(&fixture(name))
}

/// All tags of an FLV file (panics on unreadable or truncated files).
pub fn flv_tags(path: &Path) -> Vec<FileTag> {
    FlvReader::new(read_file(path))
        .and_then(FlvReader::read_all)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Enhanced RTMP fixtures (`NAME.flv`, made from the committed `NAME.mp4` by
/// [`crate::eflv::mp4_to_eflv`]; ffprobe reads only the MP4).
pub const ERTMP_FIXTURES: [&str; 2] = ["hevc_aac", "av1_aac"];

/// The fixtures every test set uses.
pub const FIXTURES: [&str; 4] = [
    "avc_aac_2s.flv",
    "avc_aac_1s.flv",
    "aac_only.flv",
    "avc_only.flv",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_legacy_and_enhanced_tags() {
        use TagKind::*;
        assert_eq!(
            classify_tag(TagType::Video, &[0x17, 0, 0, 0, 0]),
            (SequenceHeader, false)
        );
        assert_eq!(
            classify_tag(TagType::Video, &[0x17, 1, 0, 0, 0, 9]),
            (Frame, true)
        );
        assert_eq!(
            classify_tag(TagType::Video, &[0x27, 1, 0, 0, 0, 9]),
            (Frame, false)
        );
        assert_eq!(
            classify_tag(TagType::Video, &[0x17, 2, 0, 0, 0]),
            (EndOfSequence, false)
        );
        assert_eq!(classify_tag(TagType::Video, &[0x57, 0]), (Other, false));
        assert_eq!(
            classify_tag(TagType::Video, b"\x90hvc1"),
            (SequenceHeader, false)
        );
        assert_eq!(
            classify_tag(TagType::Video, b"\x91hvc1\0\0\0x"),
            (Frame, true)
        );
        assert_eq!(classify_tag(TagType::Video, b"\xa3av01x"), (Frame, false));
        assert_eq!(
            classify_tag(TagType::Audio, &[0xaf, 0, 0x11, 0x90]),
            (SequenceHeader, false)
        );
        assert_eq!(
            classify_tag(TagType::Audio, &[0xaf, 1, 1, 2]),
            (Frame, true)
        );
        assert_eq!(
            classify_tag(TagType::Audio, &[0x2f, 0xff, 0xfb]),
            (Frame, true)
        );
        assert_eq!(classify_tag(TagType::Audio, &[]), (Other, false));
    }

    #[test]
    fn media_duration_uses_video_or_audio() {
        let p = |kind, pts: f64, d: f64| ProbePacket {
            kind,
            stream_index: if kind == TrackKind::Video { 0 } else { 1 },
            pts_ms: pts,
            dts_ms: pts,
            duration_ms: d,
            size: 1,
            key: false,
        };
        let v = vec![
            p(TrackKind::Video, 100.0, 40.0),
            p(TrackKind::Video, 180.0, 40.0),
            p(TrackKind::Video, 140.0, 40.0),
            p(TrackKind::Audio, 0.0, 21.0),
            p(TrackKind::Audio, 900.0, 21.0),
        ];
        assert!((media_duration(&v) - 0.12).abs() < 1e-9);
        assert!((media_duration(&v[3..]) - 0.921).abs() < 1e-9);
        assert_eq!(media_duration(&[]), 0.0);
    }
}

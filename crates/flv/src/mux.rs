//! The FLV file muxer (R-FM-1): FLV header, an `onMetaData` script tag, then the
//! original tag bodies with timestamps rebased so each file starts at 0.
//!
//! Pure: it only produces bytes. The recorder decides where files are cut and when they
//! are finalized. Everything written is immediately a playable FLV (crash safety,
//! DESIGN.md); finalization only overwrites two fixed-width AMF0 numbers in
//! `onMetaData` (`duration`, `filesize`) in place, which is what makes the file seekable
//! with a correct length in players.

use bytes::Bytes;
use media::aac::AudioSpecificConfig;
use media::{AudioCodec, Codec, Millis, TrackConfig, TrackKind, VideoCodec};
use thiserror::Error;

/// FLV tag type numbers (FLV spec v10, FLVTAG).
pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;
pub const TAG_SCRIPT: u8 = 18;

/// FLV tag DataSize is a UI24.
pub const MAX_TAG_BODY: usize = 0x00ff_ffff;

/// FLV header (9 bytes) + PreviousTagSize0 (4 bytes): where the first tag starts.
const FIRST_TAG_OFFSET: u64 = 13;
const TAG_HEADER_LEN: usize = 11;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MuxError {
    /// Cannot happen for bodies from RTMP (whose message length is itself a UI24), but a
    /// larger body must not be written with a truncated length.
    #[error("FLV tag body of {len} bytes exceeds the 24-bit DataSize limit ({MAX_TAG_BODY})")]
    TagTooLarge { len: usize },
    #[error("patch at byte {offset} lies outside the {len}-byte file")]
    PatchOutOfRange { offset: u64, len: usize },
}

/// What `onMetaData` announces. Fields left `None` are omitted from the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetaInfo {
    pub has_video: bool,
    pub has_audio: bool,
    pub video_codec_id: Option<f64>,
    pub audio_codec_id: Option<f64>,
    pub width: Option<f64>,
    pub height: Option<f64>,
    pub framerate: Option<f64>,
    pub audio_sample_rate: Option<f64>,
    pub audio_channels: Option<f64>,
    pub encoder: Option<String>,
}

impl MetaInfo {
    /// Fills tracks and codec ids from the sequence headers, and the audio sample rate
    /// and channel count from the AudioSpecificConfig.
    ///
    /// MP3 has no sequence header: for an MP3 track set `has_audio` and
    /// `audio_codec_id = Some(flv_codec_id(packet.codec, &packet.flv))` from its first
    /// packet.
    pub fn from_configs(video: Option<&TrackConfig>, audio: Option<&TrackConfig>) -> Self {
        let mut info = MetaInfo {
            has_video: video.is_some(),
            has_audio: audio.is_some(),
            ..MetaInfo::default()
        };
        if let Some(v) = video {
            info.video_codec_id = Some(flv_codec_id(v.codec, &v.flv));
        }
        if let Some(a) = audio {
            info.audio_codec_id = Some(flv_codec_id(a.codec, &a.flv));
            if a.codec == Codec::Audio(AudioCodec::Aac) {
                if let Ok(asc) = AudioSpecificConfig::parse(&a.record) {
                    info.audio_sample_rate = Some(f64::from(asc.sample_rate));
                    // channel_config 0 means "defined in a program config element":
                    // unknown here, so say nothing rather than something wrong.
                    if asc.channel_config != 0 {
                        info.audio_channels = Some(f64::from(asc.channel_config));
                    }
                }
            }
        }
        info
    }

    /// Takes `width`, `height`, `framerate` (or `fps`) and `encoder` from the stream's own
    /// `onMetaData` (the AMF0 body of `MediaEvent::Metadata`, with or without the leading
    /// `"onMetaData"` string) where this info has none. The encoder's metadata is
    /// advisory: anything missing, mistyped or undecodable is ignored.
    pub fn fill_from_onmetadata(&mut self, amf: &[u8]) {
        let Ok(values) = amf0::decode_all(amf) else {
            return;
        };
        let Some(props) = values
            .iter()
            .find(|v| matches!(v, amf0::Value::EcmaArray(_) | amf0::Value::Object(_)))
        else {
            return;
        };
        let num = |k: &str| {
            props
                .get(k)
                .and_then(amf0::Value::as_number)
                .filter(|n| n.is_finite() && *n > 0.0)
        };
        self.width = self.width.or_else(|| num("width"));
        self.height = self.height.or_else(|| num("height"));
        self.framerate = self
            .framerate
            .or_else(|| num("framerate"))
            .or_else(|| num("fps"));
        if self.encoder.is_none() {
            self.encoder = props
                .get("encoder")
                .and_then(amf0::Value::as_str)
                .map(str::to_string);
        }
    }
}

/// Which tracks an `onMetaData` body announces, as (video, audio): a track is announced
/// by its codec id or, for video, a size. None when the body has no property list.
/// Recorders wait for the announced tracks' sequence headers before a file starts
/// (issue 12: a relay that sends audio ~1 s before the video's sequence header).
pub fn announced_tracks(amf: &[u8]) -> Option<(bool, bool)> {
    let values = amf0::decode_all(amf).ok()?;
    let props = values
        .iter()
        .find(|v| matches!(v, amf0::Value::EcmaArray(_) | amf0::Value::Object(_)))?;
    let present = |k: &str| {
        props.get(k).is_some_and(|v| match v {
            amf0::Value::Number(n) => n.is_finite() && *n > 0.0,
            amf0::Value::String(s) => !s.is_empty(),
            _ => false,
        })
    };
    let video = present("videocodecid") || present("width");
    let audio = present("audiocodecid") || present("audiosamplerate");
    Some((video, audio))
}

/// The `videocodecid`/`audiocodecid` value for a track, given any of its tag bodies.
///
/// Legacy tags use the FLV CodecID/SoundFormat (7 AVC, 10 AAC, 2 MP3). Tags sent with an
/// Enhanced RTMP header are written to the file unchanged, so their metadata uses the
/// E-RTMP convention: the FourCC as a big-endian UI32 ("'av01' == 0x61763031 ==
/// 1635135537.0", enhanced-rtmp-v2 "Enhancing onMetaData").
pub fn flv_codec_id(codec: Codec, flv_body: &[u8]) -> f64 {
    let first = flv_body.first().copied().unwrap_or(0);
    let fourcc = |f: &[u8; 4]| f64::from(u32::from_be_bytes(*f));
    match codec {
        Codec::Video(v) => {
            let enhanced = first & 0x80 != 0;
            match v {
                VideoCodec::H264 if !enhanced => 7.0,
                VideoCodec::H264 => fourcc(b"avc1"),
                VideoCodec::Hevc => fourcc(b"hvc1"),
                VideoCodec::Av1 => fourcc(b"av01"),
            }
        }
        Codec::Audio(a) => {
            let enhanced = first >> 4 == 9;
            match (a, enhanced) {
                (AudioCodec::Aac, false) => 10.0,
                (AudioCodec::Aac, true) => fourcc(b"mp4a"),
                (AudioCodec::Mp3, false) => f64::from(first >> 4),
                (AudioCodec::Mp3, true) => fourcc(b".mp3"),
            }
        }
    }
}

/// An in-place overwrite of the finished file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patch {
    /// Byte offset from the start of the file.
    pub offset: u64,
    pub bytes: [u8; 8],
}

impl Patch {
    /// Applies the patch to an in-memory copy of the file.
    pub fn apply(&self, file: &mut [u8]) -> Result<(), MuxError> {
        let err = MuxError::PatchOutOfRange {
            offset: self.offset,
            len: file.len(),
        };
        let out = usize::try_from(self.offset)
            .ok()
            .and_then(|start| file.get_mut(start..start.checked_add(8)?))
            .ok_or(err)?;
        out.copy_from_slice(&self.bytes);
        Ok(())
    }
}

/// The 11-byte FLV tag header: type, UI24 DataSize, timestamp as UI24 + extension byte
/// (the upper 8 bits), UI24 StreamID = 0. `data_size` above 24 bits is truncated by the
/// format; callers check [`MAX_TAG_BODY`] first.
pub fn tag_header(tag_type: u8, data_size: u32, timestamp: u32) -> [u8; 11] {
    let s = data_size.to_be_bytes();
    let t = timestamp.to_be_bytes();
    [tag_type, s[1], s[2], s[3], t[1], t[2], t[3], t[0], 0, 0, 0]
}

/// Writes one FLV file.
#[derive(Debug)]
pub struct FlvMuxer {
    base: Millis,
    header: Bytes,
    header_emitted: bool,
    /// File offsets of the 8 bytes of the `duration` and `filesize` numbers.
    duration_offset: u64,
    filesize_offset: u64,
    written: u64,
    dropped: u64,
}

impl FlvMuxer {
    /// `base` is the stream-timeline DTS that becomes timestamp 0 in this file.
    pub fn new(info: MetaInfo, base: Millis) -> Self {
        let (script, duration_at, filesize_at) = on_metadata(&info);
        let mut h =
            Vec::with_capacity(FIRST_TAG_OFFSET as usize + TAG_HEADER_LEN + script.len() + 4);
        let flags = (u8::from(info.has_audio) << 2) | u8::from(info.has_video);
        h.extend_from_slice(&[b'F', b'L', b'V', 1, flags, 0, 0, 0, 9]);
        h.extend_from_slice(&[0, 0, 0, 0]); // PreviousTagSize0
                                            // The script body is a few hundred bytes: it always fits a UI24.
        let size = script.len() as u32;
        h.extend_from_slice(&tag_header(TAG_SCRIPT, size, 0));
        h.extend_from_slice(&script);
        h.extend_from_slice(&(size + TAG_HEADER_LEN as u32).to_be_bytes());
        let body_at = FIRST_TAG_OFFSET + TAG_HEADER_LEN as u64;
        Self {
            base,
            header: Bytes::from(h),
            header_emitted: false,
            duration_offset: body_at + duration_at as u64,
            filesize_offset: body_at + filesize_at as u64,
            written: 0,
            dropped: 0,
        }
    }

    /// The file header and `onMetaData` tag; call once, before [`write_tag`]. (If a tag is
    /// written first, `write_tag` emits the header itself so patch offsets stay right.)
    ///
    /// [`write_tag`]: FlvMuxer::write_tag
    pub fn header(&mut self) -> Bytes {
        if !self.header_emitted {
            self.header_emitted = true;
            self.written += self.header.len() as u64;
        }
        self.header.clone()
    }

    /// Appends one tag (11-byte header, the body itself — not copied — and the 4-byte
    /// PreviousTagSize) to `out`. `body` is the original FLV tag body of a config or
    /// packet and `dts` its stream-timeline DTS.
    ///
    /// A body over [`MAX_TAG_BODY`] cannot be described by FLV's UI24 DataSize; it is
    /// left out (nothing is pushed) and counted in [`tags_dropped`]. Bodies from RTMP
    /// never get there: RTMP's message length is a UI24 too. Use [`try_write_tag`] to get
    /// the error instead.
    ///
    /// [`tags_dropped`]: FlvMuxer::tags_dropped
    /// [`try_write_tag`]: FlvMuxer::try_write_tag
    pub fn write_tag(&mut self, kind: TrackKind, dts: Millis, body: &Bytes, out: &mut Vec<Bytes>) {
        if self.try_write_tag(kind, dts, body, out).is_err() {
            self.dropped += 1;
        }
    }

    /// [`write_tag`](FlvMuxer::write_tag), but an oversized body is an error (and not
    /// counted as dropped).
    pub fn try_write_tag(
        &mut self,
        kind: TrackKind,
        dts: Millis,
        body: &Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<(), MuxError> {
        if body.len() > MAX_TAG_BODY {
            return Err(MuxError::TagTooLarge { len: body.len() });
        }
        if !self.header_emitted {
            out.push(self.header());
        }
        let tag_type = match kind {
            TrackKind::Video => TAG_VIDEO,
            TrackKind::Audio => TAG_AUDIO,
        };
        // Checked above: fits in 24 bits.
        let size = body.len() as u32;
        let header = tag_header(tag_type, size, self.file_timestamp(dts));
        out.push(Bytes::copy_from_slice(&header));
        if !body.is_empty() {
            out.push(body.clone());
        }
        let prev = (size + TAG_HEADER_LEN as u32).to_be_bytes();
        out.push(Bytes::copy_from_slice(&prev));
        self.written += u64::from(size) + TAG_HEADER_LEN as u64 + 4;
        Ok(())
    }

    /// Tags [`write_tag`](FlvMuxer::write_tag) left out because their body exceeded
    /// [`MAX_TAG_BODY`].
    pub fn tags_dropped(&self) -> u64 {
        self.dropped
    }

    /// The FLV timestamp for a stream DTS: `dts - base`, clamped to `0..=i32::MAX`.
    ///
    /// Below 0 (a frame before the file's base, e.g. audio just ahead of the first
    /// keyframe) clamps to 0 rather than wrapping to ~4.29e9. The top is i32::MAX, not
    /// u32::MAX, because players read the FLV timestamp as SI32 (reliability T2); a file
    /// is cut long before 24 days anyway.
    pub fn file_timestamp(&self, dts: Millis) -> u32 {
        let rel = (dts - self.base).as_ms().clamp(0, i64::from(i32::MAX));
        // In 0..=i32::MAX after the clamp.
        rel as u32
    }

    /// Bytes emitted so far (header included once emitted).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// The overwrites that finalize the file: `duration` (seconds) and `filesize` (bytes,
    /// = `bytes_written()`), both AMF0 numbers (big-endian f64) in `onMetaData`.
    /// A negative or non-finite duration is written as 0.
    pub fn finalize(&self, duration_secs: f64) -> Vec<Patch> {
        let written = self.written.max(self.header.len() as u64);
        vec![
            Patch {
                offset: self.duration_offset,
                bytes: sane(duration_secs).to_be_bytes(),
            },
            Patch {
                offset: self.filesize_offset,
                // Exact up to 2^53 bytes.
                bytes: (written as f64).to_be_bytes(),
            },
        ]
    }
}

/// Finalize patches for an FLV written by [`FlvMuxer`] and left unfinished (crash
/// recovery: the daemon finds the spool file on start). `head` is the start of the file
/// (the first few KiB are enough), `filesize` its full length. Returns `None` if the file
/// does not start with an `onMetaData` carrying numeric `duration` and `filesize`.
///
/// Only the value types our muxer writes (number, boolean, string) are walked; anything
/// else ends the search.
pub fn patches_for_existing(head: &[u8], duration_secs: f64, filesize: u64) -> Option<Vec<Patch>> {
    if head.get(0..3)? != b"FLV" {
        return None;
    }
    let data_offset = u32::from_be_bytes(head.get(5..9)?.try_into().ok()?) as usize;
    let tag_at = data_offset.checked_add(4)?;
    let th = head.get(tag_at..tag_at.checked_add(TAG_HEADER_LEN)?)?;
    if th[0] & 0x1f != TAG_SCRIPT {
        return None;
    }
    let size = u32::from_be_bytes([0, th[1], th[2], th[3]]) as usize;
    let body_at = tag_at + TAG_HEADER_LEN;
    let body = head.get(body_at..body_at.checked_add(size)?)?;
    // "onMetaData" string, then an ECMA array (marker 8 + UI32 count).
    let name = b"\x02\x00\x0aonMetaData";
    if body.get(..name.len())? != name || *body.get(name.len())? != 0x08 {
        return None;
    }
    let mut pos = name.len() + 5;
    let (mut duration, mut size_at) = (None, None);
    loop {
        let klen = usize::from(u16::from_be_bytes(body.get(pos..pos + 2)?.try_into().ok()?));
        let key = body.get(pos + 2..pos + 2 + klen)?;
        pos += 2 + klen;
        let marker = *body.get(pos)?;
        match marker {
            0x00 => {
                body.get(pos + 1..pos + 9)?;
                let at = (body_at + pos + 1) as u64;
                match key {
                    b"duration" => duration = Some(at),
                    b"filesize" => size_at = Some(at),
                    _ => {}
                }
                pos += 9;
            }
            0x01 => pos += 2,
            0x02 => {
                let slen = usize::from(u16::from_be_bytes(
                    body.get(pos + 1..pos + 3)?.try_into().ok()?,
                ));
                pos += 3 + slen;
            }
            _ => break,
        }
        if let (Some(d), Some(f)) = (duration, size_at) {
            return Some(vec![
                Patch {
                    offset: d,
                    bytes: sane(duration_secs).to_be_bytes(),
                },
                Patch {
                    offset: f,
                    bytes: (filesize as f64).to_be_bytes(),
                },
            ]);
        }
    }
    None
}

fn sane(duration_secs: f64) -> f64 {
    if duration_secs.is_finite() && duration_secs > 0.0 {
        duration_secs
    } else {
        0.0
    }
}

/// Builds the `onMetaData` script body; returns it with the body offsets of the 8 bytes
/// of the `duration` and `filesize` numbers.
fn on_metadata(info: &MetaInfo) -> (Vec<u8>, usize, usize) {
    use amf0::Value::{Boolean, Number, String as Str};
    // duration and filesize come first and always exist: finalize patches them, and
    // recovery (`patches_for_existing`) finds them without decoding the rest.
    let mut props: Vec<(&str, amf0::Value)> =
        vec![("duration", Number(0.0)), ("filesize", Number(0.0))];
    let mut opt = |k: &'static str, v: Option<f64>| {
        if let Some(v) = v {
            props.push((k, Number(v)));
        }
    };
    if info.has_video {
        opt("width", info.width);
        opt("height", info.height);
        opt("framerate", info.framerate);
        opt("videocodecid", info.video_codec_id);
    }
    if info.has_audio {
        opt("audiocodecid", info.audio_codec_id);
        opt("audiosamplerate", info.audio_sample_rate);
        opt("audiochannels", info.audio_channels);
        if let Some(ch) = info.audio_channels {
            props.push(("stereo", Boolean(ch >= 2.0)));
        }
    }
    props.push(("hasVideo", Boolean(info.has_video)));
    props.push(("hasAudio", Boolean(info.has_audio)));
    if let Some(e) = &info.encoder {
        props.push(("encoder", Str(e.clone())));
    }

    let mut out = Vec::with_capacity(256);
    amf0::encode(&Str("onMetaData".to_string()), &mut out);
    // Written by hand (not via amf0::encode of an EcmaArray) to learn where each value
    // lands; the bytes are identical.
    out.push(0x08);
    out.extend_from_slice(&(props.len() as u32).to_be_bytes());
    let (mut duration_at, mut filesize_at) = (0, 0);
    for (k, v) in &props {
        out.extend_from_slice(&(k.len() as u16).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        // +1: skip the number marker byte.
        match *k {
            "duration" => duration_at = out.len() + 1,
            "filesize" => filesize_at = out.len() + 1,
            _ => {}
        }
        amf0::encode(v, &mut out);
    }
    out.extend_from_slice(&[0, 0, 0x09]);
    (out, duration_at, filesize_at)
}

#[cfg(test)]
mod tests;

//! The vocabulary every other liverec crate speaks: one 64-bit millisecond timeline,
//! codecs, packets and codec configuration records. No I/O, no async.
//!
//! Milliseconds are the source precision of RTMP/FLV, so the internal timeline keeps
//! them; containers convert at their edge (90 kHz for TS, track timescale for MP4).

pub mod aac;
pub mod avc;
mod millis;
pub mod repair;
mod time;
pub mod timeline;

pub use millis::{Millis, WallMillis, TS_HZ};
pub use time::TimestampUnwrapper;
pub use timeline::Rebaser;

use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    Video,
    Audio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    H264,
    /// HEVC over Enhanced RTMP (`hvc1`).
    Hevc,
    /// AV1 over Enhanced RTMP (`av01`).
    Av1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    Aac,
    Mp3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Video(VideoCodec),
    Audio(AudioCodec),
}

impl Codec {
    pub fn kind(self) -> TrackKind {
        match self {
            Codec::Video(_) => TrackKind::Video,
            Codec::Audio(_) => TrackKind::Audio,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Video(VideoCodec::H264) => "h264",
            Codec::Video(VideoCodec::Hevc) => "hevc",
            Codec::Video(VideoCodec::Av1) => "av1",
            Codec::Audio(AudioCodec::Aac) => "aac",
            Codec::Audio(AudioCodec::Mp3) => "mp3",
        }
    }
}

/// One coded frame.
///
/// `flv` is the original FLV tag body exactly as it arrived (so the FLV recorder writes
/// the encoder's bytes untouched) and `data` is the codec payload inside it (AVCC
/// length-prefixed NAL units, a raw AAC frame, an MP3 frame); both share one buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub codec: Codec,
    /// Decode time on the unwrapped timeline.
    pub dts: Millis,
    /// Composition offset (PTS − DTS), signed: B-frames may have negative offsets.
    pub cts: i32,
    /// A random access point: a video keyframe (IDR/IRAP/AV1 key), or any audio frame.
    pub key: bool,
    pub flv: Bytes,
    pub data: Bytes,
}

impl Packet {
    pub fn kind(&self) -> TrackKind {
        self.codec.kind()
    }

    /// Presentation time; saturates rather than overflow at the ends of the timeline.
    pub fn pts(&self) -> Millis {
        self.dts
            .saturating_add(Millis::from_ms(i64::from(self.cts)))
    }

    pub fn is_video_key(&self) -> bool {
        self.key && self.kind() == TrackKind::Video
    }
}

/// A codec configuration (sequence header): avcC, hvcC, av1C or AudioSpecificConfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackConfig {
    pub codec: Codec,
    /// The decoder configuration record, as carried by the stream.
    pub record: Bytes,
    /// The original FLV tag body of the sequence header.
    pub flv: Bytes,
    /// Timestamp of the sequence header on the stream timeline.
    pub dts: Millis,
}

impl TrackConfig {
    pub fn kind(&self) -> TrackKind {
        self.codec.kind()
    }
}

/// What an ingest session produces for a stream, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    Config(TrackConfig),
    Packet(Packet),
    /// The AMF0 body of `onMetaData` (without the `@setDataFrame` prefix).
    Metadata(Bytes),
    /// The encoder's timeline jumped here (a clock reset, a step back, a jump forward
    /// past `[ingest] max_timestamp_jump`, R-IN-6); the events after it were rebased by
    /// ingest to continue the timeline monotonically, so a file stays playable. Formats
    /// that can say so mark it (HLS: the next segment starts after
    /// `#EXT-X-DISCONTINUITY`).
    Discontinuity,
}

impl MediaEvent {
    pub fn dts(&self) -> Option<Millis> {
        match self {
            MediaEvent::Config(c) => Some(c.dts),
            MediaEvent::Packet(p) => Some(p.dts),
            MediaEvent::Metadata(_) | MediaEvent::Discontinuity => None,
        }
    }
}

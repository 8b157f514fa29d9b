//! FLV audio/video tag bodies (the payload of RTMP message types 8 and 9, and of FLV file
//! tags) parsed into `media` events: legacy FLV (AAC, MP3, AVC) and Enhanced RTMP
//! (veovera E-RTMP v1/v2: FourCC video `avc1`/`hvc1`/`av01`, FourCC audio `mp4a`/`.mp3`).
//!
//! The input comes from the network before authentication of its contents, so every
//! read is bounds-checked: an empty or short body is a [`TagError::Truncated`], never a
//! panic or a `len - 1` underflow (reliability.md M1), and codec configuration records
//! are validated before anyone trusts them (M2). Composition offsets are SI24 and
//! sign-extended, because B-frames produce negative values (M4).
//!
//! Parsing is zero copy: `Packet::flv`/`TrackConfig::flv` are the body itself and
//! `data`/`record` are slices of it.

use bytes::Bytes;
use media::aac::{AacError, AudioSpecificConfig};
use media::avc::{AvcConfig, AvcError};
use media::{AudioCodec, Codec, MediaEvent, Millis, Packet, TrackConfig, VideoCodec};
use thiserror::Error;

/// The outcome of parsing one tag body.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// A codec configuration or a coded frame.
    Event(MediaEvent),
    /// A well-formed tag that carries nothing to record.
    Skip(SkipReason),
}

/// Why a well-formed tag produced no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// AVC end of sequence (legacy packet type 2) or E-RTMP `SequenceEnd` (audio/video).
    EndOfSequence,
    /// Video info/command frame (frame type 5), e.g. seek start/end markers.
    CommandFrame,
    /// E-RTMP video `Metadata` packet (AMF `colorInfo` for HDR); not media.
    Metadata,
    /// E-RTMP `MPEG2TSSequenceStart`: an alternative AV1 descriptor we do not use; the
    /// encoder also sends a regular `SequenceStart`.
    Mpeg2TsSequenceStart,
    /// E-RTMP audio `MultichannelConfig`: channel layout only, no samples.
    MultichannelConfig,
    /// A sequence start for a codec that has no configuration record (E-RTMP `.mp3`).
    NoConfigRecord,
    /// A complete header followed by zero payload bytes. Some encoders send these around
    /// reconnects; emitting them would create zero-size samples downstream (M1,
    /// gortmplib "do not emit empty frames").
    EmptyFrame,
}

/// A codec identifier from an FLV/E-RTMP header, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourCc(pub [u8; 4]);

impl std::fmt::Display for FourCc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for &b in &self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TagError {
    /// The body ends before the header (or a length it declares) is complete.
    #[error("{kind} truncated: body is {len} bytes, needs at least {need}")]
    Truncated {
        kind: &'static str,
        len: usize,
        need: usize,
    },
    /// Legacy FLV SoundFormat we do not record (e.g. 0 PCM, 6 Nellymoser, 11 Speex).
    #[error("unsupported FLV audio sound format {0}")]
    UnsupportedAudio(u8),
    /// Legacy FLV video CodecID we do not record (e.g. 2 Sorenson, 4 VP6, 12 non-standard HEVC).
    #[error("unsupported FLV video codec id {0}")]
    UnsupportedVideo(u8),
    /// E-RTMP audio FourCC we do not record (`Opus`, `ac-3`, `ec-3`, `fLaC`, ...).
    #[error("unsupported E-RTMP audio codec '{0}'")]
    UnsupportedAudioFourCc(FourCc),
    /// E-RTMP video FourCC we do not record (`vp09`, `vp08`, ...).
    #[error("unsupported E-RTMP video codec '{0}'")]
    UnsupportedVideoFourCc(FourCc),
    /// A packet type we do not handle: E-RTMP `Multitrack`, or a reserved value.
    #[error("unsupported {kind} packet type {packet_type}")]
    UnsupportedPacketType { kind: &'static str, packet_type: u8 },
    #[error("invalid AAC AudioSpecificConfig in sequence header: {0}")]
    BadAudioSpecificConfig(#[from] AacError),
    #[error("invalid AVC sequence header: {0}")]
    BadAvcConfig(#[from] AvcError),
    #[error("invalid HEVC sequence header (hvcC): {0}")]
    BadHevcConfig(&'static str),
    #[error("invalid AV1 sequence header (av1C): {0}")]
    BadAv1Config(&'static str),
}

impl TagError {
    /// True for codecs/packet types we recognise as valid but do not record: the caller
    /// skips the track with a warning (R-IN-5) rather than treating the stream as broken.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            TagError::UnsupportedAudio(_)
                | TagError::UnsupportedVideo(_)
                | TagError::UnsupportedAudioFourCc(_)
                | TagError::UnsupportedVideoFourCc(_)
                | TagError::UnsupportedPacketType { .. }
        )
    }
}

// Legacy FLV SoundFormat values (FLV spec v10, AUDIODATA).
const SOUND_MP3: u8 = 2;
const SOUND_AAC: u8 = 10;
const SOUND_MP3_8K: u8 = 14;
/// E-RTMP v2: SoundFormat 9 (formerly reserved) announces an ExAudioTagHeader.
const SOUND_EX_HEADER: u8 = 9;

const AAC_SEQUENCE_HEADER: u8 = 0;
const AAC_RAW: u8 = 1;

// Legacy FLV video FrameType / CodecID / AVCPacketType.
const FRAME_KEY: u8 = 1;
const FRAME_COMMAND: u8 = 5;
const CODEC_AVC: u8 = 7;
const AVC_SEQUENCE_HEADER: u8 = 0;
const AVC_NALU: u8 = 1;
const AVC_END_OF_SEQUENCE: u8 = 2;

// E-RTMP VideoPacketType.
const VPT_SEQUENCE_START: u8 = 0;
const VPT_CODED_FRAMES: u8 = 1;
const VPT_SEQUENCE_END: u8 = 2;
const VPT_CODED_FRAMES_X: u8 = 3;
const VPT_METADATA: u8 = 4;
const VPT_MPEG2TS_SEQUENCE_START: u8 = 5;
const VPT_MULTITRACK: u8 = 6;
const VPT_MOD_EX: u8 = 7;

// E-RTMP AudioPacketType.
const APT_SEQUENCE_START: u8 = 0;
const APT_CODED_FRAMES: u8 = 1;
const APT_SEQUENCE_END: u8 = 2;
const APT_MULTICHANNEL_CONFIG: u8 = 4;
const APT_MULTITRACK: u8 = 5;
const APT_MOD_EX: u8 = 7;

/// Parses an audio tag body (RTMP message type 8 / FLV tag type 8).
pub fn parse_audio(body: Bytes, dts: Millis) -> Result<Parsed, TagError> {
    let first = *body.first().ok_or(TagError::Truncated {
        kind: "audio tag",
        len: 0,
        need: 1,
    })?;
    match first >> 4 {
        SOUND_AAC => {
            need(&body, 2, "AAC audio tag header")?;
            match body[1] {
                AAC_SEQUENCE_HEADER => aac_config(body, 2, dts),
                AAC_RAW => Ok(frame(body, 2, Codec::Audio(AudioCodec::Aac), dts, 0, true)),
                packet_type => Err(TagError::UnsupportedPacketType {
                    kind: "AAC audio",
                    packet_type,
                }),
            }
        }
        SOUND_MP3 | SOUND_MP3_8K => Ok(frame(body, 1, Codec::Audio(AudioCodec::Mp3), dts, 0, true)),
        SOUND_EX_HEADER => parse_ex_audio(body, dts),
        other => Err(TagError::UnsupportedAudio(other)),
    }
}

fn parse_ex_audio(body: Bytes, dts: Millis) -> Result<Parsed, TagError> {
    let (packet_type, pos) = mod_ex(&body, 1, body[0] & 0x0f, APT_MOD_EX, "E-RTMP audio")?;
    if packet_type == APT_MULTITRACK {
        return Err(TagError::UnsupportedPacketType {
            kind: "E-RTMP audio",
            packet_type,
        });
    }
    let fourcc = fourcc(&body, pos, "E-RTMP audio FourCC")?;
    let pos = pos + 4;
    match (&fourcc.0, packet_type) {
        (_, APT_SEQUENCE_END) => Ok(Parsed::Skip(SkipReason::EndOfSequence)),
        (_, APT_MULTICHANNEL_CONFIG) => Ok(Parsed::Skip(SkipReason::MultichannelConfig)),
        (b"mp4a", APT_SEQUENCE_START) => aac_config(body, pos, dts),
        (b"mp4a", APT_CODED_FRAMES) => Ok(frame(
            body,
            pos,
            Codec::Audio(AudioCodec::Aac),
            dts,
            0,
            true,
        )),
        (b".mp3", APT_SEQUENCE_START) => Ok(Parsed::Skip(SkipReason::NoConfigRecord)),
        (b".mp3", APT_CODED_FRAMES) => Ok(frame(
            body,
            pos,
            Codec::Audio(AudioCodec::Mp3),
            dts,
            0,
            true,
        )),
        (b"mp4a" | b".mp3", packet_type) => Err(TagError::UnsupportedPacketType {
            kind: "E-RTMP audio",
            packet_type,
        }),
        _ => Err(TagError::UnsupportedAudioFourCc(fourcc)),
    }
}

fn aac_config(body: Bytes, pos: usize, dts: Millis) -> Result<Parsed, TagError> {
    let record = body.slice(pos..);
    AudioSpecificConfig::parse(&record)?;
    Ok(Parsed::Event(MediaEvent::Config(TrackConfig {
        codec: Codec::Audio(AudioCodec::Aac),
        record,
        flv: body,
        dts,
    })))
}

/// Parses a video tag body (RTMP message type 9 / FLV tag type 9).
pub fn parse_video(body: Bytes, dts: Millis) -> Result<Parsed, TagError> {
    let first = *body.first().ok_or(TagError::Truncated {
        kind: "video tag",
        len: 0,
        need: 1,
    })?;
    if first & 0x80 != 0 {
        return parse_ex_video(body, dts);
    }
    let frame_type = first >> 4;
    if frame_type == FRAME_COMMAND {
        return Ok(Parsed::Skip(SkipReason::CommandFrame));
    }
    // Only frame type 1 is a random access point. Type 4 ("generated keyframe") is a
    // server-side seek aid, not necessarily an IDR; ffmpeg's flvdec also keys on 1 only.
    let key = frame_type == FRAME_KEY;
    match first & 0x0f {
        CODEC_AVC => {
            // AVCPacketType (1) + CompositionTime (SI24) precede the payload.
            need(&body, 5, "AVC video tag header")?;
            match body[1] {
                AVC_SEQUENCE_HEADER => {
                    let record = body.slice(5..);
                    AvcConfig::parse(&record)?;
                    Ok(config(body, record, VideoCodec::H264, dts))
                }
                AVC_NALU => {
                    let cts = si24(&body[2..5]);
                    Ok(frame(
                        body,
                        5,
                        Codec::Video(VideoCodec::H264),
                        dts,
                        cts,
                        key,
                    ))
                }
                AVC_END_OF_SEQUENCE => Ok(Parsed::Skip(SkipReason::EndOfSequence)),
                packet_type => Err(TagError::UnsupportedPacketType {
                    kind: "AVC video",
                    packet_type,
                }),
            }
        }
        other => Err(TagError::UnsupportedVideo(other)),
    }
}

fn parse_ex_video(body: Bytes, dts: Millis) -> Result<Parsed, TagError> {
    const KIND: &str = "E-RTMP video";
    let frame_type = (body[0] >> 4) & 0x07;
    let (packet_type, pos) = mod_ex(&body, 1, body[0] & 0x0f, VPT_MOD_EX, KIND)?;
    // E-RTMP v2: a command frame carries a one-byte VideoCommand and no FourCC, unless
    // the packet is Metadata (whose frame type must be ignored).
    if frame_type == FRAME_COMMAND && packet_type != VPT_METADATA {
        return Ok(Parsed::Skip(SkipReason::CommandFrame));
    }
    if packet_type == VPT_MULTITRACK {
        return Err(TagError::UnsupportedPacketType {
            kind: KIND,
            packet_type,
        });
    }
    let fourcc = fourcc(&body, pos, "E-RTMP video FourCC")?;
    let pos = pos + 4;
    let codec = match &fourcc.0 {
        b"avc1" => VideoCodec::H264,
        b"hvc1" => VideoCodec::Hevc,
        b"av01" => VideoCodec::Av1,
        _ => return Err(TagError::UnsupportedVideoFourCc(fourcc)),
    };
    let key = frame_type == FRAME_KEY;
    match packet_type {
        VPT_SEQUENCE_START => {
            let record = body.slice(pos..);
            validate_video_record(codec, &record)?;
            Ok(config(body, record, codec, dts))
        }
        // AV1 has no composition offset: it has no B-frame reordering in the bitstream
        // order sent over E-RTMP.
        VPT_CODED_FRAMES if codec != VideoCodec::Av1 => {
            need(&body, pos + 3, "E-RTMP video composition time")?;
            let cts = si24(&body[pos..pos + 3]);
            Ok(frame(body, pos + 3, Codec::Video(codec), dts, cts, key))
        }
        // CodedFramesX: "composition time offset is implicitly zero" (saves 3 bytes).
        VPT_CODED_FRAMES | VPT_CODED_FRAMES_X => {
            Ok(frame(body, pos, Codec::Video(codec), dts, 0, key))
        }
        VPT_SEQUENCE_END => Ok(Parsed::Skip(SkipReason::EndOfSequence)),
        VPT_METADATA => Ok(Parsed::Skip(SkipReason::Metadata)),
        VPT_MPEG2TS_SEQUENCE_START => Ok(Parsed::Skip(SkipReason::Mpeg2TsSequenceStart)),
        packet_type => Err(TagError::UnsupportedPacketType {
            kind: KIND,
            packet_type,
        }),
    }
}

fn validate_video_record(codec: VideoCodec, record: &Bytes) -> Result<(), TagError> {
    match codec {
        VideoCodec::H264 => {
            AvcConfig::parse(record)?;
        }
        // HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3.1): 23 fixed bytes
        // before the arrays, configurationVersion 1.
        VideoCodec::Hevc => {
            if record.len() < 23 {
                return Err(TagError::BadHevcConfig(
                    "shorter than its 23-byte fixed part",
                ));
            }
            if record[0] != 1 {
                return Err(TagError::BadHevcConfig("configurationVersion is not 1"));
            }
        }
        // AV1CodecConfigurationRecord (AV1-ISOBMFF 2.3.3): 4 fixed bytes, first byte is
        // marker (1 bit, = 1) + version (7 bits, = 1).
        VideoCodec::Av1 => {
            if record.len() < 4 {
                return Err(TagError::BadAv1Config("shorter than its 4-byte fixed part"));
            }
            if record[0] & 0x80 == 0 {
                return Err(TagError::BadAv1Config("marker bit is 0"));
            }
            if record[0] & 0x7f != 1 {
                return Err(TagError::BadAv1Config("version is not 1"));
            }
        }
    }
    Ok(())
}

/// Follows the E-RTMP v2 ModEx chain: while the packet type is ModEx, skip a
/// size-prefixed modifier (`UI8 + 1`, or `UI16 + 1` when the UI8 form reads 256) and read
/// the next `modExType | packetType` byte. The only defined modifier is a nanosecond
/// timestamp offset, below our millisecond timeline, so its value is ignored.
/// Returns the real packet type and the position after the chain.
fn mod_ex(
    body: &[u8],
    mut pos: usize,
    mut packet_type: u8,
    mod_ex_type: u8,
    kind: &'static str,
) -> Result<(u8, usize), TagError> {
    // Each round consumes at least 2 bytes, so this terminates within body.len() / 2.
    while packet_type == mod_ex_type {
        need(body, pos + 1, kind)?;
        let mut size = usize::from(body[pos]) + 1;
        pos += 1;
        if size == 256 {
            need(body, pos + 2, kind)?;
            size = usize::from(u16::from_be_bytes([body[pos], body[pos + 1]])) + 1;
            pos += 2;
        }
        need(body, pos + size + 1, kind)?;
        pos += size;
        packet_type = body[pos] & 0x0f;
        pos += 1;
    }
    Ok((packet_type, pos))
}

fn fourcc(body: &[u8], pos: usize, kind: &'static str) -> Result<FourCc, TagError> {
    need(body, pos + 4, kind)?;
    Ok(FourCc([
        body[pos],
        body[pos + 1],
        body[pos + 2],
        body[pos + 3],
    ]))
}

fn need(body: &[u8], need: usize, kind: &'static str) -> Result<(), TagError> {
    if body.len() < need {
        return Err(TagError::Truncated {
            kind,
            len: body.len(),
            need,
        });
    }
    Ok(())
}

/// Sign-extends a big-endian SI24 (FLV CompositionTime), e.g. `ff ff df` → −33.
fn si24(b: &[u8]) -> i32 {
    match b {
        [a, b, c] => i32::from_be_bytes([*a, *b, *c, 0]) >> 8,
        _ => 0,
    }
}

fn config(body: Bytes, record: Bytes, codec: VideoCodec, dts: Millis) -> Parsed {
    Parsed::Event(MediaEvent::Config(TrackConfig {
        codec: Codec::Video(codec),
        record,
        flv: body,
        dts,
    }))
}

/// A coded frame whose payload starts at `pos` (callers have checked `pos <= len`).
fn frame(body: Bytes, pos: usize, codec: Codec, dts: Millis, cts: i32, key: bool) -> Parsed {
    if pos >= body.len() {
        return Parsed::Skip(SkipReason::EmptyFrame);
    }
    Parsed::Event(MediaEvent::Packet(Packet {
        codec,
        dts,
        cts,
        key,
        data: body.slice(pos..),
        flv: body,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVCC: &[u8] = &[
        1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1, 0, 2, 0x68, 0xee,
    ];

    fn packet(p: Result<Parsed, TagError>) -> Packet {
        match p {
            Ok(Parsed::Event(MediaEvent::Packet(p))) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    fn config(p: Result<Parsed, TagError>) -> TrackConfig {
        match p {
            Ok(Parsed::Event(MediaEvent::Config(c))) => c,
            other => panic!("expected a config, got {other:?}"),
        }
    }

    fn cat(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    /// `data` must be a slice of `flv`, not a copy (zero copy, DESIGN.md).
    fn assert_shares(outer: &Bytes, inner: &Bytes) {
        let o = outer.as_ptr() as usize;
        let i = inner.as_ptr() as usize;
        assert!(i >= o && i + inner.len() <= o + outer.len(), "not a slice");
    }

    #[test]
    fn aac_sequence_header_and_raw_frame() {
        let body = Bytes::from_static(&[0xaf, 0x00, 0x11, 0x90]);
        let c = config(parse_audio(body.clone(), Millis::from_ms(40)));
        assert_eq!(c.codec, Codec::Audio(AudioCodec::Aac));
        assert_eq!(&c.record[..], &[0x11, 0x90]);
        assert_eq!(c.flv, body);
        assert_eq!(c.dts.as_ms(), 40);

        let body = Bytes::from_static(&[0xaf, 0x01, 0x21, 0x10, 0x05]);
        let p = packet(parse_audio(body.clone(), Millis::from_ms(63)));
        assert_eq!(p.codec, Codec::Audio(AudioCodec::Aac));
        assert_eq!((p.dts.as_ms(), p.cts, p.key), (63, 0, true));
        assert_eq!(&p.data[..], &[0x21, 0x10, 0x05]);
        assert_eq!(p.flv, body);
        assert_shares(&p.flv, &p.data);
    }

    #[test]
    fn aac_invalid_asc_is_refused() {
        assert_eq!(
            parse_audio(Bytes::from_static(&[0xaf, 0x00, 0x11]), Millis::from_ms(0)),
            Err(TagError::BadAudioSpecificConfig(AacError::TooShort {
                len: 1
            }))
        );
        assert_eq!(
            parse_audio(Bytes::from_static(&[0xaf, 0x00]), Millis::from_ms(0)),
            Err(TagError::BadAudioSpecificConfig(AacError::TooShort {
                len: 0
            }))
        );
        assert_eq!(
            parse_audio(
                Bytes::from_static(&[0xaf, 0x00, 0x00, 0x00]),
                Millis::from_ms(0)
            ),
            Err(TagError::BadAudioSpecificConfig(AacError::NullObjectType))
        );
    }

    #[test]
    fn mp3_both_sound_formats() {
        for first in [0x2f, 0xe2] {
            let body = cat(&[&[first], b"\xff\xfb\x90\x64"]);
            let p = packet(parse_audio(body, Millis::from_ms(10)));
            assert_eq!(p.codec, Codec::Audio(AudioCodec::Mp3));
            assert_eq!(&p.data[..], b"\xff\xfb\x90\x64");
            assert!(p.key);
        }
    }

    #[test]
    fn avc_sequence_header() {
        let body = cat(&[&[0x17, 0, 0, 0, 0], AVCC]);
        let c = config(parse_video(body.clone(), Millis::from_ms(0)));
        assert_eq!(c.codec, Codec::Video(VideoCodec::H264));
        assert_eq!(&c.record[..], AVCC);
        assert_eq!(c.flv, body);
    }

    #[test]
    fn avc_nalu_positive_and_negative_composition_time() {
        let nalus: &[u8] = &[0, 0, 0, 2, 0x65, 0x88];
        let p = packet(parse_video(
            cat(&[&[0x17, 1, 0, 0, 0x42], nalus]),
            Millis::from_ms(1000),
        ));
        assert_eq!((p.dts.as_ms(), p.cts, p.key), (1000, 0x42, true));
        assert_eq!(&p.data[..], nalus);
        assert_eq!(p.pts().as_ms(), 1066);
        assert_shares(&p.flv, &p.data);

        // B-frame reordering: SI24 0xffffdf is -33, not 16 777 183 (reliability M4).
        let p = packet(parse_video(
            cat(&[&[0x27, 1, 0xff, 0xff, 0xdf], nalus]),
            Millis::from_ms(1000),
        ));
        assert_eq!((p.cts, p.key), (-33, false));
        assert_eq!(p.pts().as_ms(), 967);

        // Extremes of SI24.
        let p = packet(parse_video(
            cat(&[&[0x27, 1, 0x80, 0, 0], nalus]),
            Millis::from_ms(0),
        ));
        assert_eq!(p.cts, -(1 << 23));
        let p = packet(parse_video(
            cat(&[&[0x37, 1, 0x7f, 0xff, 0xff], nalus]),
            Millis::from_ms(0),
        ));
        assert_eq!((p.cts, p.key), ((1 << 23) - 1, false));
    }

    #[test]
    fn avc_end_of_sequence_and_command_frames_skip() {
        assert_eq!(
            parse_video(Bytes::from_static(&[0x17, 2, 0, 0, 0]), Millis::from_ms(0)),
            Ok(Parsed::Skip(SkipReason::EndOfSequence))
        );
        // Info/command frame: frame type 5 with a one-byte payload.
        assert_eq!(
            parse_video(Bytes::from_static(&[0x57, 0x00]), Millis::from_ms(0)),
            Ok(Parsed::Skip(SkipReason::CommandFrame))
        );
        // NALU packet whose header is complete but carries no NAL units.
        assert_eq!(
            parse_video(Bytes::from_static(&[0x27, 1, 0, 0, 0]), Millis::from_ms(0)),
            Ok(Parsed::Skip(SkipReason::EmptyFrame))
        );
        assert_eq!(
            parse_audio(Bytes::from_static(&[0xaf, 1]), Millis::from_ms(0)),
            Ok(Parsed::Skip(SkipReason::EmptyFrame))
        );
    }

    #[test]
    fn generated_keyframe_is_not_a_random_access_point() {
        let p = packet(parse_video(
            Bytes::from_static(&[0x47, 1, 0, 0, 0, 9]),
            Millis::from_ms(0),
        ));
        assert!(!p.key);
    }

    fn hvcc() -> Vec<u8> {
        let mut v = vec![1u8, 0x01, 0x60, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 0x5d, 0xf0, 0];
        v.extend_from_slice(&[0xfc, 0xfd, 0xf8, 0xf8, 0, 0, 0x0f, 0]);
        assert_eq!(v.len(), 23);
        v
    }

    #[test]
    fn ertmp_hevc_sequence_start_coded_frames_and_x() {
        // 0x90: isExHeader | frame type 1 (key) | SequenceStart
        let rec = hvcc();
        let body = cat(&[&[0x90], b"hvc1", &rec]);
        let c = config(parse_video(body.clone(), Millis::from_ms(5)));
        assert_eq!(c.codec, Codec::Video(VideoCodec::Hevc));
        assert_eq!(&c.record[..], &rec[..]);
        assert_eq!(c.flv, body);

        // CodedFrames, key, cts -33.
        let p = packet(parse_video(
            cat(&[&[0x91], b"hvc1", &[0xff, 0xff, 0xdf], b"\0\0\0\x01\x26"]),
            Millis::from_ms(7),
        ));
        assert_eq!(p.codec, Codec::Video(VideoCodec::Hevc));
        assert_eq!((p.dts.as_ms(), p.cts, p.key), (7, -33, true));
        assert_eq!(&p.data[..], b"\0\0\0\x01\x26");

        // CodedFramesX, inter (frame type 2): no composition time.
        let p = packet(parse_video(
            cat(&[&[0xa3], b"hvc1", b"\0\0\0\x01\x02"]),
            Millis::from_ms(8),
        ));
        assert_eq!((p.cts, p.key), (0, false));
        assert_eq!(&p.data[..], b"\0\0\0\x01\x02");
        assert_shares(&p.flv, &p.data);

        // SequenceEnd.
        assert_eq!(
            parse_video(cat(&[&[0x92], b"hvc1"]), Millis::from_ms(9)),
            Ok(Parsed::Skip(SkipReason::EndOfSequence))
        );
    }

    #[test]
    fn ertmp_hevc_bad_config() {
        let short = cat(&[&[0x90], b"hvc1", &[1u8; 22]]);
        assert!(matches!(
            parse_video(short, Millis::from_ms(0)),
            Err(TagError::BadHevcConfig(_))
        ));
        let mut rec = hvcc();
        rec[0] = 0;
        assert!(matches!(
            parse_video(cat(&[&[0x90], b"hvc1", &rec]), Millis::from_ms(0)),
            Err(TagError::BadHevcConfig(_))
        ));
    }

    #[test]
    fn ertmp_av1_sequence_start_and_coded_frames() {
        let av1c: &[u8] = &[0x81, 0x08, 0x0c, 0x00, 0x0a, 0x0b];
        let c = config(parse_video(
            cat(&[&[0x90], b"av01", av1c]),
            Millis::from_ms(0),
        ));
        assert_eq!(c.codec, Codec::Video(VideoCodec::Av1));
        assert_eq!(&c.record[..], av1c);

        // CodedFrames for av01 has no composition offset: the OBUs start right after the
        // FourCC.
        let obus: &[u8] = &[0x12, 0x00, 0x0a, 0x0b];
        let p = packet(parse_video(
            cat(&[&[0x91], b"av01", obus]),
            Millis::from_ms(33),
        ));
        assert_eq!(p.codec, Codec::Video(VideoCodec::Av1));
        assert_eq!((p.dts.as_ms(), p.cts, p.key), (33, 0, true));
        assert_eq!(&p.data[..], obus);
        let p = packet(parse_video(
            cat(&[&[0xa1], b"av01", obus]),
            Millis::from_ms(66),
        ));
        assert!(!p.key);

        assert!(matches!(
            parse_video(
                cat(&[&[0x90], b"av01", &[0x01, 0, 0, 0]]),
                Millis::from_ms(0)
            ),
            Err(TagError::BadAv1Config(_))
        ));
        assert!(matches!(
            parse_video(cat(&[&[0x90], b"av01", &[0x81, 0, 0]]), Millis::from_ms(0)),
            Err(TagError::BadAv1Config(_))
        ));
    }

    #[test]
    fn ertmp_avc1_validates_avcc_and_reads_cts() {
        let c = config(parse_video(
            cat(&[&[0x90], b"avc1", AVCC]),
            Millis::from_ms(0),
        ));
        assert_eq!(c.codec, Codec::Video(VideoCodec::H264));
        let p = packet(parse_video(
            cat(&[&[0xa1], b"avc1", &[0, 0, 0x21], b"\0\0\0\x01\x41"]),
            Millis::from_ms(0),
        ));
        assert_eq!((p.cts, p.key), (33, false));
        assert!(matches!(
            parse_video(cat(&[&[0x90], b"avc1", &[1, 2, 3]]), Millis::from_ms(0)),
            Err(TagError::BadAvcConfig(AvcError::TooShort { len: 3 }))
        ));
    }

    #[test]
    fn ertmp_skips_and_unsupported() {
        assert_eq!(
            parse_video(
                cat(&[&[0x94], b"hvc1", b"\x02\x00\x09colorInfo"]),
                Millis::from_ms(0)
            ),
            Ok(Parsed::Skip(SkipReason::Metadata))
        );
        assert_eq!(
            parse_video(cat(&[&[0x95], b"av01", b"\x80"]), Millis::from_ms(0)),
            Ok(Parsed::Skip(SkipReason::Mpeg2TsSequenceStart))
        );
        // Command frame (type 5): one VideoCommand byte, no FourCC.
        assert_eq!(
            parse_video(Bytes::from_static(&[0xd1, 0x00]), Millis::from_ms(0)),
            Ok(Parsed::Skip(SkipReason::CommandFrame))
        );
        assert_eq!(
            parse_video(cat(&[&[0x96], b"\x00hvc1"]), Millis::from_ms(0)),
            Err(TagError::UnsupportedPacketType {
                kind: "E-RTMP video",
                packet_type: 6
            })
        );
        let e =
            parse_video(cat(&[&[0x90], b"vp09", &[1, 2, 3, 4]]), Millis::from_ms(0)).unwrap_err();
        assert_eq!(e, TagError::UnsupportedVideoFourCc(FourCc(*b"vp09")));
        assert!(e.is_unsupported());
        assert_eq!(e.to_string(), "unsupported E-RTMP video codec 'vp09'");
        assert_eq!(
            parse_video(cat(&[&[0x98], b"hvc1"]), Millis::from_ms(0)),
            Err(TagError::UnsupportedPacketType {
                kind: "E-RTMP video",
                packet_type: 8
            })
        );
    }

    #[test]
    fn ertmp_mod_ex_prefix_is_followed() {
        // ModEx (7): size UI8+1 = 3 bytes of nanosecond offset, then modExType 0 |
        // packet type CodedFramesX (3), then the FourCC.
        let body = cat(&[&[0x97, 2, 0x00, 0x01, 0xf4, 0x03], b"hvc1", b"\x01\x02"]);
        let p = packet(parse_video(body, Millis::from_ms(0)));
        assert_eq!(&p.data[..], b"\x01\x02");
        // Truncated inside the ModEx data.
        assert!(matches!(
            parse_video(Bytes::from_static(&[0x97, 5, 0, 0]), Millis::from_ms(0)),
            Err(TagError::Truncated { .. })
        ));
        // 16-bit size escape, truncated.
        assert!(matches!(
            parse_video(Bytes::from_static(&[0x97, 0xff, 0x01]), Millis::from_ms(0)),
            Err(TagError::Truncated { .. })
        ));
    }

    #[test]
    fn ertmp_audio_mp4a_and_mp3() {
        // 0x90: SoundFormat 9 (ExHeader) | SequenceStart.
        let body = cat(&[&[0x90], b"mp4a", &[0x11, 0x90]]);
        let c = config(parse_audio(body.clone(), Millis::from_ms(3)));
        assert_eq!(c.codec, Codec::Audio(AudioCodec::Aac));
        assert_eq!(&c.record[..], &[0x11, 0x90]);
        assert_eq!(c.flv, body);

        let p = packet(parse_audio(
            cat(&[&[0x91], b"mp4a", b"\x21\x00"]),
            Millis::from_ms(4),
        ));
        assert_eq!(p.codec, Codec::Audio(AudioCodec::Aac));
        assert_eq!((p.dts.as_ms(), p.cts, p.key), (4, 0, true));
        assert_eq!(&p.data[..], b"\x21\x00");

        let p = packet(parse_audio(
            cat(&[&[0x91], b".mp3", b"\xff\xfb"]),
            Millis::from_ms(5),
        ));
        assert_eq!(p.codec, Codec::Audio(AudioCodec::Mp3));
        assert_eq!(&p.data[..], b"\xff\xfb");

        assert!(matches!(
            parse_audio(cat(&[&[0x90], b"mp4a", &[0x11]]), Millis::from_ms(0)),
            Err(TagError::BadAudioSpecificConfig(_))
        ));
        assert_eq!(
            parse_audio(cat(&[&[0x92], b"mp4a"]), Millis::from_ms(0)),
            Ok(Parsed::Skip(SkipReason::EndOfSequence))
        );
        assert_eq!(
            parse_audio(cat(&[&[0x91], b"Opus", b"\x01"]), Millis::from_ms(0)),
            Err(TagError::UnsupportedAudioFourCc(FourCc(*b"Opus")))
        );
        assert_eq!(
            parse_audio(cat(&[&[0x95], b"mp4a"]), Millis::from_ms(0)),
            Err(TagError::UnsupportedPacketType {
                kind: "E-RTMP audio",
                packet_type: 5
            })
        );
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        assert_eq!(
            parse_video(Bytes::new(), Millis::from_ms(0)),
            Err(TagError::Truncated {
                kind: "video tag",
                len: 0,
                need: 1
            })
        );
        assert_eq!(
            parse_audio(Bytes::new(), Millis::from_ms(0)),
            Err(TagError::Truncated {
                kind: "audio tag",
                len: 0,
                need: 1
            })
        );
        // 1-byte video (M1).
        assert_eq!(
            parse_video(Bytes::from_static(&[0x17]), Millis::from_ms(0)),
            Err(TagError::Truncated {
                kind: "AVC video tag header",
                len: 1,
                need: 5
            })
        );
        // 1-byte AAC.
        assert_eq!(
            parse_audio(Bytes::from_static(&[0xaf]), Millis::from_ms(0)),
            Err(TagError::Truncated {
                kind: "AAC audio tag header",
                len: 1,
                need: 2
            })
        );
        // AVC NALU with 4 bytes: composition time cut short.
        assert_eq!(
            parse_video(Bytes::from_static(&[0x27, 1, 0, 0]), Millis::from_ms(0)),
            Err(TagError::Truncated {
                kind: "AVC video tag header",
                len: 4,
                need: 5
            })
        );
        // AVC config whose SPS length points past the end (M2).
        let bad = cat(&[
            &[0x17, 0, 0, 0, 0],
            &[1, 0x64, 0, 0x1f, 0xff, 0xe1, 0x10, 0x00, 0x67],
        ]);
        assert!(matches!(
            parse_video(bad, Millis::from_ms(0)),
            Err(TagError::BadAvcConfig(AvcError::Truncated {
                offset: 6,
                ..
            }))
        ));
        // Unknown legacy codecs.
        assert_eq!(
            parse_video(Bytes::from_static(&[0x12, 0, 0]), Millis::from_ms(0)),
            Err(TagError::UnsupportedVideo(2))
        );
        assert_eq!(
            parse_video(Bytes::from_static(&[0x1c, 0, 0, 0, 0]), Millis::from_ms(0)),
            Err(TagError::UnsupportedVideo(12))
        );
        assert_eq!(
            parse_audio(Bytes::from_static(&[0x0f, 0]), Millis::from_ms(0)),
            Err(TagError::UnsupportedAudio(0))
        );
        assert_eq!(
            parse_audio(Bytes::from_static(&[0xbf, 0]), Millis::from_ms(0)),
            Err(TagError::UnsupportedAudio(11))
        );
        // E-RTMP with a truncated FourCC.
        assert_eq!(
            parse_video(Bytes::from_static(&[0x91, b'h', b'v']), Millis::from_ms(0)),
            Err(TagError::Truncated {
                kind: "E-RTMP video FourCC",
                len: 3,
                need: 5
            })
        );
        assert_eq!(
            parse_audio(Bytes::from_static(&[0x91, b'm']), Millis::from_ms(0)),
            Err(TagError::Truncated {
                kind: "E-RTMP audio FourCC",
                len: 2,
                need: 5
            })
        );
        // E-RTMP CodedFrames with the composition time cut short.
        assert_eq!(
            parse_video(cat(&[&[0x91], b"hvc1", &[0, 0]]), Millis::from_ms(0)),
            Err(TagError::Truncated {
                kind: "E-RTMP video composition time",
                len: 7,
                need: 8
            })
        );
    }

    #[test]
    fn every_prefix_of_valid_tags_is_handled() {
        let bodies = [
            cat(&[&[0x17, 0, 0, 0, 0], AVCC]),
            cat(&[&[0x27, 1, 0xff, 0xff, 0xdf], b"\0\0\0\x01\x41"]),
            cat(&[&[0x90], b"hvc1", &hvcc()]),
            cat(&[&[0x97, 2, 0, 1, 2, 0x01], b"hvc1", &[0, 0, 1, 9]]),
            cat(&[&[0x90], b"av01", &[0x81, 0, 0, 0]]),
        ];
        for b in &bodies {
            for cut in 0..=b.len() {
                let _ = parse_video(b.slice(..cut), Millis::from_ms(0));
                let _ = parse_audio(b.slice(..cut), Millis::from_ms(0));
            }
        }
        let audio = [
            Bytes::from_static(&[0xaf, 0x00, 0x11, 0x90]),
            cat(&[&[0x90], b"mp4a", &[0x11, 0x90]]),
            cat(&[&[0x97, 0, 0, 0x01], b"mp4a", &[0x11]]),
        ];
        for b in &audio {
            for cut in 0..=b.len() {
                let _ = parse_audio(b.slice(..cut), Millis::from_ms(0));
            }
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Untrusted bodies: whatever arrives, parsing returns (M1, M2).
            #[test]
            fn arbitrary_bodies_never_panic(
                first in any::<u8>(),
                rest in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                let body = Bytes::from([&[first][..], &rest].concat());
                for cut in 0..=body.len() {
                    let _ = parse_video(body.slice(..cut), Millis::from_ms(0));
                    let _ = parse_audio(body.slice(..cut), Millis::from_ms(0));
                }
            }

            /// Every SI24 composition time reads back with its sign (M4), for legacy AVC
            /// and E-RTMP hvc1 alike.
            #[test]
            fn composition_time_round_trips(
                cts in -(1i32 << 23)..(1i32 << 23),
                dts in any::<i64>(),
                payload in prop::collection::vec(any::<u8>(), 1..32),
            ) {
                let si24 = &cts.to_be_bytes()[1..];
                let legacy = Bytes::from([&[0x27u8, 1][..], si24, &payload].concat());
                let ex = Bytes::from([&[0xa1u8][..], b"hvc1", si24, &payload].concat());
                for body in [legacy, ex] {
                    let p = packet(parse_video(body, Millis::from_ms(dts)));
                    prop_assert_eq!(p.cts, cts);
                    prop_assert_eq!(p.dts.as_ms(), dts);
                    prop_assert_eq!(&p.data[..], &payload[..]);
                }
            }
        }
    }
}

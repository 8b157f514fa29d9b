//! Codec configuration records (sequence headers) of arbitrary bytes. The first byte
//! picks the parser family, the rest is the record:
//!
//! * `0` AVCDecoderConfigurationRecord (avcC): `media::avc::AvcConfig::parse`;
//! * `1` AAC AudioSpecificConfig: `media::aac::AudioSpecificConfig::parse` and
//!   `aac::AdtsParams::from_asc` (+ an ADTS header from it);
//! * `2` HEVCDecoderConfigurationRecord (hvcC);
//! * `3` AV1CodecConfigurationRecord (av1C);
//! * `4` an MP3 frame, which stands in for the missing MP3 config record: the fMP4
//!   muxer reads the sample rate and channels from its MPEG audio header.
//!
//! Each record also goes the way a stream's record goes: wrapped in a legacy FLV and/or
//! an Enhanced RTMP sequence-header tag through `flv::parse_audio`/`parse_video` (their
//! hvcC/av1C checks live there), then as a `TrackConfig` into the two muxers that parse
//! it again: `mpegts::TsMuxer::new` (avcC, hvcC arrays, ASC → ADTS) and
//! `fmp4::Fmp4Muxer::new` (avcC + SPS size, ASC, init segment). The muxers get the
//! record even when the FLV check refused it, so their own bounds checks are exercised.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use liverec_aac::AdtsParams;
use liverec_flv::{parse_audio, parse_video, Parsed};
use liverec_fmp4::Fmp4Muxer;
use liverec_media::aac::AudioSpecificConfig;
use liverec_media::avc::AvcConfig;
use liverec_media::{AudioCodec, Codec, MediaEvent, Millis, TrackConfig, VideoCodec};
use liverec_mpegts::TsMuxer;

fn tag(prefix: &[u8], record: &[u8]) -> Bytes {
    let mut v = prefix.to_vec();
    v.extend_from_slice(record);
    Bytes::from(v)
}

/// A sequence-header tag through the FLV parser: an accepted one is a config whose record
/// is exactly the input record.
fn flv(parsed: Result<Parsed, liverec_flv::TagError>, record: &[u8]) -> bool {
    match parsed {
        Ok(Parsed::Event(MediaEvent::Config(c))) => {
            assert_eq!(&c.record[..], record, "record changed by the FLV parser");
            true
        }
        Ok(other) => panic!("sequence header parsed as {other:?}"),
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}

fn muxers(codec: Codec, record: &Bytes, flv: Bytes) {
    let cfg = TrackConfig {
        codec,
        record: record.clone(),
        flv,
        dts: Millis::from_ms(0),
    };
    let (video, audio) = match codec {
        Codec::Video(_) => (Some(&cfg), None),
        Codec::Audio(_) => (None, Some(&cfg)),
    };
    if let Ok(mut ts) = TsMuxer::new(video, audio) {
        let mut out = Vec::new();
        ts.segment_header(&mut out);
    }
    if let Ok(mut mp4) = Fmp4Muxer::new(video, audio, Millis::from_ms(0)) {
        assert!(!mp4.init_segment().is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let record = Bytes::copy_from_slice(rest);
    let dts = Millis::from_ms(0);
    match which % 5 {
        0 => {
            if let Ok(c) = AvcConfig::parse(&record) {
                assert!(!c.sps.is_empty());
                assert!((1..=4).contains(&c.nal_length_size));
            }
            // Legacy: keyframe + AVC, AVCPacketType 0, CTS 0; E-RTMP: SequenceStart avc1.
            let legacy = tag(&[0x17, 0, 0, 0, 0], rest);
            let ok = flv(parse_video(legacy.clone(), dts), rest);
            let ex = tag(b"\x90avc1", rest);
            assert_eq!(ok, flv(parse_video(ex, dts), rest));
            muxers(Codec::Video(VideoCodec::H264), &record, legacy);
        }
        1 => {
            let asc = AudioSpecificConfig::parse(rest);
            if let Ok(p) = AdtsParams::from_asc(rest) {
                assert!(asc.is_ok());
                let _ = p.header(0);
                let _ = p.header(usize::from(which) * 64);
            }
            // Legacy: AAC 44 kHz 16-bit stereo, AACPacketType 0; E-RTMP: SequenceStart mp4a.
            let legacy = tag(&[0xaf, 0], rest);
            let ok = flv(parse_audio(legacy.clone(), dts), rest);
            assert_eq!(ok, asc.is_ok());
            let ex = tag(b"\x90mp4a", rest);
            assert_eq!(ok, flv(parse_audio(ex, dts), rest));
            muxers(Codec::Audio(AudioCodec::Aac), &record, legacy);
        }
        2 => {
            let ex = tag(b"\x90hvc1", rest);
            flv(parse_video(ex.clone(), dts), rest);
            muxers(Codec::Video(VideoCodec::Hevc), &record, ex);
        }
        3 => {
            let ex = tag(b"\x90av01", rest);
            flv(parse_video(ex.clone(), dts), rest);
            muxers(Codec::Video(VideoCodec::Av1), &record, ex);
        }
        _ => {
            // Legacy MP3 44 kHz 16-bit stereo: a frame, never a config, even when empty.
            let legacy = tag(&[0x2f], rest);
            if let Ok(Parsed::Event(MediaEvent::Config(_))) = parse_audio(legacy.clone(), dts) {
                panic!("MP3 frame parsed as a config");
            }
            muxers(Codec::Audio(AudioCodec::Mp3), &record, legacy);
        }
    }
});

//! Where files begin and end, shared by every format so that formats with equal
//! intervals cut on the same keyframe (R-SG-4).

use media::{Millis, Packet, TrackKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutPolicy {
    /// Target file length on stream time (R-SG-1).
    pub interval_ms: Millis,
    /// Cut even without a keyframe once a file is this long (R-SG-2), so an encoder that
    /// never sends a keyframe (or one whose keyframes we cannot see) cannot make a file
    /// grow forever (reliability.md M5: SRS DVR on HEVC).
    pub hard_cap_ms: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutDecision {
    /// Keep writing into the current file.
    Continue,
    /// Close the current file; this packet starts the next one.
    Cut { hard: bool },
}

impl CutPolicy {
    /// Whether `p` may start a file: a video keyframe, or any audio frame of a stream
    /// that has no video.
    pub fn is_start_point(p: &Packet, has_video: bool) -> bool {
        match p.kind() {
            TrackKind::Video => p.key,
            TrackKind::Audio => !has_video,
        }
    }

    /// Decision for packet `p` in a file that started at `file_start` (stream DTS).
    /// Measured on the stream's timestamps, never the wall clock (R-SG-1).
    pub fn decide(&self, file_start: Millis, p: &Packet, has_video: bool) -> CutDecision {
        let elapsed = p.dts.saturating_sub(file_start);
        if elapsed >= self.interval_ms && Self::is_start_point(p, has_video) {
            CutDecision::Cut { hard: false }
        } else if elapsed >= self.hard_cap_ms {
            CutDecision::Cut { hard: true }
        } else {
            CutDecision::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use media::{AudioCodec, Codec, VideoCodec};

    fn v(dts: i64, key: bool) -> Packet {
        Packet {
            codec: Codec::Video(VideoCodec::H264),
            dts: Millis::from_ms(dts),
            cts: 0,
            key,
            flv: Bytes::new(),
            data: Bytes::new(),
        }
    }

    fn a(dts: i64) -> Packet {
        Packet {
            codec: Codec::Audio(AudioCodec::Aac),
            dts: Millis::from_ms(dts),
            cts: 0,
            key: true,
            flv: Bytes::new(),
            data: Bytes::new(),
        }
    }

    const P: CutPolicy = CutPolicy {
        interval_ms: Millis::from_ms(10_000),
        hard_cap_ms: Millis::from_ms(20_000),
    };

    #[test]
    fn cuts_at_first_keyframe_at_or_after_interval() {
        assert_eq!(
            P.decide(Millis::from_ms(0), &v(9_999, true), true),
            CutDecision::Continue
        );
        assert_eq!(
            P.decide(Millis::from_ms(0), &v(10_000, false), true),
            CutDecision::Continue
        );
        assert_eq!(
            P.decide(Millis::from_ms(0), &v(10_000, true), true),
            CutDecision::Cut { hard: false }
        );
        // Audio never cuts a stream that has video, even after the interval.
        assert_eq!(
            P.decide(Millis::from_ms(0), &a(15_000), true),
            CutDecision::Continue
        );
    }

    #[test]
    fn audio_only_cuts_on_audio() {
        assert_eq!(
            P.decide(Millis::from_ms(100), &a(10_099), false),
            CutDecision::Continue
        );
        assert_eq!(
            P.decide(Millis::from_ms(100), &a(10_100), false),
            CutDecision::Cut { hard: false }
        );
    }

    #[test]
    fn hard_cap_cuts_without_keyframe() {
        assert_eq!(
            P.decide(Millis::from_ms(0), &v(19_999, false), true),
            CutDecision::Continue
        );
        assert_eq!(
            P.decide(Millis::from_ms(0), &v(20_000, false), true),
            CutDecision::Cut { hard: true }
        );
        assert_eq!(
            P.decide(Millis::from_ms(0), &a(20_000), true),
            CutDecision::Cut { hard: true }
        );
    }

    #[test]
    fn time_going_backwards_never_cuts_or_panics() {
        assert_eq!(
            P.decide(Millis::from_ms(i64::MAX), &v(i64::MIN, true), true),
            CutDecision::Continue
        );
    }
}

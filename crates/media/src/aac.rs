//! AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1), the part containers need.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AacError {
    #[error("AudioSpecificConfig is {len} bytes, needs at least 2")]
    TooShort { len: usize },
    #[error("AudioSpecificConfig has audio object type 0 (null)")]
    NullObjectType,
    #[error("AudioSpecificConfig has reserved sampling frequency index {index}")]
    BadFrequencyIndex { index: u8 },
    #[error("AudioSpecificConfig escape (explicit frequency) is truncated")]
    TruncatedFrequency,
}

const FREQUENCIES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// The sampling frequency of a standard `samplingFrequencyIndex` (0..=12; 13 and 14 are
/// reserved, 15 means explicit). ADTS headers carry the same index.
pub fn sampling_frequency(index: u8) -> Option<u32> {
    FREQUENCIES.get(usize::from(index)).copied()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSpecificConfig {
    pub object_type: u8,
    /// Index into the standard table, or 15 with an explicit `sample_rate`.
    pub frequency_index: u8,
    pub sample_rate: u32,
    pub channel_config: u8,
}

impl AudioSpecificConfig {
    pub fn parse(b: &[u8]) -> Result<Self, AacError> {
        if b.len() < 2 {
            return Err(AacError::TooShort { len: b.len() });
        }
        let mut r = Bits { b, pos: 0 };
        let mut object_type = r.take(5).ok_or(AacError::TooShort { len: b.len() })? as u8;
        if object_type == 31 {
            object_type = 32 + r.take(6).ok_or(AacError::TooShort { len: b.len() })? as u8;
        }
        if object_type == 0 {
            return Err(AacError::NullObjectType);
        }
        let frequency_index = r.take(4).ok_or(AacError::TooShort { len: b.len() })? as u8;
        let sample_rate = match frequency_index {
            15 => r.take(24).ok_or(AacError::TruncatedFrequency)?,
            i if (i as usize) < FREQUENCIES.len() => FREQUENCIES[i as usize],
            index => return Err(AacError::BadFrequencyIndex { index }),
        };
        let channel_config = r.take(4).ok_or(AacError::TooShort { len: b.len() })? as u8;
        Ok(Self {
            object_type,
            frequency_index,
            sample_rate,
            channel_config,
        })
    }
}

struct Bits<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn take(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.b.get(self.pos / 8)?;
            let bit = (byte >> (7 - (self.pos % 8))) & 1;
            v = (v << 1) | u32::from(bit);
            self.pos += 1;
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lc_48k_stereo() {
        // 0x11 0x90: AOT 2 (LC), index 3 (48 kHz), 2 channels — what ffmpeg's aac emits.
        let c = AudioSpecificConfig::parse(&[0x11, 0x90]).unwrap();
        assert_eq!(
            c,
            AudioSpecificConfig {
                object_type: 2,
                frequency_index: 3,
                sample_rate: 48000,
                channel_config: 2
            }
        );
    }

    #[test]
    fn he_aac_with_sbr_extension_keeps_base() {
        // 5-byte ASC from the crate evaluation clip: 11 88 56 e5 00 → LC 48 kHz, 1 ch.
        let c = AudioSpecificConfig::parse(&[0x11, 0x88, 0x56, 0xe5, 0x00]).unwrap();
        assert_eq!(c.object_type, 2);
        assert_eq!(c.sample_rate, 48000);
        assert_eq!(c.channel_config, 1);
    }

    #[test]
    fn frequency_table() {
        assert_eq!(sampling_frequency(3), Some(48000));
        assert_eq!(sampling_frequency(12), Some(7350));
        assert_eq!(sampling_frequency(13), None);
        assert_eq!(sampling_frequency(255), None);
    }

    #[test]
    fn malformed() {
        assert_eq!(
            AudioSpecificConfig::parse(&[0x11]),
            Err(AacError::TooShort { len: 1 })
        );
        assert_eq!(
            AudioSpecificConfig::parse(&[0x00, 0x00]),
            Err(AacError::NullObjectType)
        );
        // index 13 is reserved
        assert_eq!(
            AudioSpecificConfig::parse(&[0x16, 0x90]),
            Err(AacError::BadFrequencyIndex { index: 13 })
        );
        // explicit frequency, truncated
        assert_eq!(
            AudioSpecificConfig::parse(&[0x17, 0x80]),
            Err(AacError::TruncatedFrequency)
        );
    }
}

//! The four-byte MPEG audio frame header: enough to know a frame's sample rate, channel
//! count and how many samples it holds (ISO/IEC 11172-3 2.4.1.3, 13818-3).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub sample_rate: u32,
    pub channels: u16,
    pub samples: u32,
}

pub(crate) fn parse(b: &[u8]) -> Option<FrameHeader> {
    let h = u32::from_be_bytes(b.get(..4)?.try_into().ok()?);
    if h >> 21 != 0x7FF {
        return None;
    }
    // version: 0 = MPEG-2.5, 2 = MPEG-2, 3 = MPEG-1 (1 reserved)
    let version = (h >> 19) & 3;
    // layer: 1 = III, 2 = II, 3 = I (0 reserved)
    let layer = (h >> 17) & 3;
    let rate_index = ((h >> 10) & 3) as usize;
    let base = [44100u32, 48000, 32000].get(rate_index).copied()?;
    let sample_rate = match version {
        3 => base,
        2 => base / 2,
        0 => base / 4,
        _ => return None,
    };
    let samples = match (layer, version) {
        (3, _) => 384,
        (2, _) => 1152,
        (1, 3) => 1152,
        // MPEG-2/2.5 Layer III frames hold half as many samples.
        (1, _) => 576,
        _ => return None,
    };
    let channels = if (h >> 6) & 3 == 3 { 1 } else { 2 };
    Some(FrameHeader {
        sample_rate,
        channels,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpeg1_layer3_44k_stereo() {
        assert_eq!(
            parse(&[0xFF, 0xFB, 0x90, 0x00]),
            Some(FrameHeader {
                sample_rate: 44100,
                channels: 2,
                samples: 1152
            })
        );
    }

    #[test]
    fn mpeg2_layer3_22k_mono() {
        // 0xF3: MPEG-2, layer III, no CRC; 0xC0 in byte 3: mono.
        assert_eq!(
            parse(&[0xFF, 0xF3, 0x90, 0xC0]),
            Some(FrameHeader {
                sample_rate: 22050,
                channels: 1,
                samples: 576
            })
        );
    }

    #[test]
    fn garbage() {
        assert_eq!(parse(&[0x00, 0x01, 0x02, 0x03]), None);
        assert_eq!(parse(&[0xFF]), None);
    }
}

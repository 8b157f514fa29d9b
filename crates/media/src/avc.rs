//! AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1): validated before use, because
//! a malformed record (an SPS length past the end, no SPS) must be refused, not trusted
//! (reliability.md M2).

use bytes::Bytes;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AvcError {
    #[error("avcC is {len} bytes, shorter than its 7-byte minimum")]
    TooShort { len: usize },
    #[error("avcC configurationVersion is {0}, expected 1")]
    BadVersion(u8),
    #[error("avcC declares no SPS")]
    NoSps,
    #[error("avcC parameter set at byte {offset} declares {len} bytes, past the end ({total})")]
    Truncated {
        offset: usize,
        len: usize,
        total: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    pub profile: u8,
    pub compatibility: u8,
    pub level: u8,
    /// Size in bytes of the NAL unit length prefix (1, 2 or 4).
    pub nal_length_size: u8,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
}

impl AvcConfig {
    pub fn parse(record: &Bytes) -> Result<Self, AvcError> {
        let b = record.as_ref();
        if b.len() < 7 {
            return Err(AvcError::TooShort { len: b.len() });
        }
        if b[0] != 1 {
            return Err(AvcError::BadVersion(b[0]));
        }
        let nal_length_size = (b[4] & 0x03) + 1;
        let mut pos = 5;
        let num_sps = usize::from(b[pos] & 0x1f);
        pos += 1;
        if num_sps == 0 {
            return Err(AvcError::NoSps);
        }
        let sps = read_sets(record, &mut pos, num_sps)?;
        let num_pps = match b.get(pos) {
            Some(n) => usize::from(*n),
            None => {
                return Err(AvcError::Truncated {
                    offset: pos,
                    len: 1,
                    total: b.len(),
                })
            }
        };
        pos += 1;
        let pps = read_sets(record, &mut pos, num_pps)?;
        Ok(Self {
            profile: b[1],
            compatibility: b[2],
            level: b[3],
            nal_length_size,
            sps,
            pps,
        })
    }
}

fn read_sets(record: &Bytes, pos: &mut usize, count: usize) -> Result<Vec<Bytes>, AvcError> {
    let total = record.len();
    // `count` is at most 255, so this bounded allocation is safe.
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let offset = *pos;
        let hdr = record.get(offset..offset + 2).ok_or(AvcError::Truncated {
            offset,
            len: 2,
            total,
        })?;
        let len = usize::from(u16::from_be_bytes([hdr[0], hdr[1]]));
        let start = offset + 2;
        if start + len > total {
            return Err(AvcError::Truncated { offset, len, total });
        }
        out.push(record.slice(start..start + len));
        *pos = start + len;
    }
    Ok(out)
}

/// Picture size from an H.264 SPS (ITU-T H.264 7.3.2.1.1): for fMP4's tkhd and sample
/// entry (players that trust the container rather than the bitstream, e.g. some hardware
/// pipelines, need it) and the console's live view. `None`
/// when the SPS uses features this small reader does not follow; the decoder still finds
/// the size in the bitstream.
pub fn sps_size(sps: &[u8]) -> Option<(u16, u16)> {
    // Strip emulation prevention bytes (00 00 03) first.
    let mut rbsp = Vec::with_capacity(sps.len());
    let mut zeros = 0;
    for &b in sps.get(1..)? {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    let mut r = BitReader { b: &rbsp, pos: 0 };
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags + level
    r.ue()?; // sps id
    let mut chroma_format_idc = 1;
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bits(1)?;
        }
        r.ue()?;
        r.ue()?;
        r.bits(1)?;
        if r.bits(1)? == 1 {
            // Scaling matrices: rare in live encoders; skip parsing them.
            return None;
        }
    }
    r.ue()?; // log2_max_frame_num
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bits(1)?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return None;
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bits(1)?;
    let w_mbs = r.ue()? + 1;
    let h_units = r.ue()? + 1;
    let frame_mbs_only = r.bits(1)?;
    if frame_mbs_only == 0 {
        r.bits(1)?;
    }
    r.bits(1)?;
    let (mut cl, mut cr, mut ct, mut cb) = (0, 0, 0, 0);
    if r.bits(1)? == 1 {
        cl = r.ue()?;
        cr = r.ue()?;
        ct = r.ue()?;
        cb = r.ue()?;
    }
    let (sub_w, sub_h) = match chroma_format_idc {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let crop_y = sub_h * (2 - frame_mbs_only);
    let w = (w_mbs * 16).checked_sub((cl + cr) * sub_w)?;
    let h = (h_units * 16 * (2 - frame_mbs_only)).checked_sub((ct + cb) * crop_y)?;
    Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?))
}

struct BitReader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bits(&mut self, n: u32) -> Option<u64> {
        let mut v = 0u64;
        for _ in 0..n {
            let byte = *self.b.get(self.pos / 8)?;
            v = (v << 1) | u64::from((byte >> (7 - (self.pos % 8))) & 1);
            self.pos += 1;
        }
        Some(v)
    }

    fn ue(&mut self) -> Option<u64> {
        let mut zeros = 0;
        while self.bits(1)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u64 << zeros) - 1 + self.bits(zeros)?)
    }

    fn se(&mut self) -> Option<i64> {
        let v = self.ue()? as i64;
        Some(if v % 2 == 1 { (v + 1) / 2 } else { -(v / 2) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Bytes {
        let mut v = vec![
            1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1, 0, 2, 0x68, 0xee,
        ];
        v.extend_from_slice(&[]);
        Bytes::from(v)
    }

    #[test]
    fn parses_sps_pps() {
        let c = AvcConfig::parse(&record()).unwrap();
        assert_eq!(c.profile, 0x64);
        assert_eq!(c.level, 0x1f);
        assert_eq!(c.nal_length_size, 4);
        assert_eq!(c.sps, vec![Bytes::from_static(&[0x67, 0x64, 0, 0x1f])]);
        assert_eq!(c.pps, vec![Bytes::from_static(&[0x68, 0xee])]);
    }

    #[test]
    fn sps_length_past_end_is_refused() {
        let b = Bytes::from_static(&[1, 0x64, 0, 0x1f, 0xff, 0xe1, 0x10, 0x00, 0x67]);
        assert!(matches!(
            AvcConfig::parse(&b),
            Err(AvcError::Truncated { offset: 6, .. })
        ));
    }

    #[test]
    fn zero_sps_and_short_records_are_refused() {
        assert_eq!(
            AvcConfig::parse(&Bytes::from_static(&[1, 0x64, 0, 0x1f, 0xff, 0xe0, 0])),
            Err(AvcError::NoSps)
        );
        assert_eq!(
            AvcConfig::parse(&Bytes::from_static(&[1, 2, 3])),
            Err(AvcError::TooShort { len: 3 })
        );
        let mut r = record().to_vec();
        r.truncate(15); // cut inside the PPS count/length
        assert!(AvcConfig::parse(&Bytes::from(r)).is_err());
    }
}

//! Crash repair of an MPEG-TS segment written by [`TsMuxer`](crate::TsMuxer) (R-FM-2,
//! R-ST-4): keep whole 188-byte packets, and cut before a PES whose declared length is
//! not all there, so the segment ends on a whole frame.
//!
//! A PES declaring length 0 ("unbounded", which ISO 13818-1 allows for video only, and
//! which our muxer writes for frames over 64 KiB) cannot be shown to be incomplete: as
//! the last PES of a file it is kept. Cutting it instead would make a repaired file
//! lose another frame each time it is repaired again.
//!
//! The duration is the span of the kept video PTS (or audio, without video) plus one
//! average frame. PTS is a 33-bit 90 kHz clock that wraps every 26.5 h (reliability.md
//! T4): each PTS is placed at the signed 33-bit modular distance from the one before, so
//! a segment across the wrap has its real length.

use std::collections::HashMap;

use media::repair::{ReadAt, ReadError, Repair, Window};
use thiserror::Error;

use crate::TS_PACKET_SIZE;

const SYNC: u8 = 0x47;
const NULL_PID: u16 = 0x1fff;
const CLOCK_BITS: u32 = 33;
const CLOCK_MASK: u64 = (1 << CLOCK_BITS) - 1;
/// Shortest PES start we look at: the fixed header with a PTS (13818-1 2.4.3.6).
const PES_HEADER_WITH_PTS: usize = 14;

#[derive(Debug, Error)]
pub enum RepairError {
    #[error("not an MPEG-TS file: byte 0 is {0:#04x}, not the sync byte 0x47")]
    NotTs(u8),
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// The PES being read on one PID.
#[derive(Debug, Clone, Copy)]
struct Open {
    /// Bytes the PES declares (6-byte prefix + PES_packet_length); `None` if unbounded.
    need: Option<u64>,
    have: u64,
}

impl Open {
    fn incomplete(&self) -> bool {
        self.need.is_some_and(|n| self.have < n)
    }
}

/// PTS seen on one kind of stream, unwrapped onto a 64-bit line in file order.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    count: u64,
    last_raw: u64,
    last: i64,
    min: i64,
    max: i64,
}

impl Span {
    fn add(&mut self, raw: u64) {
        let t = if self.count == 0 {
            raw as i64
        } else {
            // Modular distance in (-2^32, 2^32]: a small step back (B-frames) stays
            // small, and a step across the wrap is a small step forward.
            let d = raw.wrapping_sub(self.last_raw) & CLOCK_MASK;
            let d = if d > 1 << (CLOCK_BITS - 1) {
                d as i64 - (1 << CLOCK_BITS)
            } else {
                d as i64
            };
            self.last.saturating_add(d)
        };
        if self.count == 0 {
            (self.min, self.max) = (t, t);
        }
        self.count += 1;
        self.last_raw = raw;
        self.last = t;
        self.min = self.min.min(t);
        self.max = self.max.max(t);
    }

    /// Span plus one average frame, in ms.
    fn duration_ms(&self) -> u64 {
        if self.count < 2 {
            return 0;
        }
        // max >= min, and both within count * 2^32 of the first: no overflow.
        let span = self.max.abs_diff(self.min);
        let frame = span / (self.count - 1);
        let ms = media::Millis::from_ticks(i128::from(span.saturating_add(frame)), media::TS_HZ);
        u64::try_from(ms.as_ms()).unwrap_or(0)
    }
}

/// What the kept part holds, taken at each point where the file may be cut.
#[derive(Debug, Clone, Copy, Default)]
struct Kept {
    video: Span,
    other: Span,
}

/// Scans an unfinished TS segment: packets up to the first one that is missing or lacks
/// its sync byte, cut back to the last packet boundary where no PES of declared length
/// is still short of bytes.
pub fn repair<R: ReadAt + ?Sized>(file: &R) -> Result<Repair, RepairError> {
    let mut w = Window::new(file);
    let mut pos = 0u64;
    let mut open: HashMap<u16, Open> = HashMap::new();
    // PIDs whose PES is short of bytes; while there are any, the file cannot be cut.
    let mut short = 0usize;
    // A PES of declared length ended (a new one started on its PID) short of bytes: no
    // later point is a whole-frame boundary.
    let mut broken = false;
    let (mut stats, mut kept, mut keep) = (Kept::default(), Kept::default(), 0u64);
    while let Some(p) = w.get(pos, TS_PACKET_SIZE)? {
        if p[0] != SYNC {
            if pos == 0 {
                return Err(RepairError::NotTs(p[0]));
            }
            break;
        }
        let pusi = p[1] & 0x40 != 0;
        let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        let afc = (p[3] >> 4) & 3;
        let payload: &[u8] = match afc {
            1 => &p[4..],
            3 => p.get(5 + usize::from(p[4])..).unwrap_or(&[]),
            // No payload (2), or reserved (0): nothing for any PES.
            _ => &[],
        };
        if pid != NULL_PID && !payload.is_empty() {
            if pusi {
                // A new unit starts on this PID: whatever PES was open there ended.
                if let Some(o) = open.remove(&pid) {
                    if o.incomplete() {
                        short -= 1;
                        broken = true;
                    }
                }
                if payload.len() >= PES_HEADER_WITH_PTS && payload[..3] == [0, 0, 1] {
                    let sid = payload[3];
                    let len = u16::from_be_bytes([payload[4], payload[5]]);
                    let o = Open {
                        need: (len != 0).then(|| 6 + u64::from(len)),
                        have: payload.len() as u64,
                    };
                    if o.incomplete() {
                        short += 1;
                    }
                    open.insert(pid, o);
                    if payload[7] & 0x80 != 0 {
                        let pts = read_pts(&payload[9..14]);
                        if (0xe0..=0xef).contains(&sid) {
                            stats.video.add(pts);
                        } else {
                            stats.other.add(pts);
                        }
                    }
                }
            } else if let Some(o) = open.get_mut(&pid) {
                let was = o.incomplete();
                o.have = o.have.saturating_add(payload.len() as u64);
                if was && !o.incomplete() {
                    short -= 1;
                }
            }
        }
        pos += TS_PACKET_SIZE as u64;
        if short == 0 && !broken {
            keep = pos;
            kept = stats;
        }
    }
    let duration_ms = if kept.video.count > 0 {
        kept.video.duration_ms()
    } else {
        kept.other.duration_ms()
    };
    Ok(Repair {
        keep_len: keep,
        duration_ms,
        patches: Vec::new(),
    })
}

/// The 33-bit PTS of a PES header (13818-1 2.4.3.7: 3 + 15 + 15 bits around markers).
fn read_pts(b: &[u8]) -> u64 {
    (u64::from(b[0] >> 1 & 7) << 30)
        | (u64::from(b[1]) << 22)
        | (u64::from(b[2] >> 1) << 15)
        | (u64::from(b[3]) << 7)
        | u64::from(b[4] >> 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_unwrap_the_33_bit_clock() {
        let mut s = Span::default();
        let wrap = 1u64 << 33;
        // 25 fps across the wrap, with a B-frame style step back.
        for raw in [wrap - 7200, wrap - 3600, wrap - 5400, 0, 3600, 7200] {
            s.add(raw);
        }
        assert_eq!((s.min, s.max), ((wrap - 7200) as i64, (wrap + 7200) as i64));
        // 14400 ticks span + 2880 per frame.
        assert_eq!(s.duration_ms(), (14400 + 2880) / 90);
        // One PTS: no duration.
        let mut one = Span::default();
        one.add(5);
        assert_eq!(one.duration_ms(), 0);
    }
}

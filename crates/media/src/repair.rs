//! What the container crates share for crash repair (R-ST-4, DESIGN "crash safety by
//! construction"): a file left open by a killed daemon is scanned for its last complete
//! unit, and the scan says what to keep and which bytes to overwrite. The scanners are
//! sans-IO: they read through [`ReadAt`] (a byte slice in tests and fuzzing, the spool
//! file in the daemon) and return a [`Repair`]; the daemon applies it.
//!
//! Spool files of long recordings are hundreds of MB, so scanners read headers through a
//! [`Window`] instead of loading the file.
//!
//! Each scanner (`flv::repair`, `aac::repair`, `fmp4::repair`, `mpegts::repair`) has a
//! seeded "fuzzish" test in its crate's `tests/repair_fuzzish.rs` and a cargo-fuzz target
//! in `crates/<crate>/fuzz` (its own workspace, like `crates/rtmp/fuzz`: run
//! `cargo +nightly fuzz run repair` there). Both check [`check_fixed_point`].

use std::io;

use thiserror::Error;

/// Positioned reads over something of known length (a file, a byte slice).
pub trait ReadAt {
    /// Length in bytes.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads up to `buf.len()` bytes at `off`; returns how many were read (0 at or past
    /// the end). May read fewer than asked before the end, like `pread`.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl ReadAt for [u8] {
    fn len(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Some(src) = usize::try_from(off).ok().and_then(|o| self.get(o..)) else {
            return Ok(0);
        };
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }
}

impl ReadAt for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.as_slice().read_at(off, buf)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn len(&self) -> u64 {
        (**self).len()
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(off, buf)
    }
}

/// A read failed (the scan stops; nothing is changed).
#[derive(Debug, Error)]
#[error("reading {len} bytes at byte {offset}: {source}")]
pub struct ReadError {
    pub offset: u64,
    pub len: usize,
    #[source]
    pub source: io::Error,
}

/// Read-ahead over a [`ReadAt`]: scanners step through many small headers (a 7-byte ADTS
/// header every few hundred bytes), and one read per chunk instead of one per header
/// keeps a scan of a long recording cheap.
pub struct Window<'a, R: ?Sized> {
    src: &'a R,
    len: u64,
    /// File offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
}

/// Bytes read ahead when the window moves.
const CHUNK: usize = 64 * 1024;

impl<'a, R: ReadAt + ?Sized> Window<'a, R> {
    pub fn new(src: &'a R) -> Self {
        Self {
            len: src.len(),
            src,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// Length of the underlying data, as it was when the window was made.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `n` bytes at `off`, or `None` when the data ends before `off + n`. Nothing is
    /// allocated for a range past the end, so `n` may come from a hostile size field.
    pub fn get(&mut self, off: u64, n: usize) -> Result<Option<&[u8]>, ReadError> {
        let Some(end) = off.checked_add(n as u64).filter(|&e| e <= self.len) else {
            return Ok(None);
        };
        let have_end = self.start + self.buf.len() as u64;
        if off < self.start || end > have_end {
            // In range: end <= len, so the read fits in memory only if the caller bounds
            // `n`; CHUNK more is at most the rest of the data.
            let want = n
                .max(CHUNK)
                .min(usize::try_from(self.len - off).unwrap_or(usize::MAX));
            self.buf.clear();
            self.buf.resize(want, 0);
            let mut filled = 0;
            while filled < want {
                let at = off + filled as u64;
                match self.src.read_at(at, &mut self.buf[filled..]) {
                    Ok(0) => break,
                    Ok(k) => filled += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        self.buf.clear();
                        return Err(ReadError {
                            offset: at,
                            len: want - filled,
                            source,
                        });
                    }
                }
            }
            self.buf.truncate(filled);
            self.start = off;
            if filled < n {
                // The data shrank under us: treat it as ending here.
                return Ok(None);
            }
        }
        // off >= start and end <= start + buf.len() here; both fit in usize.
        let from = (off - self.start) as usize;
        Ok(self.buf.get(from..from + n))
    }
}

/// An overwrite of bytes inside the kept part of a file (a duration, a file size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overwrite {
    /// Byte offset from the start of the file.
    pub offset: u64,
    pub bytes: Vec<u8>,
}

impl Overwrite {
    /// One past the last byte written, `None` if that overflows.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.bytes.len() as u64)
    }
}

/// What a scan found: keep the first `keep_len` bytes, then apply `patches`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repair {
    /// Length to truncate to; never more than the file had.
    pub keep_len: u64,
    /// Media duration of what is kept, in milliseconds.
    pub duration_ms: u64,
    /// Overwrites that finalize the kept part as a normal close would; each lies within
    /// `keep_len`.
    pub patches: Vec<Overwrite>,
}

impl Repair {
    /// Whether this repair stays inside a file of `len` bytes (what scanners promise).
    pub fn in_bounds(&self, len: u64) -> bool {
        self.keep_len <= len
            && self
                .patches
                .iter()
                .all(|p| p.end().is_some_and(|e| e <= self.keep_len))
    }

    /// Applies the repair to an in-memory file (tests, fuzzing). Out-of-range parts
    /// (which [`in_bounds`](Repair::in_bounds) rules out) are skipped.
    pub fn apply(&self, file: &mut Vec<u8>) {
        if let Ok(keep) = usize::try_from(self.keep_len) {
            file.truncate(keep);
        }
        for p in &self.patches {
            let dst = usize::try_from(p.offset)
                .ok()
                .and_then(|o| file.get_mut(o..o.checked_add(p.bytes.len())?));
            if let Some(dst) = dst {
                dst.copy_from_slice(&p.bytes);
            }
        }
    }
}

/// The promises every scanner keeps, checked on `data` (for fuzz targets and the
/// seeded "fuzzish" tests of each container crate): the repair stays inside the file,
/// and scanning the repaired file again keeps all of it, finds the same duration and
/// patches nothing new (a fixed point). A scan that refuses the input is fine.
pub fn check_fixed_point<E: std::fmt::Display>(
    data: &[u8],
    scan: impl Fn(&[u8]) -> Result<Repair, E>,
) -> Result<(), String> {
    let Ok(first) = scan(data) else {
        return Ok(());
    };
    if !first.in_bounds(data.len() as u64) {
        return Err(format!(
            "repair {first:?} outside the {}-byte file",
            data.len()
        ));
    }
    let mut fixed = data.to_vec();
    first.apply(&mut fixed);
    let again = scan(&fixed).map_err(|e| format!("the repaired file is refused: {e}"))?;
    if again.keep_len != fixed.len() as u64 || again.duration_ms != first.duration_ms {
        return Err(format!(
            "not a fixed point: {first:?} then, on the {}-byte result, {again:?}",
            fixed.len()
        ));
    }
    let mut twice = fixed.clone();
    again.apply(&mut twice);
    if twice != fixed {
        return Err(format!(
            "patches of the second scan change the file: {again:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads at most 3 bytes per call, like a `pread` that returns short.
    struct Stingy(Vec<u8>);

    impl ReadAt for Stingy {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(3);
            self.0.as_slice().read_at(off, &mut buf[..n])
        }
    }

    #[test]
    fn window_reads_across_chunks_and_stops_at_the_end() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut w = Window::new(&data);
        assert_eq!(w.get(0, 4).unwrap(), Some(&[0u8, 1, 2, 3][..]));
        let at = CHUNK as u64 - 2;
        assert_eq!(
            w.get(at, 4).unwrap(),
            Some(&data[at as usize..at as usize + 4])
        );
        // Backwards, then a range larger than a chunk.
        assert_eq!(w.get(10, 1).unwrap(), Some(&[10u8][..]));
        assert_eq!(w.get(5, 150_000).unwrap().map(<[u8]>::len), Some(150_000));
        assert_eq!(w.get(199_999, 1).unwrap(), Some(&[data[199_999]][..]));
        assert_eq!(w.get(199_999, 2).unwrap(), None);
        assert_eq!(w.get(u64::MAX, 2).unwrap(), None);
        assert_eq!(w.get(0, usize::MAX).unwrap(), None);
        assert_eq!(w.get(200_000, 0).unwrap(), Some(&[][..]));

        let s = Stingy(data.clone());
        let mut w = Window::new(&s);
        assert_eq!(w.get(1000, 10).unwrap(), Some(&data[1000..1010]));
    }

    #[test]
    fn slice_reads_past_the_end_are_empty() {
        let d = [1u8, 2, 3];
        let mut b = [0u8; 4];
        assert_eq!(d[..].read_at(1, &mut b).unwrap(), 2);
        assert_eq!(&b[..2], &[2, 3]);
        assert_eq!(d[..].read_at(3, &mut b).unwrap(), 0);
        assert_eq!(d[..].read_at(u64::MAX, &mut b).unwrap(), 0);
    }

    #[test]
    fn repair_bounds_and_apply() {
        let r = Repair {
            keep_len: 4,
            duration_ms: 0,
            patches: vec![Overwrite {
                offset: 1,
                bytes: vec![9, 9],
            }],
        };
        assert!(r.in_bounds(4) && !r.in_bounds(3));
        let mut f = vec![0u8; 6];
        r.apply(&mut f);
        assert_eq!(f, [0, 9, 9, 0]);
        let bad = Repair {
            keep_len: 2,
            duration_ms: 0,
            patches: vec![Overwrite {
                offset: u64::MAX,
                bytes: vec![1],
            }],
        };
        assert!(!bad.in_bounds(10));
        let mut f = vec![0u8; 6];
        bad.apply(&mut f);
        assert_eq!(f, [0, 0]);
    }

    #[test]
    fn fixed_point_check_catches_a_scanner_that_keeps_cutting() {
        let halves = |d: &[u8]| -> Result<Repair, String> {
            Ok(Repair {
                keep_len: d.len() as u64 / 2,
                ..Repair::default()
            })
        };
        assert!(check_fixed_point(&[1, 2, 3, 4], halves).is_err());
        let whole = |d: &[u8]| -> Result<Repair, String> {
            Ok(Repair {
                keep_len: d.len() as u64,
                ..Repair::default()
            })
        };
        assert_eq!(check_fixed_point(&[1, 2, 3, 4], whole), Ok(()));
        let past_end = |d: &[u8]| -> Result<Repair, String> {
            Ok(Repair {
                keep_len: d.len() as u64 + 1,
                ..Repair::default()
            })
        };
        assert!(check_fixed_point(&[1], past_end).is_err());
    }
}

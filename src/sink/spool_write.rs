//! How a spool file's buffered bytes reach the disk: through the page cache, or around it
//! with `O_DIRECT` (`[spool] direct_io`, issue 17).
//!
//! Why around it: a recorder writes every byte it receives and, storing locally, reads
//! none of it back (the finished file is renamed; only an S3 upload reads the spool). A
//! buffered `write` copies each byte into a page-cache page the kernel must then find,
//! dirty and write back; a direct write hands the device whole aligned blocks from one
//! reused buffer. On the VMs we measure on, `dd` of 1 GiB costs 0.2 s of system time
//! direct against 1.0-2.7 s buffered; at 100 hd streams with all four formats the
//! daemon's CPU fell by 32 % (the machine's by 21 %), as fast as possible by 17 %, FLV +
//! HLS by 11 %; at 50 streams of FLV + HLS the daemon pays 25 % more for the same machine
//! total, doing the writeback the kernel's flusher threads did (benches/README.md, issue
//! 17 step 6).
//!
//! Direct writes must start at, and be a multiple of, the device's block size, from
//! memory aligned the same way; we use 4 KiB, which covers 512-byte and 4 KiB devices.
//! Each flush therefore writes its whole blocks directly and the last partial block
//! (the tail, < 4 KiB) through the page cache, so a `kill -9` still loses at most one
//! flush interval (R-ST-4); the next flush rewrites that block whole from memory (the
//! kernel writes back and drops the cached page first, so the two paths never disagree).
//! A filesystem without `O_DIRECT` (some FUSE and network filesystems) or a device that
//! wants a larger alignment gets buffered writes, said once in the log.
//!
//! Nothing here is a crate's job: `std` opens with `custom_flags` and writes at offsets;
//! the aligned staging buffer is an over-allocated `Vec` sliced at its aligned offset.

use std::cell::RefCell;
use std::fs::File;
use std::io::{IoSlice, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tracing::warn;

/// Offset and length granularity of a direct write.
pub const ALIGN: usize = 4096;
/// Bytes staged per direct write: a size-driven flush in one call.
const STAGE: usize = super::flush::FLUSH_BYTES;

thread_local! {
    /// The spool thread's staging buffer (`STAGE` + `ALIGN` bytes, allocated on the
    /// thread's first direct write and reused, so it stays in the cache).
    static STAGING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Whether the "direct I/O unavailable" warning was logged (once per process).
static WARNED: AtomicBool = AtomicBool::new(false);

/// The write side of an open spool file.
pub struct SpoolWriter {
    /// Buffered handle: every write when not direct, the tail block when direct; patches
    /// and crash-repair cut-backs use it too.
    file: File,
    direct: Option<Direct>,
}

struct Direct {
    /// The `O_DIRECT` handle; `None` once the device refused a write's alignment.
    fd: Option<File>,
    path: std::path::PathBuf,
    /// Where the tail starts: everything before it was written directly, a multiple of
    /// [`ALIGN`].
    at: u64,
    /// The bytes after `at` (< [`ALIGN`]), also written to the file through `file`.
    tail: Vec<u8>,
}

impl SpoolWriter {
    /// A writer for the new, empty spool file `file` at `path`; direct when `direct` is
    /// asked for and the filesystem allows it.
    pub fn new(file: File, path: &Path, direct: bool) -> Self {
        let opened = direct.then(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
        });
        let direct = match opened {
            Some(Ok(fd)) => Some(Direct {
                fd: Some(fd),
                path: path.to_path_buf(),
                at: 0,
                tail: Vec::with_capacity(ALIGN),
            }),
            Some(Err(e)) => {
                warn_once(path, &e);
                None
            }
            None => None,
        };
        Self { file, direct }
    }

    /// Whether writes bypass the page cache.
    #[cfg(test)]
    pub fn is_direct(&self) -> bool {
        self.direct.as_ref().is_some_and(|d| d.fd.is_some())
    }

    /// The buffered handle, for patches once every byte has been written.
    pub fn into_file(self) -> File {
        self.file
    }

    /// Writes `bufs` after what was written before. On an error part of them may be in
    /// the file (the caller stops writing and cuts the file back).
    pub fn write_all(&mut self, bufs: &[Bytes]) -> std::io::Result<()> {
        match &mut self.direct {
            None => write_all_vectored(&mut self.file, bufs),
            Some(d) => STAGING.with_borrow_mut(|stage| d.write(&self.file, stage, bufs)),
        }
    }
}

impl Direct {
    fn write(&mut self, file: &File, stage: &mut Vec<u8>, bufs: &[Bytes]) -> std::io::Result<()> {
        if stage.len() < STAGE + ALIGN {
            *stage = vec![0; STAGE + ALIGN];
        }
        let off = stage.as_ptr().align_offset(ALIGN);
        let buf = &mut stage[off..off + STAGE];
        let mut n = self.tail.len();
        buf[..n].copy_from_slice(&self.tail);
        for b in bufs {
            let mut s = &b[..];
            while !s.is_empty() {
                let take = (STAGE - n).min(s.len());
                buf[n..n + take].copy_from_slice(&s[..take]);
                n += take;
                s = &s[take..];
                if n == STAGE {
                    self.put(file, &buf[..STAGE])?;
                    n = 0;
                }
            }
        }
        let whole = n / ALIGN * ALIGN;
        if whole > 0 {
            self.put(file, &buf[..whole])?;
        }
        self.tail.clear();
        self.tail.extend_from_slice(&buf[whole..n]);
        if !self.tail.is_empty() {
            // The tail goes to the kernel now so a crash loses at most one flush
            // interval; a direct write of its block replaces it at the next flush.
            file.write_all_at(&self.tail, self.at)?;
        }
        Ok(())
    }

    /// Writes `block` (whole blocks) at `self.at`.
    fn put(&mut self, file: &File, block: &[u8]) -> std::io::Result<()> {
        match &self.fd {
            Some(fd) => match fd.write_all_at(block, self.at) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // The device wants a larger alignment than ours: this block and the
                    // rest of the file go through the page cache (rewriting the whole
                    // block at the same offset is right whatever part of it got in).
                    warn_once(&self.path, &e);
                    self.fd = None;
                    file.write_all_at(block, self.at)?;
                }
                r => r?,
            },
            None => file.write_all_at(block, self.at)?,
        }
        self.at += block.len() as u64;
        Ok(())
    }
}

fn warn_once(path: &Path, e: &std::io::Error) {
    if !WARNED.swap(true, Ordering::Relaxed) {
        warn!(
            path = %path.display(),
            "spool: direct I/O unavailable ({e}); spool files are written through the page cache ([spool] direct_io)"
        );
    }
}

fn write_all_vectored(f: &mut File, bufs: &[Bytes]) -> std::io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < bufs.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(&bufs[idx][off..])
            .chain(bufs[idx + 1..].iter().map(|b| &b[..]))
            .take(1024)
            .map(IoSlice::new)
            .collect();
        let mut n = f.write_vectored(&slices)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while idx < bufs.len() && n > 0 {
            let left = bufs[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        // The system temp dir, not /dev/shm: the page-cache test needs a disk behind it.
        let dir =
            std::env::temp_dir().join(format!("liverec-spool-write-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    fn create(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(path)
            .expect("create spool file")
    }

    /// Deterministic bytes that differ at every offset of a 251-byte cycle, so a block
    /// written at the wrong offset or twice shows.
    fn media(from: usize, len: usize) -> Bytes {
        (from..from + len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn every_flush_leaves_the_file_equal_to_all_bytes_written_whatever_the_sizes() {
        let dir = scratch("sizes");
        let path = dir.join("a.flv.part");
        let mut w = SpoolWriter::new(create(&path), &path, true);
        assert!(
            w.is_direct(),
            "{} does not take O_DIRECT: run the tests with TMPDIR on a disk filesystem",
            dir.display()
        );
        // Tails that end inside a block, on a block edge, batches of many small
        // buffers, one buffer bigger than the staging buffer, and a flush smaller than
        // the tail left before it.
        let batches: &[&[usize]] = &[
            &[13],
            &[4083],
            &[4096],
            &[1, 2, 3, 5000, 70_000],
            &[STAGE + 777],
            &[3 * STAGE],
            &[188; 700],
            &[1],
            &[ALIGN - 1, ALIGN + 1, 9_999],
        ];
        let mut total = 0;
        for (i, sizes) in batches.iter().enumerate() {
            let bufs: Vec<Bytes> = sizes
                .iter()
                .map(|&n| {
                    let b = media(total, n);
                    total += n;
                    b
                })
                .collect();
            w.write_all(&bufs).expect("write");
            // What a kill -9 right after this flush would leave.
            let on_disk = std::fs::read(&path).expect("read back");
            assert_eq!(on_disk.len(), total, "length after batch {i}");
            assert!(on_disk == media(0, total), "content after batch {i}");
        }
        assert!(w.is_direct(), "no fallback on a disk filesystem");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Bytes of `path` the page cache holds, as util-linux's `fincore` counts them.
    pub(in crate::sink) fn resident_bytes(path: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(path)
            .output()
            .expect("fincore (util-linux) is needed: scripts/test.sh installs it");
        assert!(out.status.success(), "fincore: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("fincore prints a byte count")
    }

    #[test]
    fn direct_writes_leave_no_more_than_the_tail_in_the_page_cache() {
        let dir = scratch("cache");
        let written = 4 * STAGE + 1234;
        let mut resident = Vec::new();
        for direct in [true, false] {
            let path = dir.join(format!("{direct}.ts.part"));
            let mut w = SpoolWriter::new(create(&path), &path, direct);
            assert_eq!(w.is_direct(), direct);
            for part in 0..8 {
                let n = written / 8 + if part == 7 { written % 8 } else { 0 };
                w.write_all(&[media(part * (written / 8), n)])
                    .expect("write");
            }
            resident.push(resident_bytes(&path));
        }
        // The buffered file is cached whole; the direct one holds at most its tail's
        // page (the kernel drops a page a direct write replaces).
        assert!(resident[1] >= written as u64, "buffered: {resident:?}");
        assert!(resident[0] <= ALIGN as u64, "direct: {resident:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_that_cannot_be_opened_direct_is_written_through_the_page_cache() {
        let dir = scratch("fallback");
        let (path, moved) = (dir.join("b.flv.part"), dir.join("moved"));
        let file = create(&path);
        // The second open, the O_DIRECT one, finds nothing at the path.
        std::fs::rename(&path, &moved).expect("rename");
        let mut w = SpoolWriter::new(file, &path, true);
        assert!(!w.is_direct());
        w.write_all(&[media(0, 5000), media(5000, 3)])
            .expect("write");
        assert!(std::fs::read(&moved).expect("read") == media(0, 5003));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

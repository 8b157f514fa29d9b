//! Crash repair of an FLV written by [`FlvMuxer`](crate::FlvMuxer) (R-ST-4): keep whole
//! tags (header, body, PreviousTagSize), then patch `duration` and `filesize` in
//! `onMetaData` as a normal close does.

use media::repair::{Overwrite, ReadAt, ReadError, Repair, Window};
use thiserror::Error;

use crate::mux::{patches_for_existing, TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};

/// FLV header (9 bytes) + PreviousTagSize0.
const FILE_HEADER_LEN: usize = 13;
const TAG_HEADER_LEN: u64 = 11;
/// `onMetaData` comes first and is a few hundred bytes; this much of the head is enough
/// to find its `duration` and `filesize`.
const HEAD_LEN: u64 = 64 * 1024;

#[derive(Debug, Error)]
pub enum RepairError {
    #[error("not an FLV file: bytes 0..3 are {0:?}")]
    NotFlv([u8; 3]),
    /// The first tag would start inside the 9-byte header or past the end of the file.
    #[error("FLV header (byte 5) declares data offset {data_offset}; the header is 9 bytes and the file {len}")]
    BadDataOffset { data_offset: u32, len: u64 },
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Scans an unfinished FLV. A file too short for the FLV header keeps nothing.
///
/// A tag counts only if its type is audio, video or script and its PreviousTagSize
/// matches: a file system may leave zeroes or stale blocks after the last write of a
/// crashed process, and those must not pass for tags.
pub fn repair<R: ReadAt + ?Sized>(file: &R) -> Result<Repair, RepairError> {
    let len = file.len();
    let mut w = Window::new(file);
    let Some(h) = w.get(0, FILE_HEADER_LEN)? else {
        return Ok(Repair::default());
    };
    if &h[..3] != b"FLV" {
        return Err(RepairError::NotFlv([h[0], h[1], h[2]]));
    }
    let data_offset = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
    let first_tag = u64::from(data_offset) + 4;
    if data_offset < 9 || first_tag > len {
        return Err(RepairError::BadDataOffset { data_offset, len });
    }
    let mut pos = first_tag;
    let (mut first, mut last) = (None::<u32>, 0u32);
    while let Some(th) = w.get(pos, TAG_HEADER_LEN as usize)? {
        let tag_type = th[0] & 0x1f;
        let size = u32::from_be_bytes([0, th[1], th[2], th[3]]);
        let ts = u32::from_be_bytes([th[7], th[4], th[5], th[6]]);
        if ![TAG_AUDIO, TAG_VIDEO, TAG_SCRIPT].contains(&tag_type) {
            break;
        }
        let Some(body_end) = pos.checked_add(TAG_HEADER_LEN + u64::from(size)) else {
            break;
        };
        let Some(prev) = w.get(body_end, 4)? else {
            break;
        };
        if u32::from_be_bytes([prev[0], prev[1], prev[2], prev[3]]) != size + 11 {
            break;
        }
        if tag_type != TAG_SCRIPT {
            first.get_or_insert(ts);
            last = last.max(ts);
        }
        pos = body_end + 4;
    }
    let duration_ms = first.map_or(0, |f| u64::from(last.saturating_sub(f)));
    // pos <= len; HEAD_LEN fits usize.
    let head_len = pos.min(HEAD_LEN) as usize;
    let patches = match w.get(0, head_len)? {
        Some(head) => patches_for_existing(head, duration_ms as f64 / 1000.0, pos)
            .unwrap_or_default()
            .into_iter()
            .map(|p| Overwrite {
                offset: p.offset,
                bytes: p.bytes.to_vec(),
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(Repair {
        keep_len: pos,
        duration_ms,
        patches,
    })
}

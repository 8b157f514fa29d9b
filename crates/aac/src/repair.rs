//! Crash repair of a raw `.aac` recording (R-FM-4, R-ST-4): keep whole ADTS frames.

use media::aac::sampling_frequency;
use media::repair::{ReadAt, ReadError, Repair, Window};
use thiserror::Error;

use crate::{parse_header, HEADER_LEN};

/// With `protection_absent = 0` a CRC follows the 7-byte header.
const HEADER_WITH_CRC_LEN: usize = HEADER_LEN + 2;
/// Samples per raw data block of AAC (ISO/IEC 14496-3; 960-sample frames are not used
/// with ADTS).
const SAMPLES_PER_BLOCK: u64 = 1024;

#[derive(Debug, Error)]
pub enum RepairError {
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Scans an unfinished ADTS file: every frame whose header is sound (sync word, a
/// standard sampling frequency, a length that covers its header) and whose bytes are all
/// there is kept; the first one that is not ends the file. The duration counts each
/// frame's raw data blocks at its own sample rate.
pub fn repair<R: ReadAt + ?Sized>(file: &R) -> Result<Repair, RepairError> {
    let len = file.len();
    let mut w = Window::new(file);
    let mut pos = 0u64;
    // Samples per frequency index.
    let mut samples = [0u64; 13];
    while let Some(h) = w.get(pos, HEADER_LEN)? {
        let Some(hdr) = parse_header(h) else {
            break;
        };
        let blocks = u64::from(h[6] & 0x03) + 1;
        let header_len = if hdr.protection_absent {
            HEADER_LEN
        } else {
            HEADER_WITH_CRC_LEN
        };
        let Some(slot) = samples.get_mut(usize::from(hdr.frequency_index)) else {
            break;
        };
        let end = pos.saturating_add(hdr.frame_length as u64);
        if hdr.frame_length < header_len || end > len {
            break;
        }
        *slot = slot.saturating_add(blocks * SAMPLES_PER_BLOCK);
        pos = end;
    }
    let duration_ms = samples
        .iter()
        .zip(0u8..)
        .filter_map(|(&n, i)| Some(u128::from(n) * 1000 / u128::from(sampling_frequency(i)?)))
        .sum::<u128>();
    Ok(Repair {
        keep_len: pos,
        duration_ms: u64::try_from(duration_ms).unwrap_or(u64::MAX),
        patches: Vec::new(),
    })
}

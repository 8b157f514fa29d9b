//! Crash repair of a fragmented MP4 written by [`Fmp4Muxer`](crate::Fmp4Muxer) (R-ST-4):
//! keep `ftyp`, `moov` and every complete `moof` + `mdat` pair, then state the kept
//! duration in `mehd` as [`finish`](crate::Fmp4Muxer::finish) does (each track ends at its
//! last kept fragment's `tfdt` plus that fragment's sample durations, in the track's
//! timescale). No `mfra` is added: a crashed file is seekable through its fragments.

use std::collections::HashMap;

use media::repair::{Overwrite, ReadAt, ReadError, Repair, Window};
use mp4_atom::{Decode, Moof};
use thiserror::Error;

/// Our `moov` is a few KB; a larger one is not decoded (no duration, no patch).
const MAX_MOOV: u64 = 16 << 20;
/// Our `moof`s are a few KB (2 s of samples); a larger one is kept but not decoded.
const MAX_MOOF: u64 = 64 << 20;

#[derive(Debug, Error)]
pub enum RepairError {
    #[error("not an MP4 file: the first box is {kind:?}, not ftyp")]
    NotMp4 { kind: [u8; 4] },
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// A box header: type, total size (header included) and header length (8, or 16 with a
/// 64-bit `largesize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BoxHeader {
    kind: [u8; 4],
    size: u64,
    header_len: u64,
}

/// The header at the start of `b`; `room` is what is left of the parent (or the file)
/// from the box's start, the size of a box declared with size 0 ("to the end"). `None`
/// when `b` is too short or the size is smaller than the header (ISO/IEC 14496-12 4.2).
fn box_header(b: &[u8], room: u64) -> Option<BoxHeader> {
    let size32 = u32::from_be_bytes(b.get(0..4)?.try_into().ok()?);
    let kind: [u8; 4] = b.get(4..8)?.try_into().ok()?;
    let (header_len, size) = match size32 {
        0 => (8, room),
        1 => (16, u64::from_be_bytes(b.get(8..16)?.try_into().ok()?)),
        n => (8, u64::from(n)),
    };
    (size >= header_len).then_some(BoxHeader {
        kind,
        size,
        header_len,
    })
}

/// The children of the box body `b[from..to]`, in order, as (offset in `b`, header);
/// stops at the first one that does not fit.
fn children(b: &[u8], from: u64, to: u64) -> impl Iterator<Item = (u64, BoxHeader)> + '_ {
    let mut pos = from;
    std::iter::from_fn(move || {
        let room = to.checked_sub(pos)?;
        let h = box_header(b.get(usize::try_from(pos).ok()?..)?, room)?;
        if h.size > room {
            return None;
        }
        let at = pos;
        pos += h.size;
        Some((at, h))
    })
}

/// Where `mehd`'s `fragment_duration` lies in a `moov` box (`moov` → `mvex` → `mehd`,
/// ISO/IEC 14496-12 8.8.2): its offset from the start of `moov` and its version (1: 64
/// bits, 0: 32 bits).
fn find_mehd(moov: &[u8]) -> Option<(u64, u8)> {
    let top = box_header(moov, moov.len() as u64)?;
    if &top.kind != b"moov" || top.size > moov.len() as u64 {
        return None;
    }
    let (mvex_at, mvex) =
        children(moov, top.header_len, top.size).find(|(_, h)| &h.kind == b"mvex")?;
    let (mehd_at, mehd) = children(moov, mvex_at + mvex.header_len, mvex_at + mvex.size)
        .find(|(_, h)| &h.kind == b"mehd")?;
    let body = mehd_at + mehd.header_len;
    let version = *moov.get(usize::try_from(body).ok()?)?;
    let field_len = match version {
        1 => 8,
        0 => 4,
        _ => return None,
    };
    // version + flags, then the field, all inside the box.
    let field = body + 4;
    (field + field_len <= mehd_at + mehd.size).then_some((field, version))
}

/// What repair needs of the `moov`: the movie timescale (for `mehd`) and each track's
/// id and media timescale.
struct Timescales {
    movie: u32,
    tracks: Vec<TrackTimescale>,
}

struct TrackTimescale {
    track_id: u32,
    timescale: u32,
}

/// Reads [`Timescales`] by walking `moov/mvhd` and `moov/trak/{tkhd, mdia/mdhd}` — by
/// hand, not with `mp4_atom::Moov::decode`: that decodes every box of the moov, and its
/// `sgpd` decoder grows a vector by a count from the input without consuming bytes per
/// entry (cargo-fuzz found a 1.3 KB moov that asks it for gigabytes, issue 14). Repair
/// reads three fields; nothing here allocates more than one entry per `trak` box.
fn timescales(moov: &[u8]) -> Option<Timescales> {
    let top = box_header(moov, moov.len() as u64)?;
    if &top.kind != b"moov" || top.size > moov.len() as u64 {
        return None;
    }
    // A full box's version byte, then the u32 at `v0` (version 0) or `v1` (version 1)
    // bytes into its body.
    let field = |at: u64, h: &BoxHeader, v0: u64, v1: u64| -> Option<u32> {
        let body = at + h.header_len;
        let off = match *moov.get(usize::try_from(body).ok()?)? {
            0 => v0,
            1 => v1,
            _ => return None,
        };
        let start = body + off;
        if start + 4 > at + h.size {
            return None;
        }
        let i = usize::try_from(start).ok()?;
        Some(u32::from_be_bytes(moov.get(i..i + 4)?.try_into().ok()?))
    };
    let mut movie = None;
    let mut tracks = Vec::new();
    for (at, h) in children(moov, top.header_len, top.size) {
        match &h.kind {
            // version/flags, creation and modification time (4 or 8 bytes each), then
            // the timescale; tkhd has the track id there instead.
            b"mvhd" => movie = field(at, &h, 12, 20),
            b"trak" => {
                let inner = children(moov, at + h.header_len, at + h.size);
                let mut track_id = None;
                let mut timescale = None;
                for (cat, ch) in inner {
                    match &ch.kind {
                        b"tkhd" => track_id = field(cat, &ch, 12, 20),
                        b"mdia" => {
                            timescale = children(moov, cat + ch.header_len, cat + ch.size)
                                .find(|(_, m)| &m.kind == b"mdhd")
                                .and_then(|(mat, m)| field(mat, &m, 12, 20));
                        }
                        _ => {}
                    }
                }
                if let (Some(track_id), Some(timescale)) = (track_id, timescale) {
                    tracks.push(TrackTimescale {
                        track_id,
                        timescale,
                    });
                }
            }
            _ => {}
        }
    }
    Some(Timescales {
        movie: movie?,
        tracks,
    })
}

/// ISO 4CCs are printable ASCII; anything else at the top level (zeroes left by a power
/// loss, stale blocks) is not a box we wrote.
fn plausible(kind: &[u8; 4]) -> bool {
    kind.iter().all(|b| (0x20..=0x7e).contains(b))
}

/// Scans an unfinished fragmented MP4. A file shorter than one box header keeps nothing.
pub fn repair<R: ReadAt + ?Sized>(file: &R) -> Result<Repair, RepairError> {
    let len = file.len();
    let mut w = Window::new(file);
    let (mut pos, mut keep) = (0u64, 0u64);
    let mut in_fragment = false;
    let mut moov: Option<(u64, Vec<u8>)> = None;
    // Per track: the end (track timescale) of the complete fragments so far, and of the
    // fragment being read, committed when its mdat is complete.
    let mut ends: HashMap<u32, u64> = HashMap::new();
    let mut pending: HashMap<u32, u64> = HashMap::new();
    loop {
        let mut hb = [0u8; 16];
        let Some(h8) = w.get(pos, 8)? else {
            break;
        };
        hb[..8].copy_from_slice(h8);
        if hb[..4] == [0, 0, 0, 1] {
            let Some(large) = w.get(pos + 8, 8)? else {
                break;
            };
            hb[8..].copy_from_slice(large);
        }
        if pos == 0 && hb[4..8] != *b"ftyp" {
            return Err(RepairError::NotMp4 {
                kind: [hb[4], hb[5], hb[6], hb[7]],
            });
        }
        // pos <= len.
        let Some(h) = box_header(&hb, len - pos).filter(|h| plausible(&h.kind)) else {
            break;
        };
        let Some(next) = pos.checked_add(h.size).filter(|&n| n <= len) else {
            break;
        };
        match &h.kind {
            b"moov" if h.size <= MAX_MOOV => {
                // Bounded above: fits usize.
                moov = w.get(pos, h.size as usize)?.map(|b| (pos, b.to_vec()));
            }
            b"moof" => {
                pending.clear();
                if h.size <= MAX_MOOF {
                    if let Some(b) = w.get(pos, h.size as usize)? {
                        fragment_ends(b, &mut pending);
                    }
                }
            }
            _ => {}
        }
        pos = next;
        match &h.kind {
            b"moof" => in_fragment = true,
            b"mdat" => {
                in_fragment = false;
                keep = pos;
                for (id, end) in pending.drain() {
                    let e = ends.entry(id).or_default();
                    *e = (*e).max(end);
                }
            }
            _ if !in_fragment => keep = pos,
            _ => {}
        }
    }
    let mut duration_ms = 0u64;
    let mut patches = Vec::new();
    if let Some((at, bytes)) = &moov {
        if let Some(m) = timescales(bytes) {
            for t in &m.tracks {
                let ts = u128::from(t.timescale.max(1));
                if let Some(&end) = ends.get(&t.track_id) {
                    let ms = (u128::from(end) * 1000).div_ceil(ts);
                    duration_ms = duration_ms.max(u64::try_from(ms).unwrap_or(u64::MAX));
                }
            }
            if let Some((field, version)) = find_mehd(bytes) {
                // mehd is in the movie timescale.
                let value = u128::from(duration_ms) * u128::from(m.movie.max(1)) / 1000;
                let value = u64::try_from(value).unwrap_or(u64::MAX);
                let bytes = if version == 1 {
                    value.to_be_bytes().to_vec()
                } else {
                    u32::try_from(value)
                        .unwrap_or(u32::MAX)
                        .to_be_bytes()
                        .to_vec()
                };
                let patch = Overwrite {
                    offset: at.saturating_add(field),
                    bytes,
                };
                if patch.end().is_some_and(|e| e <= keep) {
                    patches.push(patch);
                }
            }
        }
    }
    Ok(Repair {
        keep_len: keep,
        duration_ms,
        patches,
    })
}

/// Each track's end in a `moof`: `tfdt` plus the sample durations (each sample's own, or
/// the `tfhd` default).
fn fragment_ends(moof: &[u8], ends: &mut HashMap<u32, u64>) {
    let Ok(m) = Moof::decode(&mut &moof[..]) else {
        return;
    };
    for traf in &m.traf {
        let base = traf.tfdt.as_ref().map_or(0, |t| t.base_media_decode_time);
        let default = traf.tfhd.default_sample_duration.unwrap_or(0);
        let dur = traf
            .trun
            .iter()
            .flat_map(|t| t.samples.iter())
            .fold(0u64, |acc, s| {
                acc.saturating_add(u64::from(s.duration.unwrap_or(default)))
            });
        ends.insert(traf.tfhd.track_id, base.saturating_add(dur));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    }

    fn large(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = 1u32.to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(&((body.len() + 16) as u64).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    /// Issue 14 fuzzing regression: a 1.3 KB file whose `moov` holds an `sgpd` with a
    /// huge entry count. Decoding the moov with mp4-atom asked for gigabytes; repair now
    /// reads only the timescales it needs and answers at once.
    #[test]
    fn an_sgpd_entry_count_does_not_allocate() {
        let data = include_bytes!("../tests/data/sgpd-count-oom.bin");
        let r = repair(&data[..]).expect("repair");
        assert!(r.keep_len <= data.len() as u64);
    }

    /// The hand walk reads the same fields mp4-atom decodes, in both box versions.
    #[test]
    fn timescales_are_read_from_mvhd_tkhd_and_mdhd() {
        let full = |kind: &[u8; 4], version: u8, fields: &[u8]| {
            let mut body = vec![version, 0, 0, 0];
            body.extend_from_slice(fields);
            boxed(kind, &body)
        };
        // v0: two 4-byte times then the u32; v1: two 8-byte times then the u32.
        let v0 = |x: u32| [&[0u8; 8][..], &x.to_be_bytes(), &[0; 8]].concat();
        let v1 = |x: u32| [&[0u8; 16][..], &x.to_be_bytes(), &[0; 8]].concat();
        let trak = |id: u32, ts: u32, version: u8| {
            let f = if version == 0 { v0 } else { v1 };
            let mdia = boxed(b"mdia", &full(b"mdhd", version, &f(ts)));
            boxed(b"trak", &[full(b"tkhd", version, &f(id)), mdia].concat())
        };
        let moov = boxed(
            b"moov",
            &[
                full(b"mvhd", 0, &v0(1000)),
                trak(1, 90_000, 0),
                trak(2, 48_000, 1),
            ]
            .concat(),
        );
        let t = timescales(&moov).expect("timescales");
        assert_eq!(t.movie, 1000);
        let got: Vec<_> = t.tracks.iter().map(|t| (t.track_id, t.timescale)).collect();
        assert_eq!(got, [(1, 90_000), (2, 48_000)]);
        assert!(timescales(&boxed(b"moov", &[])).is_none(), "no mvhd");
    }

    #[test]
    fn headers() {
        assert_eq!(
            box_header(&boxed(b"free", &[0; 4]), 100),
            Some(BoxHeader {
                kind: *b"free",
                size: 12,
                header_len: 8
            })
        );
        assert_eq!(
            box_header(&large(b"mdat", &[0; 4]), 100),
            Some(BoxHeader {
                kind: *b"mdat",
                size: 20,
                header_len: 16
            })
        );
        // Size 0: to the end of the parent.
        assert_eq!(box_header(b"\0\0\0\0mdat", 40).map(|h| h.size), Some(40));
        // Sizes below the header, a largesize below 16, truncated headers.
        assert_eq!(box_header(b"\0\0\0\x07free", 40), None);
        assert_eq!(box_header(b"\0\0\0\x01mdat\0\0\0\0\0\0\0\x0f", 40), None);
        assert_eq!(box_header(b"\0\0\0\x01mdat\0\0", 40), None);
        assert_eq!(box_header(b"\0\0\0", 40), None);
    }

    #[test]
    fn mehd_is_found_by_structure_not_by_name() {
        let mehd1 = boxed(b"mehd", &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        // A "mehd" inside a udta string must not be taken for the box.
        let udta = boxed(b"udta", b"....mehd....");
        let mut mvex_body = boxed(b"trex", &[0; 24]);
        mvex_body.extend_from_slice(&mehd1);
        let mut moov_body = udta.clone();
        moov_body.extend_from_slice(&boxed(b"mvex", &mvex_body));
        let moov = boxed(b"moov", &moov_body);
        let at = find_mehd(&moov).unwrap();
        assert_eq!(at, (8 + udta.len() as u64 + 8 + 32 + 8 + 4, 1));
        assert_eq!(moov[at.0 as usize + 7], 7);
        // The same with 64-bit sizes on mvex and mehd, and a version-0 mehd.
        let mehd0 = large(b"mehd", &[0, 0, 0, 0, 0, 0, 0, 9]);
        let moov = boxed(b"moov", &[udta.clone(), large(b"mvex", &mehd0)].concat());
        let at = find_mehd(&moov).unwrap();
        assert_eq!(at, (8 + udta.len() as u64 + 16 + 16 + 4, 0));
        assert_eq!(moov[at.0 as usize + 3], 9);
        // No mvex, a mehd too short for its field, a child overrunning its parent.
        assert_eq!(find_mehd(&boxed(b"moov", &udta)), None);
        let short = boxed(b"moov", &boxed(b"mvex", &boxed(b"mehd", &[1, 0, 0, 0, 0])));
        assert_eq!(find_mehd(&short), None);
        let mut over = boxed(b"moov", &boxed(b"mvex", &mehd1));
        over[8 + 3] += 1;
        assert_eq!(find_mehd(&over), None);
    }

    #[test]
    fn a_fragment_without_its_whole_mdat_goes() {
        let mut data = boxed(b"ftyp", &[0; 8]);
        data.extend(boxed(b"moov", &[0; 100]));
        data.extend(boxed(b"moof", &[0; 50]));
        data.extend(large(b"mdat", &[0; 500]));
        let whole = data.len() as u64;
        data.extend(boxed(b"moof", &[0; 50]));
        let mut partial = boxed(b"mdat", &[0; 500]);
        partial.truncate(200);
        data.extend(partial);
        assert_eq!(repair(&data).unwrap().keep_len, whole);
        // A moof whose mdat is missing entirely goes too, and so does a moof cut short.
        assert_eq!(
            repair(&data[..whole as usize + 58]).unwrap().keep_len,
            whole
        );
        assert_eq!(
            repair(&data[..whole as usize + 30]).unwrap().keep_len,
            whole
        );
        // Zeroes after the last fragment (a power loss) are not a box "to the end".
        let mut zeroes = data[..whole as usize].to_vec();
        zeroes.extend_from_slice(&[0; 1000]);
        assert_eq!(repair(&zeroes).unwrap().keep_len, whole);
        assert!(matches!(
            repair(&boxed(b"moov", &[0; 8])),
            Err(RepairError::NotMp4 { kind }) if &kind == b"moov"
        ));
        assert_eq!(repair(&data[..7]).unwrap(), Repair::default());
    }

    /// A sparse file of 2^64 - 1 bytes: a few boxes at the start, zeroes elsewhere.
    struct Huge(Vec<u8>);

    impl ReadAt for Huge {
        fn len(&self) -> u64 {
            u64::MAX
        }
        fn read_at(&self, off: u64, buf: &mut [u8]) -> std::io::Result<usize> {
            buf.fill(0);
            self.0.as_slice().read_at(off, buf)?;
            Ok(buf.len())
        }
    }

    #[test]
    fn sizes_near_the_end_of_u64_do_not_overflow() {
        let mut data = boxed(b"ftyp", &[0; 8]);
        data.extend(boxed(b"moof", &[0; 8]));
        // An mdat reaching to 16 bytes before the end of the 64-bit range.
        let at = data.len() as u64;
        data.extend(large(b"mdat", &[]));
        let size = u64::MAX - 16 - at;
        let n = data.len();
        data[n - 8..].copy_from_slice(&size.to_be_bytes());
        let r = repair(&Huge(data)).unwrap();
        assert_eq!(r.keep_len, u64::MAX - 16);
        // Then a box claiming more than what is left.
        let mut data = boxed(b"ftyp", &[0; 8]);
        data.extend(large(b"free", &[]));
        let n = data.len();
        data[n - 8..].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(repair(&Huge(data)).unwrap().keep_len, 16);
    }
}

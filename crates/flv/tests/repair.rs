//! Crash repair of FLV files made by our own muxer, checked with the FLV reader and the
//! AMF0 decoder (not with the scanner's own walk).

use std::io;

use bytes::Bytes;
use liverec_flv::repair::{repair, RepairError};
use liverec_flv::{FlvMuxer, FlvReader, MetaInfo, TagType};
use media::repair::ReadAt;
use media::TrackKind;

/// A file as the recorder leaves it open: header and tags, never finalized. Returns the
/// bytes and the offset where each tag starts.
fn recording(frames: usize) -> (Vec<u8>, Vec<usize>) {
    let info = MetaInfo {
        has_video: true,
        has_audio: true,
        ..MetaInfo::default()
    };
    let mut m = FlvMuxer::new(info, media::Millis::from_ms(1000));
    let mut out = vec![m.header()];
    let mut starts = Vec::new();
    for i in 0..frames {
        starts.push(m.bytes_written() as usize);
        let (kind, dts) = if i % 3 == 2 {
            (TrackKind::Audio, 1000 + (i as i64) * 21)
        } else {
            (TrackKind::Video, 1000 + (i as i64) * 33)
        };
        let body = Bytes::from(vec![i as u8; 50 + (i * 37) % 400]);
        m.write_tag(kind, media::Millis::from_ms(dts), &body, &mut out);
    }
    (out.iter().flat_map(|b| b.iter().copied()).collect(), starts)
}

/// `duration` and `filesize` from `onMetaData`, read with the AMF0 decoder.
fn metadata(file: &[u8]) -> (f64, f64) {
    let tags = FlvReader::new(Bytes::copy_from_slice(file))
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(tags[0].tag_type, TagType::Script);
    let values = amf0::decode_all(&tags[0].body).unwrap();
    let num = |k| values[1].get(k).and_then(amf0::Value::as_number).unwrap();
    (num("duration"), num("filesize"))
}

/// Media span of a file by the reader: last minus first A/V timestamp.
fn span_ms(file: &[u8]) -> u64 {
    let tags = FlvReader::new(Bytes::copy_from_slice(file))
        .unwrap()
        .read_all()
        .unwrap();
    let ts: Vec<u32> = tags
        .iter()
        .filter(|t| t.tag_type != TagType::Script)
        .map(|t| t.timestamp)
        .collect();
    u64::from(ts.iter().max().unwrap() - ts[0])
}

#[test]
fn a_complete_file_is_kept_whole_and_finalized() {
    let (file, _) = recording(40);
    let r = repair(&file).unwrap();
    assert_eq!(r.keep_len, file.len() as u64);
    assert_eq!(r.duration_ms, span_ms(&file));
    assert_eq!(r.patches.len(), 2);
    let mut fixed = file.clone();
    r.apply(&mut fixed);
    assert_eq!(fixed.len(), file.len());
    assert_eq!(
        metadata(&fixed),
        (r.duration_ms as f64 / 1000.0, file.len() as f64)
    );
    // Only the two numbers changed.
    let changed = file.iter().zip(&fixed).filter(|(a, b)| a != b).count();
    assert!(changed <= 16, "{changed} bytes changed");
}

#[test]
fn a_file_cut_mid_tag_goes_back_to_the_last_whole_tag() {
    let (file, starts) = recording(40);
    let last = *starts.last().unwrap();
    for cut in last + 1..file.len() {
        let r = repair(&file[..cut]).unwrap();
        assert_eq!(r.keep_len, last as u64, "cut at {cut}");
        let mut fixed = file[..cut].to_vec();
        r.apply(&mut fixed);
        // The reader accepts it whole, and the metadata states what is there.
        assert_eq!(
            metadata(&fixed),
            (span_ms(&fixed) as f64 / 1000.0, last as f64)
        );
    }
    // Cut exactly at a tag boundary: nothing to drop.
    assert_eq!(repair(&file[..last]).unwrap().keep_len, last as u64);
}

#[test]
fn a_zero_filled_tail_is_not_a_tag() {
    // After a power loss a file system may show the file's last blocks as zeroes: a tag
    // header of zeroes has type 0 and a PreviousTagSize of 0, and must be dropped.
    let (mut file, _) = recording(10);
    let whole = file.len() as u64;
    file.resize(file.len() + 4096, 0);
    assert_eq!(repair(&file).unwrap().keep_len, whole);
    // A stale tag-shaped tail whose PreviousTagSize does not match goes too.
    let (mut file, starts) = recording(10);
    let n = file.len();
    file[n - 1] ^= 1;
    assert_eq!(
        repair(&file).unwrap().keep_len,
        *starts.last().unwrap() as u64
    );
}

#[test]
fn header_only_short_and_foreign_files() {
    let (file, starts) = recording(1);
    // Header and onMetaData but no media: kept, duration 0.
    let r = repair(&file[..starts[0]]).unwrap();
    assert_eq!((r.keep_len, r.duration_ms), (starts[0] as u64, 0));
    // Shorter than the FLV header: nothing to keep.
    assert_eq!(repair(&file[..12]).unwrap().keep_len, 0);
    assert_eq!(repair(&[][..]).unwrap().keep_len, 0);
    assert!(matches!(
        repair(&b"MP4\x01\x05\0\0\0\x09\0\0\0\0"[..]),
        Err(RepairError::NotFlv(_))
    ));
    assert!(matches!(
        repair(&b"FLV\x01\x05\xff\xff\xff\xff\0\0\0\0"[..]),
        Err(RepairError::BadDataOffset {
            data_offset: u32::MAX,
            len: 13
        })
    ));
    assert!(matches!(
        repair(&b"FLV\x01\x05\0\0\0\x05\0\0\0\0"[..]),
        Err(RepairError::BadDataOffset { data_offset: 5, .. })
    ));
}

/// Fails every read at or past `from`.
struct Failing {
    data: Vec<u8>,
    from: u64,
}

impl ReadAt for Failing {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        if off >= self.from {
            return Err(io::Error::other("disk on fire"));
        }
        let end = buf.len().min((self.from - off) as usize);
        self.data.as_slice().read_at(off, &mut buf[..end])
    }
}

#[test]
fn read_errors_carry_their_offset() {
    let (data, _) = recording(20_000);
    assert!(data.len() > 200_000);
    let err = repair(&Failing {
        data,
        from: 100_000,
    })
    .unwrap_err();
    match err {
        RepairError::Read(e) => assert_eq!(e.offset, 100_000, "{e}"),
        other => panic!("{other}"),
    }
}

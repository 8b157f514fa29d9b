//! A bounded reader of whole FLV files (fixtures, our own output in tests, the replay
//! publisher). Every length is checked against the bytes present.

use bytes::Bytes;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagType {
    Audio,
    Video,
    Script,
    Other(u8),
}

impl TagType {
    pub fn from_u8(t: u8) -> Self {
        match t & 0x1f {
            8 => TagType::Audio,
            9 => TagType::Video,
            18 => TagType::Script,
            o => TagType::Other(o),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            TagType::Audio => 8,
            TagType::Video => 9,
            TagType::Script => 18,
            TagType::Other(o) => o,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTag {
    pub tag_type: TagType,
    /// The 32-bit FLV timestamp (24 bits + extension byte).
    pub timestamp: u32,
    /// Byte offset of the tag header in the file.
    pub offset: usize,
    pub body: Bytes,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("not an FLV file (signature {0:?})")]
    BadSignature([u8; 3]),
    #[error("FLV truncated at byte {offset}")]
    Truncated { offset: usize },
    #[error("FLV header declares data offset {0}, outside the file")]
    BadDataOffset(u32),
}

/// Iterates the tags of an in-memory FLV file.
pub struct FlvReader {
    data: Bytes,
    pos: usize,
    pub has_audio: bool,
    pub has_video: bool,
}

impl FlvReader {
    pub fn new(data: Bytes) -> Result<Self, ReadError> {
        if data.len() < 9 {
            return Err(ReadError::Truncated { offset: data.len() });
        }
        if &data[0..3] != b"FLV" {
            return Err(ReadError::BadSignature([data[0], data[1], data[2]]));
        }
        let flags = data[4];
        let offset = u32::from_be_bytes([data[5], data[6], data[7], data[8]]);
        let pos = (offset as usize)
            .checked_add(4)
            .filter(|&p| p <= data.len())
            .ok_or(ReadError::BadDataOffset(offset))?;
        Ok(Self {
            data,
            pos,
            has_audio: flags & 0x04 != 0,
            has_video: flags & 0x01 != 0,
        })
    }

    /// Reads all remaining tags, stopping with an error at the first truncated tag.
    pub fn read_all(mut self) -> Result<Vec<FileTag>, ReadError> {
        let mut out = Vec::new();
        while let Some(t) = self.next_tag()? {
            out.push(t);
        }
        Ok(out)
    }

    pub fn next_tag(&mut self) -> Result<Option<FileTag>, ReadError> {
        let d = &self.data;
        if self.pos >= d.len() {
            return Ok(None);
        }
        let offset = self.pos;
        let h = d
            .get(offset..offset + 11)
            .ok_or(ReadError::Truncated { offset })?;
        let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
        let timestamp = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let start = offset + 11;
        let end = start + size;
        if end + 4 > d.len() {
            return Err(ReadError::Truncated { offset });
        }
        let tag = FileTag {
            tag_type: TagType::from_u8(h[0]),
            timestamp,
            offset,
            body: self.data.slice(start..end),
        };
        self.pos = end + 4;
        Ok(Some(tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tags: &[(u8, u32, &[u8])]) -> Vec<u8> {
        let mut v = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        for (t, ts, body) in tags {
            let n = body.len() as u32;
            v.push(*t);
            v.extend_from_slice(&n.to_be_bytes()[1..]);
            v.extend_from_slice(&ts.to_be_bytes()[1..]);
            v.push((ts >> 24) as u8);
            v.extend_from_slice(&[0, 0, 0]);
            v.extend_from_slice(body);
            v.extend_from_slice(&(n + 11).to_be_bytes());
        }
        v
    }

    #[test]
    fn reads_tags_with_extended_timestamp() {
        let f = file(&[(9, 0x0100_0002, b"\x17\x01"), (8, 5, b"\xaf\x01x")]);
        let r = FlvReader::new(Bytes::from(f)).unwrap();
        assert!(r.has_audio && r.has_video);
        let tags = r.read_all().unwrap();
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[0].timestamp, 0x0100_0002);
        assert_eq!(tags[0].tag_type, TagType::Video);
        assert_eq!(&tags[1].body[..], b"\xaf\x01x");
    }

    #[test]
    fn truncation_is_an_error_not_a_panic() {
        let f = file(&[(9, 0, b"\x17\x01\x00\x00\x00abc")]);
        for cut in 0..f.len() {
            let r = FlvReader::new(Bytes::copy_from_slice(&f[..cut]));
            if let Ok(r) = r {
                let _ = r.read_all();
            }
        }
        assert!(FlvReader::new(Bytes::from_static(b"FLX\x01\x05\0\0\0\x09")).is_err());
    }
}

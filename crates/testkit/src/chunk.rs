//! RTMP chunk stream codec for the client side: an encoder (fmt 0 first chunk, fmt 3
//! continuations, extended timestamps repeated on fmt 3 chunks as ffmpeg and librtmp do)
//! and a small bounded decoder for what a server sends (fmt 0–3, Set Chunk Size, Abort).

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// RTMP message type ids.
pub mod msg_type {
    pub const SET_CHUNK_SIZE: u8 = 1;
    pub const ABORT: u8 = 2;
    pub const ACKNOWLEDGEMENT: u8 = 3;
    pub const USER_CONTROL: u8 = 4;
    pub const WINDOW_ACK_SIZE: u8 = 5;
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    pub const AUDIO: u8 = 8;
    pub const VIDEO: u8 = 9;
    pub const DATA_AMF3: u8 = 15;
    pub const COMMAND_AMF3: u8 = 17;
    pub const DATA_AMF0: u8 = 18;
    pub const COMMAND_AMF0: u8 = 20;
}

/// Timestamps at or above this value go in the 4-byte extended timestamp field.
pub const EXTENDED_TIMESTAMP: u32 = 0x00FF_FFFF;
/// Largest chunk size the protocol allows (31 bits).
pub const MAX_CHUNK_SIZE: u32 = 0x7FFF_FFFF;

/// One reassembled RTMP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub csid: u32,
    pub msg_type: u8,
    pub stream_id: u32,
    pub timestamp: u32,
    pub payload: Bytes,
}

fn put_basic_header(out: &mut Vec<u8>, fmt: u8, csid: u32) {
    match csid {
        2..=63 => out.push((fmt << 6) | csid as u8),
        64..=319 => out.extend_from_slice(&[fmt << 6, (csid - 64) as u8]),
        _ => {
            let c = csid - 64;
            out.extend_from_slice(&[(fmt << 6) | 1, c as u8, (c >> 8) as u8]);
        }
    }
}

/// Appends `payload` as one RTMP message: a fmt-0 chunk, then fmt-3 continuation chunks
/// of at most `chunk_size` bytes each. `csid` must be in 2..=65599.
pub fn encode_message(
    out: &mut Vec<u8>,
    csid: u32,
    msg_type: u8,
    stream_id: u32,
    timestamp: u32,
    payload: &[u8],
    chunk_size: usize,
) {
    assert!(
        (2..=65599).contains(&csid),
        "chunk stream id {csid} out of range"
    );
    assert!(
        payload.len() < 1 << 24,
        "RTMP message longer than 2^24-1 bytes"
    );
    let chunk_size = chunk_size.max(1);
    let extended = timestamp >= EXTENDED_TIMESTAMP;
    let ts_field = timestamp.min(EXTENDED_TIMESTAMP);
    let n_chunks = payload.len().div_ceil(chunk_size).max(1);
    out.reserve(payload.len() + 16 + (n_chunks - 1) * 8);
    put_basic_header(out, 0, csid);
    out.extend_from_slice(&ts_field.to_be_bytes()[1..]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(msg_type);
    out.extend_from_slice(&stream_id.to_le_bytes());
    if extended {
        out.extend_from_slice(&timestamp.to_be_bytes());
    }
    let mut chunks = payload.chunks(chunk_size);
    if let Some(first) = chunks.next() {
        out.extend_from_slice(first);
    }
    for c in chunks {
        put_basic_header(out, 3, csid);
        if extended {
            out.extend_from_slice(&timestamp.to_be_bytes());
        }
        out.extend_from_slice(c);
    }
}

/// Convenience: one message as a fresh buffer.
pub fn encode_to_vec(
    csid: u32,
    msg_type: u8,
    stream_id: u32,
    timestamp: u32,
    payload: &[u8],
    chunk_size: usize,
) -> Vec<u8> {
    let mut v = Vec::new();
    encode_message(
        &mut v, csid, msg_type, stream_id, timestamp, payload, chunk_size,
    );
    v
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("chunk stream {csid}: fmt {fmt} chunk without a previous fmt 0 header")]
    NoPreviousHeader { csid: u32, fmt: u8 },
    #[error("chunk stream {csid}: message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge { csid: u32, len: usize, max: usize },
    #[error("more than {max} chunk streams in use")]
    TooManyChunkStreams { max: usize },
    #[error("invalid Set Chunk Size {0}")]
    BadChunkSize(u32),
}

#[derive(Debug, Default)]
struct StreamState {
    timestamp: u32,
    delta: u32,
    length: usize,
    msg_type: u8,
    stream_id: u32,
    extended: bool,
    started: bool,
    partial: BytesMut,
}

/// Incremental chunk-stream decoder. Feed bytes with [`ChunkDecoder::push`], take whole
/// messages with [`ChunkDecoder::next_message`]. Set Chunk Size and Abort are applied
/// internally (and still returned). Memory is bounded by `max_message` per chunk stream
/// and `max_streams` chunk streams; buffers grow with the bytes received, never by a
/// length read from the wire.
pub struct ChunkDecoder {
    buf: BytesMut,
    chunk_size: usize,
    streams: HashMap<u32, StreamState>,
    pub max_message: usize,
    pub max_streams: usize,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkDecoder {
    pub fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            chunk_size: 128,
            streams: HashMap::new(),
            max_message: 16 << 20,
            max_streams: 64,
        }
    }

    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    pub fn set_chunk_size(&mut self, n: usize) {
        self.chunk_size = n.max(1);
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Decodes chunks until a message is complete (`Some`) or more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, ChunkError> {
        loop {
            match self.next_chunk()? {
                None => return Ok(None),
                Some(None) => continue,
                Some(Some(m)) => {
                    match m.msg_type {
                        msg_type::SET_CHUNK_SIZE if m.payload.len() >= 4 => {
                            let n = u32::from_be_bytes(m.payload[..4].try_into().unwrap())
                                & MAX_CHUNK_SIZE;
                            if n == 0 {
                                return Err(ChunkError::BadChunkSize(n));
                            }
                            self.chunk_size = n as usize;
                        }
                        msg_type::ABORT if m.payload.len() >= 4 => {
                            let c = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
                            if let Some(s) = self.streams.get_mut(&c) {
                                s.partial.clear();
                            }
                        }
                        _ => {}
                    }
                    return Ok(Some(m));
                }
            }
        }
    }

    /// `None`: need more bytes (nothing consumed). `Some(None)`: a chunk was consumed
    /// without completing a message. `Some(Some(m))`: a message completed.
    fn next_chunk(&mut self) -> Result<Option<Option<Message>>, ChunkError> {
        let b = &self.buf[..];
        let Some(&b0) = b.first() else {
            return Ok(None);
        };
        let fmt = b0 >> 6;
        let (csid, mut pos) = match b0 & 0x3f {
            0 => match b.get(1) {
                Some(&x) => (64 + u32::from(x), 2),
                None => return Ok(None),
            },
            1 => match b.get(1..3) {
                Some(x) => (64 + u32::from(x[0]) + 256 * u32::from(x[1]), 3),
                None => return Ok(None),
            },
            c => (u32::from(c), 1),
        };
        let hlen = [11, 7, 3, 0][fmt as usize];
        let Some(h) = b.get(pos..pos + hlen) else {
            return Ok(None);
        };
        pos += hlen;
        if !self.streams.contains_key(&csid) {
            if fmt != 0 {
                return Err(ChunkError::NoPreviousHeader { csid, fmt });
            }
            if self.streams.len() >= self.max_streams {
                return Err(ChunkError::TooManyChunkStreams {
                    max: self.max_streams,
                });
            }
        }
        let be24 = |x: &[u8]| u32::from_be_bytes([0, x[0], x[1], x[2]]);
        let prev = self.streams.get(&csid);
        let prev_extended = prev.is_some_and(|s| s.extended);
        let mid_message = prev.is_some_and(|s| s.started && !s.partial.is_empty());
        // Header fields (not yet committed: the chunk may be incomplete).
        let (ts_field, length, mtype, sid) = match fmt {
            0 => (
                Some(be24(&h[0..3])),
                Some(be24(&h[3..6]) as usize),
                Some(h[6]),
                Some(u32::from_le_bytes(h[7..11].try_into().unwrap())),
            ),
            1 => (
                Some(be24(&h[0..3])),
                Some(be24(&h[3..6]) as usize),
                Some(h[6]),
                None,
            ),
            2 => (Some(be24(&h[0..3])), None, None, None),
            _ => (None, None, None, None),
        };
        let mut ext_ts = None;
        match ts_field {
            Some(EXTENDED_TIMESTAMP) => {
                let Some(x) = b.get(pos..pos + 4) else {
                    return Ok(None);
                };
                ext_ts = Some(u32::from_be_bytes(x.try_into().unwrap()));
                pos += 4;
            }
            Some(_) => {}
            None if prev_extended => {
                // fmt 3 after an extended header: ffmpeg/librtmp repeat the extended
                // timestamp, some servers do not. At a message start it must be there;
                // mid-message take it only when it matches the value we know.
                let Some(x) = b.get(pos..pos + 4) else {
                    return Ok(None);
                };
                let v = u32::from_be_bytes(x.try_into().unwrap());
                let st = prev.unwrap();
                let known = if st.started { st.delta } else { st.timestamp };
                if !mid_message || v == known || v == st.timestamp {
                    ext_ts = Some(v);
                    pos += 4;
                }
            }
            None => {}
        }
        let length_now = length.unwrap_or_else(|| prev.map_or(0, |s| s.length));
        if length_now > self.max_message {
            return Err(ChunkError::MessageTooLarge {
                csid,
                len: length_now,
                max: self.max_message,
            });
        }
        let have = if mid_message {
            prev.map_or(0, |s| s.partial.len())
        } else {
            0
        };
        let take = (length_now - have.min(length_now)).min(self.chunk_size);
        if b.len() < pos + take {
            return Ok(None);
        }
        // Commit.
        let st = self.streams.entry(csid).or_default();
        let starting = !mid_message;
        if starting {
            let field = ext_ts.or(ts_field);
            match fmt {
                0 => {
                    st.timestamp = field.unwrap_or(0);
                    st.delta = st.timestamp;
                }
                1 | 2 => {
                    st.delta = field.unwrap_or(0);
                    st.timestamp = st.timestamp.wrapping_add(st.delta);
                }
                _ => {
                    if !st.started {
                        st.delta = st.timestamp;
                    } else {
                        st.timestamp = st.timestamp.wrapping_add(st.delta);
                    }
                }
            }
        }
        if fmt < 3 {
            st.extended = ts_field == Some(EXTENDED_TIMESTAMP);
        }
        if let Some(l) = length {
            st.length = l;
        }
        if let Some(t) = mtype {
            st.msg_type = t;
        }
        if let Some(s) = sid {
            st.stream_id = s;
        }
        st.started = true;
        self.buf.advance(pos);
        let data = self.buf.split_to(take);
        st.partial.extend_from_slice(&data);
        if st.partial.len() >= st.length {
            let payload = std::mem::take(&mut st.partial).freeze();
            return Ok(Some(Some(Message {
                csid,
                msg_type: st.msg_type,
                stream_id: st.stream_id,
                timestamp: st.timestamp,
                payload,
            })));
        }
        Ok(Some(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(chunk: usize, msgs: &[(u32, u8, u32, u32, Vec<u8>)], step: usize) {
        let mut wire = Vec::new();
        if chunk != 128 {
            encode_message(
                &mut wire,
                2,
                msg_type::SET_CHUNK_SIZE,
                0,
                0,
                &(chunk as u32).to_be_bytes(),
                128,
            );
        }
        for (c, t, s, ts, p) in msgs {
            encode_message(&mut wire, *c, *t, *s, *ts, p, chunk);
        }
        let mut d = ChunkDecoder::new();
        let mut got = Vec::new();
        for piece in wire.chunks(step) {
            d.push(piece);
            while let Some(m) = d.next_message().unwrap() {
                if m.msg_type != msg_type::SET_CHUNK_SIZE {
                    got.push(m);
                }
            }
        }
        assert_eq!(d.buffered(), 0);
        assert_eq!(got.len(), msgs.len());
        for (m, (c, t, s, ts, p)) in got.iter().zip(msgs) {
            assert_eq!(
                (m.csid, m.msg_type, m.stream_id, m.timestamp),
                (*c, *t, *s, *ts)
            );
            assert_eq!(&m.payload[..], &p[..]);
        }
    }

    fn payload(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn roundtrip_chunk_sizes_and_extended_timestamps() {
        let msgs = vec![
            (3, 20, 0, 0, payload(10, 1)),
            (6, 9, 1, 33, payload(100_000, 2)),
            (4, 8, 1, 0x00FF_FFFE, payload(300, 3)),
            (6, 9, 1, 0x00FF_FFFF, payload(9000, 4)),
            (4, 8, 1, 0xFFFF_FFF0, payload(70_000, 5)),
            (6, 9, 1, 0x0100_0000, payload(0, 6)),
            (70, 9, 1, 5, payload(129, 7)),
            (400, 8, 7, 0x1234_5678, payload(5000, 8)),
        ];
        for chunk in [128, 4096, 60000, 1] {
            for step in [1, 7, 4096, usize::MAX] {
                if chunk == 1 && step == 1 {
                    continue; // slow and adds nothing
                }
                roundtrip(chunk, &msgs, step.min(1 << 30));
            }
        }
    }

    #[test]
    fn extended_timestamp_is_repeated_on_fmt3_chunks() {
        let v = encode_to_vec(4, 8, 1, 0x0100_0000, &[0u8; 300], 128);
        // fmt0: 1 + 11 + 4 + 128, fmt3: 1 + 4 + 128, fmt3: 1 + 4 + 44
        assert_eq!(v.len(), 144 + 133 + 49);
        assert_eq!(v[144], 0xc4);
        assert_eq!(&v[145..149], &[1, 0, 0, 0]);
        assert_eq!(&v[1..4], &[0xff, 0xff, 0xff]);
    }

    #[test]
    fn decoder_accepts_fmt1_fmt2_fmt3_headers() {
        // Hand-built: fmt0 ts=100 len=2; fmt2 delta=10 (len 2 reused); fmt3 (delta again);
        // fmt1 delta=5 len=1 type 9.
        let mut w = vec![0x03, 0, 0, 100, 0, 0, 2, 20, 1, 0, 0, 0, b'a', b'b'];
        w.extend_from_slice(&[0x83, 0, 0, 10, b'c', b'd']);
        w.extend_from_slice(&[0xc3, b'e', b'f']);
        w.extend_from_slice(&[0x43, 0, 0, 5, 0, 0, 1, 9, b'g']);
        let mut d = ChunkDecoder::new();
        d.push(&w);
        let mut got = Vec::new();
        while let Some(m) = d.next_message().unwrap() {
            got.push((m.timestamp, m.msg_type, m.stream_id, m.payload.to_vec()));
        }
        assert_eq!(
            got,
            vec![
                (100, 20, 1, b"ab".to_vec()),
                (110, 20, 1, b"cd".to_vec()),
                (120, 20, 1, b"ef".to_vec()),
                (125, 9, 1, b"g".to_vec()),
            ]
        );
    }

    #[test]
    fn decoder_accepts_fmt3_without_repeated_extended_timestamp() {
        // A server that does not repeat the extended timestamp on continuation chunks.
        let mut w = vec![0x04, 0xff, 0xff, 0xff, 0, 0, 200, 8, 1, 0, 0, 0, 1, 0, 0, 0];
        w.extend_from_slice(&[7u8; 128]);
        w.push(0xc4);
        w.extend_from_slice(&[9u8; 72]);
        let mut d = ChunkDecoder::new();
        d.push(&w);
        let m = d.next_message().unwrap().unwrap();
        assert_eq!(m.timestamp, 0x0100_0000);
        assert_eq!(m.payload.len(), 200);
        assert_eq!(m.payload[199], 9);
    }

    #[test]
    fn decoder_is_bounded() {
        let mut d = ChunkDecoder::new();
        d.max_message = 1000;
        d.push(&[0x03, 0, 0, 0, 0xff, 0xff, 0xff, 20, 0, 0, 0, 0]);
        assert!(matches!(
            d.next_message(),
            Err(ChunkError::MessageTooLarge { .. })
        ));
        let mut d = ChunkDecoder::new();
        d.push(&[0xc5, 1, 2]);
        assert!(d.next_message().is_err());
        let mut d = ChunkDecoder::new();
        d.max_streams = 2;
        for c in 3..6u8 {
            d.push(&[c, 0, 0, 0, 0, 0, 1, 20, 0, 0, 0, 0, b'x']);
        }
        assert!(d.next_message().unwrap().is_some());
        assert!(d.next_message().unwrap().is_some());
        assert!(matches!(
            d.next_message(),
            Err(ChunkError::TooManyChunkStreams { .. })
        ));
    }
}

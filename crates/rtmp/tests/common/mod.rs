//! Client-side helpers: raw chunk writers, a client handshake, commands built with
//! `ChunkEncoder` + amf0, and a reader for what the server sent back.
#![allow(dead_code)]

use amf0::Value;
use bytes::{BufMut, Bytes, BytesMut};
use liverec_rtmp::chunk::{msg_type, put_basic_header, ChunkDecoder, ChunkEncoder, Message};
use liverec_rtmp::{ServerConfig, ServerEvent, ServerSession, SessionError};

/// Writes one chunk by hand. `ts` is the timestamp (fmt 0) or delta (fmt 1/2); values
/// ≥ 0xFFFFFF are written as an extended timestamp. For fmt 3, `ext` is the extended
/// timestamp to repeat (or None to omit it).
pub struct Raw(pub Vec<u8>);

impl Raw {
    pub fn new() -> Self {
        Raw(Vec::new())
    }
    fn basic(&mut self, fmt: u8, csid: u32) {
        let mut b = BytesMut::new();
        put_basic_header(&mut b, fmt, csid);
        self.0.extend_from_slice(&b);
    }
    fn ts(&mut self, ts: u32) -> bool {
        let f = ts.min(0xFF_FFFF);
        self.0.extend_from_slice(&f.to_be_bytes()[1..]);
        ts >= 0xFF_FFFF
    }
    pub fn fmt0(
        &mut self,
        csid: u32,
        ts: u32,
        len: usize,
        ty: u8,
        msid: u32,
        payload: &[u8],
    ) -> &mut Self {
        self.basic(0, csid);
        let ext = self.ts(ts);
        self.0.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        self.0.push(ty);
        self.0.extend_from_slice(&msid.to_le_bytes());
        if ext {
            self.0.extend_from_slice(&ts.to_be_bytes());
        }
        self.0.extend_from_slice(payload);
        self
    }
    pub fn fmt1(&mut self, csid: u32, delta: u32, len: usize, ty: u8, payload: &[u8]) -> &mut Self {
        self.basic(1, csid);
        let ext = self.ts(delta);
        self.0.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        self.0.push(ty);
        if ext {
            self.0.extend_from_slice(&delta.to_be_bytes());
        }
        self.0.extend_from_slice(payload);
        self
    }
    pub fn fmt2(&mut self, csid: u32, delta: u32, payload: &[u8]) -> &mut Self {
        self.basic(2, csid);
        if self.ts(delta) {
            self.0.extend_from_slice(&delta.to_be_bytes());
        }
        self.0.extend_from_slice(payload);
        self
    }
    pub fn fmt3(&mut self, csid: u32, ext: Option<u32>, payload: &[u8]) -> &mut Self {
        self.basic(3, csid);
        if let Some(e) = ext {
            self.0.extend_from_slice(&e.to_be_bytes());
        }
        self.0.extend_from_slice(payload);
        self
    }
    pub fn bytes(&self) -> BytesMut {
        BytesMut::from(&self.0[..])
    }
}

pub fn set_chunk_size(size: u32) -> Vec<u8> {
    let mut r = Raw::new();
    r.fmt0(2, 0, 4, msg_type::SET_CHUNK_SIZE, 0, &size.to_be_bytes());
    r.0
}

/// Decodes every complete message in `buf`.
pub fn decode_all(
    dec: &mut ChunkDecoder,
    buf: &mut BytesMut,
) -> Result<Vec<Message>, SessionError> {
    let mut out = Vec::new();
    while let Some(m) = dec.decode(buf)? {
        out.push(m);
    }
    Ok(out)
}

/// Feeds `input` one byte at a time and decodes whatever completes.
pub fn decode_bytewise(dec: &mut ChunkDecoder, input: &[u8]) -> Result<Vec<Message>, SessionError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for &b in input {
        buf.put_u8(b);
        out.extend(decode_all(dec, &mut buf)?);
    }
    assert!(buf.is_empty(), "left over: {buf:?}");
    Ok(out)
}

/// C0 + simple C1 + C2: what ffmpeg sends (its C2 is sent after S1 arrives; content is
/// not checked by the server).
pub fn client_handshake() -> Vec<u8> {
    let mut v = vec![3u8];
    v.extend_from_slice(&[0u8; 8]);
    v.extend((0..1528).map(|i| (i % 251) as u8));
    v.extend_from_slice(&[7u8; 1536]);
    v
}

/// A client that writes with `ChunkEncoder`.
pub struct Client {
    pub enc: ChunkEncoder,
    pub buf: BytesMut,
}

impl Client {
    pub fn new() -> Self {
        Client {
            enc: ChunkEncoder::new(),
            buf: BytesMut::new(),
        }
    }
    pub fn msg(
        &mut self,
        csid: u32,
        ts: u32,
        ty: u8,
        msid: u32,
        payload: impl Into<Bytes>,
    ) -> &mut Self {
        let m = Message {
            csid,
            timestamp: ts,
            type_id: ty,
            stream_id: msid,
            payload: payload.into(),
        };
        self.enc.encode(&m, &mut self.buf).unwrap();
        self
    }
    pub fn set_chunk_size(&mut self, size: u32) -> &mut Self {
        self.msg(
            2,
            0,
            msg_type::SET_CHUNK_SIZE,
            0,
            size.to_be_bytes().to_vec(),
        );
        self.enc.set_chunk_size(size);
        self
    }
    pub fn command(&mut self, msid: u32, values: &[Value]) -> &mut Self {
        self.msg(3, 0, msg_type::COMMAND_AMF0, msid, amf0::encode_all(values))
    }
    pub fn take(&mut self) -> BytesMut {
        self.buf.split()
    }
}

pub fn connect_cmd(app: &str, tc_url: Option<&str>) -> Vec<Value> {
    let mut props = vec![
        ("app".to_string(), Value::from(app)),
        ("type".to_string(), "nonprivate".into()),
        (
            "flashVer".to_string(),
            "FMLE/3.0 (compatible; Lavf61.7.100)".into(),
        ),
    ];
    if let Some(t) = tc_url {
        props.push(("tcUrl".to_string(), t.into()));
    }
    vec!["connect".into(), 1.0.into(), Value::Object(props)]
}

pub fn cmd(name: &str, txn: f64, args: &[Value]) -> Vec<Value> {
    let mut v = vec![name.into(), txn.into(), Value::Null];
    v.extend_from_slice(args);
    v
}

/// A session that has completed the handshake.
pub fn session_after_handshake(config: ServerConfig) -> ServerSession {
    let mut s = ServerSession::new(config);
    let mut buf = BytesMut::from(&client_handshake()[..]);
    s.handle_input(&mut buf).unwrap();
    assert!(s.is_handshake_done());
    assert!(buf.is_empty());
    s.take_output().unwrap();
    s
}

pub fn events(s: &mut ServerSession) -> Vec<ServerEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Reads the server's output (after the handshake) as messages, using our own decoder
/// and following the server's Set Chunk Size.
pub struct ServerOutput {
    dec: ChunkDecoder,
    buf: BytesMut,
}

impl ServerOutput {
    pub fn new() -> Self {
        ServerOutput {
            dec: ChunkDecoder::new(1 << 24, 64),
            buf: BytesMut::new(),
        }
    }
    pub fn read(&mut self, s: &mut ServerSession) -> Vec<Message> {
        while let Some(b) = s.take_output() {
            self.buf.extend_from_slice(&b);
        }
        decode_all(&mut self.dec, &mut self.buf).unwrap()
    }
}

/// AMF0 values of every command message in `msgs`.
pub fn commands(msgs: &[Message]) -> Vec<Vec<Value>> {
    msgs.iter()
        .filter(|m| m.type_id == msg_type::COMMAND_AMF0)
        .map(|m| amf0::decode_all(&m.payload).unwrap())
        .collect()
}

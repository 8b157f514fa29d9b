//! Server side of the RTMP handshake: C0C1 → S0S1S2 → C2.
//!
//! Both forms are accepted (R-IN-1): the "complex" handshake of Flash Player and
//! librtmp/OBS, where C1 carries an HMAC-SHA256 digest that must be answered with digests
//! made with the Flash Media Server key, and the "simple" one of the RTMP 1.0 spec, where
//! S2 echoes C1 (ffmpeg, GStreamer). When C1 has no valid digest we fall back to simple
//! (reliability.md H2). Memory use is fixed: C0C1 and C2 are read from the caller's buffer.

use bytes::{Buf, BufMut, BytesMut};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::error::SessionError;

/// Size of C1, C2, S1 and S2.
pub const PACKET_LEN: usize = 1536;
pub const RTMP_VERSION: u8 = 3;
const DIGEST_LEN: usize = 32;
/// Where the two digest schemes keep the 4 offset bytes (digest block first, or key first).
const DIGEST_SCHEME_BASES: [usize; 2] = [8, 772];

const FMS_KEY_TEXT: &[u8] = b"Genuine Adobe Flash Media Server 001";
const FP_KEY_TEXT: &[u8] = b"Genuine Adobe Flash Player 001";
/// The 32 bytes that follow the text in both the Flash Player and the FMS key.
const KEY_SUFFIX: [u8; 32] = [
    0xF0, 0xEE, 0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8, 0x2E, 0x00, 0xD0, 0xD1, 0x02, 0x9E, 0x7E, 0x57,
    0x6E, 0xEC, 0x5D, 0x2D, 0x29, 0x80, 0x6F, 0xAB, 0x93, 0xB8, 0xE6, 0x36, 0xCF, 0xEB, 0x31, 0xAE,
];
/// Version field we put in a complex S1 (what nginx-rtmp sends).
const SERVER_VERSION: [u8; 4] = [0x0D, 0x0E, 0x0A, 0x0D];

type HmacSha256 = Hmac<Sha256>;

/// The 68-byte FMS key: the 36-byte text followed by the 32 standard bytes.
pub fn fms_key_full() -> Vec<u8> {
    let mut k = FMS_KEY_TEXT.to_vec();
    k.extend_from_slice(&KEY_SUFFIX);
    k
}

/// The 36-byte text part of the FMS key, used for the digest in S1.
pub fn fms_key_text() -> &'static [u8] {
    FMS_KEY_TEXT
}

/// The 30-byte text part of the Flash Player key, used for the digest in C1.
pub fn fp_key_text() -> &'static [u8] {
    FP_KEY_TEXT
}

/// The 62-byte Flash Player key, used by clients to check S2.
pub fn fp_key_full() -> Vec<u8> {
    let mut k = FP_KEY_TEXT.to_vec();
    k.extend_from_slice(&KEY_SUFFIX);
    k
}

fn hmac_parts(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Position of the digest inside a 1536-byte packet for the scheme whose offset bytes are
/// at `base`: the sum of the 4 offset bytes mod 728, after them.
pub fn digest_position(packet: &[u8], base: usize) -> Option<usize> {
    let off = packet.get(base..base + 4)?;
    let sum: usize = off.iter().map(|&b| usize::from(b)).sum();
    Some(base + 4 + sum % 728)
}

/// HMAC over the packet with the 32 digest bytes at `pos` left out.
pub fn packet_digest(packet: &[u8], pos: usize, key: &[u8]) -> Option<[u8; 32]> {
    let before = packet.get(..pos)?;
    let after = packet.get(pos + DIGEST_LEN..)?;
    Some(hmac_parts(key, &[before, after]))
}

/// Finds a valid Flash Player digest in C1, trying both schemes; returns (scheme base,
/// digest).
fn find_c1_digest(c1: &[u8]) -> Option<(usize, [u8; 32])> {
    DIGEST_SCHEME_BASES.iter().find_map(|&base| {
        let pos = digest_position(c1, base)?;
        let want = packet_digest(c1, pos, FP_KEY_TEXT)?;
        let got = c1.get(pos..pos + DIGEST_LEN)?;
        // Not secret material, but compare in constant time anyway: it costs nothing.
        let eq = got
            .iter()
            .zip(want.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        eq.then(|| {
            let mut d = [0u8; 32];
            d.copy_from_slice(got);
            (base, d)
        })
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for C0 (1 byte) + C1 (1536 bytes).
    C0C1,
    /// S0S1S2 sent; waiting for C2.
    C2,
    Done,
}

/// Which handshake the client used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeKind {
    Simple,
    /// Complex, with the C1 digest at the scheme whose offset bytes start at this base.
    Complex {
        scheme_base: usize,
    },
}

#[derive(Debug)]
pub struct Handshake {
    state: State,
    kind: Option<HandshakeKind>,
}

impl Default for Handshake {
    fn default() -> Self {
        Self::new()
    }
}

impl Handshake {
    pub fn new() -> Self {
        Self {
            state: State::C0C1,
            kind: None,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The handshake form the client used, once C1 was read.
    pub fn kind(&self) -> Option<HandshakeKind> {
        self.kind
    }

    /// Consumes handshake bytes from `buf`, appends replies to `out`; returns the number of
    /// bytes consumed. Stops at the end of C2 so chunk data after it stays in `buf`.
    pub fn handle(
        &mut self,
        buf: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<usize, SessionError> {
        let mut consumed = 0;
        loop {
            match self.state {
                State::C0C1 => {
                    // H1: judge C0 as soon as it arrives; no need to wait for C1.
                    let Some(&version) = buf.first() else {
                        return Ok(consumed);
                    };
                    if version != RTMP_VERSION {
                        return Err(SessionError::BadVersion {
                            version,
                            looks_like: looks_like(version),
                        });
                    }
                    let Some(c1) = buf.get(1..1 + PACKET_LEN) else {
                        return Ok(consumed);
                    };
                    self.reply(c1, out);
                    buf.advance(1 + PACKET_LEN);
                    consumed += 1 + PACKET_LEN;
                    self.state = State::C2;
                }
                State::C2 => {
                    // C2's content is not checked: librtmp and ffmpeg send a C2 that would not
                    // verify against our S1 in several combinations, and nothing depends on it.
                    if buf.len() < PACKET_LEN {
                        return Ok(consumed);
                    }
                    buf.advance(PACKET_LEN);
                    consumed += PACKET_LEN;
                    self.state = State::Done;
                }
                State::Done => return Ok(consumed),
            }
        }
    }

    fn reply(&mut self, c1: &[u8], out: &mut BytesMut) {
        let mut rng = rand::rng();
        let mut s1 = [0u8; PACKET_LEN];
        rng.fill_bytes(&mut s1);
        out.reserve(1 + 2 * PACKET_LEN);
        out.put_u8(RTMP_VERSION);
        match find_c1_digest(c1) {
            Some((base, c1_digest)) => {
                self.kind = Some(HandshakeKind::Complex { scheme_base: base });
                // S1: time 0 (no clock in a sans-IO core), our version, digest made with
                // the FMS key at the same scheme the client used.
                s1[..4].copy_from_slice(&[0; 4]);
                s1[4..8].copy_from_slice(&SERVER_VERSION);
                if let Some(pos) = digest_position(&s1, base) {
                    if let Some(d) = packet_digest(&s1, pos, FMS_KEY_TEXT) {
                        s1[pos..pos + DIGEST_LEN].copy_from_slice(&d);
                    }
                }
                out.put_slice(&s1);
                // S2: random, ending with HMAC(HMAC(full FMS key, C1 digest), S2[..1504]).
                let mut s2 = [0u8; PACKET_LEN];
                rng.fill_bytes(&mut s2);
                let key = hmac_parts(&fms_key_full(), &[&c1_digest]);
                let sig = hmac_parts(&key, &[&s2[..PACKET_LEN - DIGEST_LEN]]);
                s2[PACKET_LEN - DIGEST_LEN..].copy_from_slice(&sig);
                out.put_slice(&s2);
            }
            None => {
                self.kind = Some(HandshakeKind::Simple);
                // Simple handshake: S1 = time 0, zero, random; S2 = echo of C1.
                s1[..8].copy_from_slice(&[0; 8]);
                out.put_slice(&s1);
                out.put_slice(c1);
            }
        }
    }
}

/// What a wrong C0 usually means, for the log line (H1).
fn looks_like(version: u8) -> &'static str {
    match version {
        0x06 | 0x08 => "RTMPE (encrypted RTMP), which is not supported",
        0x16 => "a TLS ClientHello: RTMPS sent to the plain RTMP port",
        b'G' | b'P' | b'H' | b'O' => "an HTTP request",
        _ => "garbage or an unknown protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a C1 whose digest is valid for the scheme at `base`.
    pub(crate) fn complex_c1(base: usize) -> Vec<u8> {
        let mut c1 = vec![0u8; PACKET_LEN];
        for (i, b) in c1.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        c1[4..8].copy_from_slice(&[0x80, 0x00, 0x07, 0x02]);
        let pos = digest_position(&c1, base).unwrap();
        let d = packet_digest(&c1, pos, FP_KEY_TEXT).unwrap();
        c1[pos..pos + 32].copy_from_slice(&d);
        c1
    }

    fn run(c1: &[u8]) -> (Handshake, Vec<u8>) {
        let mut hs = Handshake::new();
        let mut buf = BytesMut::new();
        buf.put_u8(3);
        buf.put_slice(c1);
        let mut out = BytesMut::new();
        let n = hs.handle(&mut buf, &mut out).unwrap();
        assert_eq!(n, 1537);
        assert!(buf.is_empty());
        assert!(!hs.is_done());
        (hs, out.to_vec())
    }

    #[test]
    fn simple_handshake_echoes_c1() {
        let mut c1 = vec![0u8; PACKET_LEN];
        for (i, b) in c1.iter_mut().enumerate().skip(8) {
            *b = (i % 251) as u8;
        }
        let (mut hs, out) = run(&c1);
        assert_eq!(hs.kind(), Some(HandshakeKind::Simple));
        assert_eq!(out.len(), 1 + 2 * PACKET_LEN);
        assert_eq!(out[0], 3);
        assert_eq!(&out[1 + PACKET_LEN..], &c1[..]);
        let mut buf = BytesMut::from(&[0u8; PACKET_LEN][..]);
        buf.put_slice(b"rest");
        let mut o = BytesMut::new();
        assert_eq!(hs.handle(&mut buf, &mut o).unwrap(), PACKET_LEN);
        assert!(hs.is_done());
        assert_eq!(&buf[..], b"rest");
    }

    #[test]
    fn complex_handshake_both_schemes() {
        for base in DIGEST_SCHEME_BASES {
            let c1 = complex_c1(base);
            let (hs, out) = run(&c1);
            assert_eq!(
                hs.kind(),
                Some(HandshakeKind::Complex { scheme_base: base })
            );
            let s1 = &out[1..1 + PACKET_LEN];
            let s2 = &out[1 + PACKET_LEN..];
            // S1 carries a digest valid under the FMS key, at the client's scheme.
            let pos = digest_position(s1, base).unwrap();
            let want = packet_digest(s1, pos, FMS_KEY_TEXT).unwrap();
            assert_eq!(&s1[pos..pos + 32], &want);
            // S2's last 32 bytes: HMAC(HMAC(68-byte FMS key, C1 digest), S2[..1504]).
            let c1pos = digest_position(&c1, base).unwrap();
            let key = hmac_parts(&fms_key_full(), &[&c1[c1pos..c1pos + 32]]);
            let sig = hmac_parts(&key, &[&s2[..1504]]);
            assert_eq!(&s2[1504..], &sig);
            assert_eq!(fms_key_full().len(), 68);
        }
    }

    #[test]
    fn corrupted_digest_falls_back_to_simple() {
        let mut c1 = complex_c1(772);
        let pos = digest_position(&c1, 772).unwrap();
        c1[pos] ^= 1;
        let (hs, out) = run(&c1);
        assert_eq!(hs.kind(), Some(HandshakeKind::Simple));
        assert_eq!(&out[1 + PACKET_LEN..], &c1[..]);
    }

    #[test]
    fn bad_version_is_refused_on_first_byte() {
        for (v, word) in [
            (0x06, "RTMPE"),
            (0x16, "TLS"),
            (b'G', "HTTP"),
            (0, "garbage"),
        ] {
            let mut hs = Handshake::new();
            let mut buf = BytesMut::from(&[v][..]);
            let mut out = BytesMut::new();
            let err = hs.handle(&mut buf, &mut out).unwrap_err();
            assert!(err.to_string().contains(word), "{err}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let c1 = complex_c1(8);
        let mut input = vec![3u8];
        input.extend_from_slice(&c1);
        input.extend_from_slice(&[9u8; PACKET_LEN]);
        let mut hs = Handshake::new();
        let mut buf = BytesMut::new();
        let mut out = BytesMut::new();
        let mut total = 0;
        for b in input {
            buf.put_u8(b);
            total += hs.handle(&mut buf, &mut out).unwrap();
        }
        assert!(hs.is_done());
        assert_eq!(total, 1 + 2 * PACKET_LEN);
        assert_eq!(out.len(), 1 + 2 * PACKET_LEN);
    }
}

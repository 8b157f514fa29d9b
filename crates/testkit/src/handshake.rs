//! Client side of the RTMP handshake: the simple one (C1 with a zero version field) and
//! the "complex" one Flash Player uses (C1 carries an HMAC-SHA256 digest keyed with
//! "Genuine Adobe Flash Player 001", digest scheme 0 or 1).

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

pub const HANDSHAKE_SIZE: usize = 1536;
const DIGEST_LEN: usize = 32;

const KEY_TAIL: [u8; 32] = [
    0xF0, 0xEE, 0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8, 0x2E, 0x00, 0xD0, 0xD1, 0x02, 0x9E, 0x7E, 0x57,
    0x6E, 0xEC, 0x5D, 0x2D, 0x29, 0x80, 0x6F, 0xAB, 0x93, 0xB8, 0xE6, 0x36, 0xCF, 0xEB, 0x31, 0xAE,
];
/// The client key (its first 30 bytes sign C1).
pub const FP_KEY_TEXT: &[u8] = b"Genuine Adobe Flash Player 001";
/// The server key (its first 36 bytes sign S1).
pub const FMS_KEY_TEXT: &[u8] = b"Genuine Adobe Flash Media Server 001";

fn full_key(text: &[u8]) -> Vec<u8> {
    let mut k = text.to_vec();
    k.extend_from_slice(&KEY_TAIL);
    k
}

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Offset of the digest in a 1536-byte C1/S1 for digest scheme 0 or 1.
pub fn digest_offset(block: &[u8], scheme: u8) -> usize {
    let base = if scheme == 0 { 8 } else { 772 };
    let s: usize = block[base..base + 4].iter().map(|&b| b as usize).sum();
    s % 728 + base + 4
}

fn digest_over(block: &[u8], off: usize, key: &[u8]) -> [u8; 32] {
    hmac_sha256(key, &[&block[..off], &block[off + DIGEST_LEN..]])
}

/// Which scheme (0 or 1) carries a valid digest keyed with `key_text` (the partial
/// key: 30 bytes for a client, 36 for a server), and where it is.
fn find_digest(block: &[u8], key_text: &[u8]) -> Option<(u8, usize)> {
    if block.len() != HANDSHAKE_SIZE {
        return None;
    }
    [0u8, 1].into_iter().find_map(|scheme| {
        let off = digest_offset(block, scheme);
        (digest_over(block, off, key_text) == block[off..off + DIGEST_LEN]).then_some((scheme, off))
    })
}

/// Validates a C1 as a server would: `Some(scheme)` when it carries a valid Flash Player
/// digest.
pub fn c1_digest_scheme(c1: &[u8]) -> Option<u8> {
    find_digest(c1, FP_KEY_TEXT).map(|(s, _)| s)
}

/// Builds C1. Simple: time, zero version, random. Complex: time, Flash Player version
/// 9.0.124.2, random, with the client digest at the position `scheme` defines.
pub fn make_c1(complex: bool, scheme: u8) -> Vec<u8> {
    let mut c1 = vec![0u8; HANDSHAKE_SIZE];
    rand::rng().fill(&mut c1[8..]);
    if complex {
        c1[4..8].copy_from_slice(&[9, 0, 124, 2]);
        let off = digest_offset(&c1, scheme);
        let d = digest_over(&c1, off, FP_KEY_TEXT);
        c1[off..off + DIGEST_LEN].copy_from_slice(&d);
    }
    c1
}

/// Builds C2 from S1. When S1 carries a valid server digest (complex handshake), C2 is
/// random bytes signed with a key derived from that digest, as Flash Player does;
/// otherwise C2 echoes S1 (simple handshake).
pub fn make_c2(s1: &[u8]) -> Vec<u8> {
    match find_digest(s1, FMS_KEY_TEXT) {
        Some((_, off)) => {
            let key = hmac_sha256(&full_key(FP_KEY_TEXT), &[&s1[off..off + DIGEST_LEN]]);
            let mut c2 = vec![0u8; HANDSHAKE_SIZE];
            rand::rng().fill(&mut c2[..]);
            let sig = hmac_sha256(&key, &[&c2[..HANDSHAKE_SIZE - DIGEST_LEN]]);
            c2[HANDSHAKE_SIZE - DIGEST_LEN..].copy_from_slice(&sig);
            c2
        }
        None => s1.to_vec(),
    }
}

/// Builds a complex S1 (for in-test servers): version nonzero, server digest scheme 0.
pub fn make_complex_s1() -> Vec<u8> {
    let mut s1 = vec![0u8; HANDSHAKE_SIZE];
    rand::rng().fill(&mut s1[8..]);
    s1[4..8].copy_from_slice(&[4, 5, 0, 1]);
    let off = digest_offset(&s1, 0);
    let d = digest_over(&s1, off, FMS_KEY_TEXT);
    s1[off..off + DIGEST_LEN].copy_from_slice(&d);
    s1
}

/// Checks a C2 against the S1 it answers (complex handshake): the signature keyed with
/// HMAC(full FP key, S1 digest).
pub fn c2_valid_for(s1: &[u8], c2: &[u8]) -> bool {
    let Some((_, off)) = find_digest(s1, FMS_KEY_TEXT) else {
        return c2 == s1;
    };
    let key = hmac_sha256(&full_key(FP_KEY_TEXT), &[&s1[off..off + DIGEST_LEN]]);
    c2.len() == HANDSHAKE_SIZE
        && hmac_sha256(&key, &[&c2[..HANDSHAKE_SIZE - DIGEST_LEN]])[..]
            == c2[HANDSHAKE_SIZE - DIGEST_LEN..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complex_c1_carries_a_valid_digest_in_either_scheme() {
        for scheme in [0, 1] {
            for _ in 0..20 {
                let c1 = make_c1(true, scheme);
                assert_eq!(c1_digest_scheme(&c1), Some(scheme));
            }
        }
        // A simple C1 has (overwhelmingly likely) no valid digest.
        assert_eq!(c1_digest_scheme(&make_c1(false, 0)), None);
        assert_eq!(&make_c1(false, 0)[4..8], &[0, 0, 0, 0]);
    }

    #[test]
    fn c2_answers_a_complex_s1_and_echoes_a_simple_one() {
        let s1 = make_complex_s1();
        let c2 = make_c2(&s1);
        assert!(c2_valid_for(&s1, &c2));
        assert_ne!(c2, s1);
        let simple = make_c1(false, 0);
        assert_eq!(make_c2(&simple), simple);
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let d = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            d[..4],
            [0x5b, 0xdc, 0xc1, 0x46],
            "HMAC-SHA256 test vector (RFC 4231 #2)"
        );
    }
}

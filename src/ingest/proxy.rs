//! PROXY protocol v1/v2 on the RTMP and RTMPS listeners (issue 15, R-SC-1): behind a TCP
//! load balancer (HAProxy `send-proxy`, an AWS NLB with proxy protocol on) every
//! connection starts with a header naming the real client, and that address replaces the
//! socket's peer for the per-IP limit, the publish auth hooks, the logs and `/v1/streams`.
//!
//! The header is parsed by the `ppp` crate; only the framing — how many bytes to read —
//! is written here, because `ppp` parses a byte slice and does no I/O. The framing reads
//! byte-exact: never a byte past the header, so what follows it (the RTMP handshake, or
//! the TLS ClientHello on the RTMPS listener) stays in the socket for the code after, and
//! the connection goes on as the very same `TcpStream` — no prefixed-reader wrapper on
//! the hot path, no second type of socket for the connection handler.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::v2::{Addresses, Command, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// The v2 signature (the spec's section 2.2), 12 bytes.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the spec's section 2.1).
pub const V1_MAX: usize = 107;
/// The shortest valid v1 header: `PROXY UNKNOWN\r\n`.
const V1_MIN: usize = 15;
/// The v2 fixed part: signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;
/// Most address and TLV bytes a v2 header may announce. IPv6 addresses take 36 and
/// HAProxy's and AWS's TLVs (ALPN, authority, CRC, unique id, SSL, VPC endpoint id) a few
/// hundred; the 16-bit length field would allow 64 KiB, which an unauthenticated peer
/// could make us buffer per connection. 4096 leaves room for every TLV seen in practice.
pub const V2_MAX_PAYLOAD: usize = 4096;

/// Why a connection's PROXY header was refused (the connection is then closed).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY header within {0:?} (rtmp.handshake_timeout)")]
    Timeout(Duration),
    #[error("socket error while reading the PROXY header: {0}")]
    Io(#[source] std::io::Error),
    #[error("connection closed after {got} bytes, before the PROXY header ended")]
    Closed { got: usize },
    /// `start`: the first bytes, ASCII-escaped.
    #[error("no PROXY header: the connection starts with \"{start}\"")]
    Missing { start: String },
    #[error("PROXY v1 header has no CRLF within {V1_MAX} bytes")]
    V1TooLong,
    #[error("PROXY v1 header has a line feed without a carriage return")]
    V1BareLf,
    #[error("bad PROXY v1 header: {0}")]
    V1(#[source] ppp::v1::BinaryParseError),
    #[error("PROXY v2 header announces {len} bytes of addresses and TLVs; at most {V2_MAX_PAYLOAD} are accepted")]
    V2TooLong { len: usize },
    #[error("bad PROXY v2 header: {0}")]
    V2(#[source] ppp::v2::ParseError),
    #[error("PROXY v2 header is for {0}, not a TCP connection")]
    V2NotTcp(&'static str),
}

/// Reads one PROXY header from `io` within `limit`. `Ok(Some(addr))`: the client the
/// header names; `Ok(None)`: a v2 LOCAL command, v1 `UNKNOWN` or a v2 UNSPEC family —
/// the balancer's own connection (a health check), which keeps the socket's address.
pub async fn read_header_within<R: AsyncRead + Unpin>(
    io: &mut R,
    limit: Duration,
) -> Result<Option<SocketAddr>, ProxyError> {
    // One deadline for the whole header, not per read: a peer trickling one byte at a
    // time is dropped all the same.
    tokio::time::timeout_at(Instant::now() + limit, read_header(io))
        .await
        .unwrap_or(Err(ProxyError::Timeout(limit)))
}

/// [`read_header_within`] without the deadline.
pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut buf = Vec::with_capacity(V1_MAX);
    // First the v2 signature's 12 bytes: fewer than the shortest v1 header (15), so this
    // reads past neither kind. Each read is checked at once, so garbage is refused on its
    // first bytes instead of waiting for the rest.
    while buf.len() < V2_SIGNATURE.len() {
        fill(io, &mut buf, V2_SIGNATURE.len(), 1).await?;
        if !V2_SIGNATURE.starts_with(&buf) && !b"PROXY ".starts_with(&buf[..buf.len().min(6)]) {
            return Err(missing(&buf));
        }
    }
    if buf.as_slice() == V2_SIGNATURE {
        read_v2(io, buf).await
    } else if buf.starts_with(b"PROXY ") {
        read_v1(io, buf).await
    } else {
        Err(missing(&buf))
    }
}

fn missing(start: &[u8]) -> ProxyError {
    ProxyError::Missing {
        start: start.escape_ascii().to_string(),
    }
}

/// Reads until `buf` holds `upto` bytes, or at least `min_new` more when that comes
/// first (one read may return less than asked). Never reads past `upto`.
async fn fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
    upto: usize,
    min_new: usize,
) -> Result<(), ProxyError> {
    let start = buf.len();
    let mut have = start;
    buf.resize(upto, 0);
    while have < upto && have - start < min_new {
        match io.read(&mut buf[have..upto]).await {
            Ok(0) => {
                buf.truncate(have);
                return Err(ProxyError::Closed { got: have });
            }
            Ok(n) => have += n,
            Err(e) => {
                buf.truncate(have);
                return Err(ProxyError::Io(e));
            }
        }
    }
    buf.truncate(have);
    Ok(())
}

/// v1: a text line ending in CRLF. Its length is known only at the CRLF, so each read
/// asks for no more than the line must still hold: up to the shortest valid header
/// first, then 2 bytes (the CRLF could be next), 1 after a CR. Only a balancer's first
/// packet is read this way, ~20 small reads of bytes already in the kernel's buffer.
async fn read_v1<R: AsyncRead + Unpin>(
    io: &mut R,
    mut buf: Vec<u8>,
) -> Result<Option<SocketAddr>, ProxyError> {
    loop {
        match buf.iter().position(|&b| b == b'\r' || b == b'\n') {
            Some(i) if buf[i] == b'\n' => return Err(ProxyError::V1BareLf),
            // The CR and the byte after it: `ppp` refuses anything but CRLF.
            Some(i) if i + 1 < buf.len() => return parse_v1(&buf[..i + 2]),
            _ => {}
        }
        if buf.len() >= V1_MAX {
            return Err(ProxyError::V1TooLong);
        }
        let need = if buf.len() < V1_MIN {
            V1_MIN - buf.len()
        } else if buf.last() == Some(&b'\r') {
            1
        } else {
            2
        };
        let upto = (buf.len() + need).min(V1_MAX);
        let min_new = upto - buf.len();
        fill(io, &mut buf, upto, min_new).await?;
    }
}

fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use ppp::v1::Addresses as A;
    let header = ppp::v1::Header::try_from(line).map_err(ProxyError::V1)?;
    Ok(match header.addresses {
        A::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        A::Tcp6(a) => Some(SocketAddr::new(
            IpAddr::V6(a.source_address).to_canonical(),
            a.source_port,
        )),
        A::Unknown => None,
    })
}

/// v2: 16 fixed bytes, the last two the length of what follows; reads exactly that.
async fn read_v2<R: AsyncRead + Unpin>(
    io: &mut R,
    mut buf: Vec<u8>,
) -> Result<Option<SocketAddr>, ProxyError> {
    fill(io, &mut buf, V2_FIXED, V2_FIXED).await?;
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX_PAYLOAD {
        return Err(ProxyError::V2TooLong { len });
    }
    // A bad version, command, family or a length too short for the family is refused
    // before its payload is waited for; only "incomplete" goes on reading.
    match ppp::v2::Header::try_from(buf.as_slice()) {
        Ok(_) | Err(ppp::v2::ParseError::Partial(..)) => {}
        Err(e) => return Err(ProxyError::V2(e)),
    }
    fill(io, &mut buf, V2_FIXED + len, len).await?;
    let header = ppp::v2::Header::try_from(buf.as_slice()).map_err(ProxyError::V2)?;
    // TLVs are not looked at: nothing here needs them (`ppp` does not read them unless
    // asked, so a malformed one cannot refuse the connection either).
    if header.command == Command::Local {
        return Ok(None);
    }
    match (header.addresses, header.protocol) {
        (Addresses::IPv4(a), Protocol::Stream) => Ok(Some(SocketAddr::new(
            a.source_address.into(),
            a.source_port,
        ))),
        (Addresses::IPv6(a), Protocol::Stream) => Ok(Some(SocketAddr::new(
            IpAddr::V6(a.source_address).to_canonical(),
            a.source_port,
        ))),
        // The spec: UNSPEC is sent for protocols the sender cannot describe, and "the
        // receiver is free to accept the connection anyway and use the real endpoint
        // addresses". Like v1 `UNKNOWN`.
        (Addresses::Unspecified, _) => Ok(None),
        (Addresses::Unix(_), _) => Err(ProxyError::V2NotTcp("a UNIX socket")),
        (_, Protocol::Datagram) => Err(ProxyError::V2NotTcp("UDP")),
        (_, Protocol::Unspecified) => Err(ProxyError::V2NotTcp("an unspecified transport")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Hand-built v2 header (the spec's section 2.2), independent of `ppp`'s builder.
    fn v2(ver_cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    fn v2_tcp4(src: [u8; 4], sport: u16, tlvs: &[u8]) -> Vec<u8> {
        let mut p = src.to_vec();
        p.extend_from_slice(&[127, 0, 0, 1]);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&1935u16.to_be_bytes());
        p.extend_from_slice(tlvs);
        v2(0x21, 0x11, &p)
    }

    /// Feeds `chunks` as separate writes (separate TCP segments on a real socket) and
    /// returns the header's result and what the reader left unread.
    async fn run(chunks: Vec<Vec<u8>>) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for c in chunks {
                if client.write_all(&c).await.is_err() {
                    return;
                }
                client.flush().await.ok();
                tokio::task::yield_now().await;
            }
        });
        let r = read_header(&mut server).await;
        // A failed header leaves the rest unread; the writer may block on a full pipe.
        if r.is_err() {
            writer.abort();
            return (r, Vec::new());
        }
        // Ends when the writer is done and drops its end.
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("rest");
        writer.await.expect("writer");
        (r, rest)
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("addr"))
    }

    #[tokio::test]
    async fn v1_tcp4_leaves_the_rtmp_handshake_unread() {
        let mut input = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 1935\r\n".to_vec();
        input.extend_from_slice(&[3, 0, 0, 0, 0, 9, 9]);
        let (r, rest) = run(vec![input]).await;
        assert_eq!(r.expect("header"), addr("203.0.113.7:40000"));
        assert_eq!(rest, [3, 0, 0, 0, 0, 9, 9]);
    }

    #[tokio::test]
    async fn v1_tcp6_unknown_and_split_reads() {
        let line = b"PROXY TCP6 2001:db8::1 ::1 5000 1935\r\n\x03rest".to_vec();
        // One byte per segment: the CR and LF in different segments too.
        let (r, rest) = run(line.iter().map(|&b| vec![b]).collect()).await;
        assert_eq!(r.expect("header"), addr("[2001:db8::1]:5000"));
        assert_eq!(rest, b"\x03rest");

        let (r, rest) = run(vec![b"PROXY UNKNOWN\r\n\x03".to_vec()]).await;
        assert_eq!(r.expect("header"), None);
        assert_eq!(rest, b"\x03");
        // UNKNOWN may carry addresses; they are ignored (the spec).
        let (r, _) = run(vec![b"PROXY UNKNOWN ::1 ::1 1 2\r\n".to_vec()]).await;
        assert_eq!(r.expect("header"), None);
    }

    #[tokio::test]
    async fn v1_ipv4_mapped_ipv6_counts_as_ipv4() {
        let (r, _) = run(vec![
            b"PROXY TCP6 ::ffff:198.51.100.2 ::1 5000 1935\r\n".to_vec()
        ])
        .await;
        assert_eq!(r.expect("header"), addr("198.51.100.2:5000"));
    }

    #[tokio::test]
    async fn v1_without_crlf_within_107_bytes_is_refused() {
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(300, b'1');
        let (r, _) = run(vec![long]).await;
        assert!(matches!(r, Err(ProxyError::V1TooLong)), "{r:?}");
        // Exactly 107 bytes with the CRLF last is the longest allowed: it parses (as
        // UNKNOWN, whose address part is ignored).
        let mut max = b"PROXY UNKNOWN ".to_vec();
        max.resize(V1_MAX - 2, b'x');
        max.extend_from_slice(b"\r\n");
        let (r, _) = run(vec![max]).await;
        assert_eq!(r.expect("107 bytes"), None);
    }

    #[tokio::test]
    async fn v1_malformed_lines_are_refused() {
        for bad in [
            &b"PROXY TCP4 203.0.113.7 127.0.0.1 40000\r\n"[..],
            b"PROXY TCP4 203.0.113.777 127.0.0.1 40000 1935\r\n",
            b"PROXY TCP4 2001:db8::1 127.0.0.1 40000 1935\r\n",
            b"PROXY TCP4 203.0.113.7 127.0.0.1 70000 1935\r\n",
            b"PROXY UDP4 203.0.113.7 127.0.0.1 40000 1935\r\n",
            b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 1935\rX\n",
        ] {
            let (r, _) = run(vec![bad.to_vec()]).await;
            assert!(
                matches!(r, Err(ProxyError::V1(_))),
                "{}: {r:?}",
                bad.escape_ascii()
            );
        }
        let (r, _) = run(vec![b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec()]).await;
        assert!(matches!(r, Err(ProxyError::V1BareLf)), "{r:?}");
    }

    #[tokio::test]
    async fn no_header_is_refused_on_its_first_bytes() {
        // A plain RTMP C0+C1: refused at the first byte, without waiting for 12.
        let (r, _) = run(vec![vec![3]]).await;
        assert!(matches!(r, Err(ProxyError::Missing { .. })), "{r:?}");
        let (r, _) = run(vec![b"GET / HTTP/1.1\r\n\r\n".to_vec()]).await;
        assert!(matches!(r, Err(ProxyError::Missing { .. })), "{r:?}");
        let (r, _) = run(vec![b"PROXZ".to_vec()]).await;
        assert!(matches!(r, Err(ProxyError::Missing { .. })), "{r:?}");
        // Closed mid-header.
        let (r, _) = run(vec![b"PROXY TCP4 1.2".to_vec()]).await;
        assert!(matches!(r, Err(ProxyError::Closed { got: 14 })), "{r:?}");
    }

    #[tokio::test]
    async fn v2_tcp4_with_tlvs_split_across_segments() {
        // A NOOP TLV (type 0x04) and an AWS-style custom one (0xEA): skipped.
        let tlvs = [0x04, 0, 2, 0, 0, 0xEA, 0, 3, 1, 2, 3];
        let mut input = v2_tcp4([203, 0, 113, 7], 40000, &tlvs);
        let header_len = input.len();
        input.extend_from_slice(b"\x03C1");
        // Split inside the signature, inside the length field and inside a TLV.
        let chunks = vec![
            input[..5].to_vec(),
            input[5..15].to_vec(),
            input[15..30].to_vec(),
            input[30..].to_vec(),
        ];
        assert!(header_len > 30);
        let (r, rest) = run(chunks).await;
        assert_eq!(r.expect("header"), addr("203.0.113.7:40000"));
        assert_eq!(rest, b"\x03C1");
    }

    #[tokio::test]
    async fn v2_tcp6_local_and_unspec() {
        let mut p = "2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        p.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        p.extend_from_slice(&[0x9c, 0x40, 0x07, 0x8f]);
        let (r, _) = run(vec![v2(0x21, 0x21, &p)]).await;
        assert_eq!(r.expect("v6"), addr("[2001:db8::7]:40000"));
        // LOCAL: the balancer's own connection, even with addresses in it.
        let mut local = v2_tcp4([203, 0, 113, 7], 40000, &[]);
        local[12] = 0x20;
        local.extend_from_slice(b"\x03");
        let (r, rest) = run(vec![local]).await;
        assert_eq!(r.expect("local"), None);
        assert_eq!(rest, b"\x03");
        let (r, _) = run(vec![v2(0x20, 0x00, &[])]).await;
        assert_eq!(r.expect("local, no addresses"), None);
        let (r, _) = run(vec![v2(0x21, 0x00, &[])]).await;
        assert_eq!(r.expect("proxy, UNSPEC"), None);
    }

    #[tokio::test]
    async fn v2_bad_headers_are_refused() {
        // The length field past the bound: refused before any payload is read.
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let (r, _) = run(vec![big]).await;
        assert!(
            matches!(r, Err(ProxyError::V2TooLong { len: 65535 })),
            "{r:?}"
        );
        let mut just = V2_SIGNATURE.to_vec();
        just.extend_from_slice(&[0x21, 0x11]);
        just.extend_from_slice(&(V2_MAX_PAYLOAD as u16 + 1).to_be_bytes());
        let (r, _) = run(vec![just]).await;
        assert!(matches!(r, Err(ProxyError::V2TooLong { .. })), "{r:?}");
        // Version 1 in the binary form, command 2, family 4, length too short for IPv4.
        for (vc, fam, len) in [
            (0x11, 0x11, 12),
            (0x22, 0x11, 12),
            (0x21, 0x41, 12),
            (0x21, 0x11, 4),
        ] {
            let (r, _) = run(vec![v2(vc, fam, &vec![0; len])]).await;
            assert!(matches!(r, Err(ProxyError::V2(_))), "{vc:x} {fam:x}: {r:?}");
        }
        // UDP and UNIX sources are not TCP clients.
        let (r, _) = run(vec![v2(0x21, 0x12, &[0; 12])]).await;
        assert!(matches!(r, Err(ProxyError::V2NotTcp(_))), "{r:?}");
        let (r, _) = run(vec![v2(0x21, 0x31, &[0; 216])]).await;
        assert!(matches!(r, Err(ProxyError::V2NotTcp(_))), "{r:?}");
        // Truncated: the peer closes inside the addresses.
        let mut cut = v2_tcp4([203, 0, 113, 7], 40000, &[]);
        cut.truncate(20);
        let (r, _) = run(vec![cut]).await;
        assert!(matches!(r, Err(ProxyError::Closed { got: 20 })), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out() {
        let (_client, mut server) = tokio::io::duplex(64);
        let r = read_header_within(&mut server, Duration::from_secs(10)).await;
        assert!(matches!(r, Err(ProxyError::Timeout(_))), "{r:?}");
    }
}

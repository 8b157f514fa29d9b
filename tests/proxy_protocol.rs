//! Issue 15 (R-SC-1), PROXY protocol on the RTMP listener: behind a TCP balancer the
//! header's source address is the client's — for `/v1/streams` "peer" and for
//! `max_connections_per_ip`. A connection without a valid header is closed with a log
//! line naming why; with `proxy_protocol = false` a header is not taken as one.
//!
//! The v1 lines and v2 bytes are built here by hand from the protocol's text (HAProxy's
//! proxy-protocol.txt, sections 2.1 and 2.2), not with the parser the daemon uses.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Daemon;
use flv::FileTag;
use testkit::{PublishError, PublishOptions, PublishStats};

const FLV: &str = "[record]\ndefault_template = 1\n[[template]]\nid = 1\nflv = { enable = true, record_interval = 600 }\n";

fn v1(src: &str, sport: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 {sport} 1935\r\n").into_bytes()
}

/// The v2 signature (section 2.2).
const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY command over TCP/IPv6 (0x21 = version 2, PROXY; 0x21 = AF_INET6, STREAM),
/// with one NOOP TLV the daemon must skip.
fn v2_tcp6(src: Ipv6Addr, sport: u16) -> Vec<u8> {
    let mut payload = src.octets().to_vec();
    payload.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    payload.extend_from_slice(&sport.to_be_bytes());
    payload.extend_from_slice(&1935u16.to_be_bytes());
    payload.extend_from_slice(&[0x04, 0x00, 0x03, 0xAA, 0xBB, 0xCC]); // PP2_TYPE_NOOP
    let mut h = SIG.to_vec();
    h.extend_from_slice(&[0x21, 0x21]);
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&payload);
    h
}

/// A v2 PROXY command over TCP/IPv4 (family byte 0x11), no TLVs.
fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut h = SIG.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&1935u16.to_be_bytes());
    h
}

/// What a balancer does: connects, writes the header, then relays the client's bytes —
/// here the testkit publisher's, on the same connection.
async fn publish_behind_proxy(
    d_rtmp: SocketAddr,
    header: Vec<u8>,
    url: String,
    tags: Arc<Vec<FileTag>>,
    opts: PublishOptions,
) -> Result<PublishStats, PublishError> {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(d_rtmp).await?;
    tcp.write_all(&header).await?;
    testkit::publish_flv_on(tcp, &url, &tags, &opts).await
}

fn live_for(secs: u64) -> PublishOptions {
    PublishOptions {
        realtime: true,
        duration: Some(Duration::from_secs(secs)),
        ..PublishOptions::default()
    }
}

fn wait_until(what: &str, d: &Daemon, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what}; log:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `"peer"` of each live stream, by stream name.
fn peers(d: &Daemon) -> Vec<(String, String)> {
    let (code, body) = d.api_get("/v1/streams");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let list = v
        .as_array()
        .or_else(|| v["streams"].as_array())
        .cloned()
        .unwrap_or_default();
    list.iter()
        .filter(|s| s["state"] == "live")
        .map(|s| {
            (
                s["stream"].as_str().unwrap_or_default().to_string(),
                s["peer"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Publishes `header` + RTMP for ~3 s, checks `/v1/streams` shows `want_peer` while live
/// and that the push was recorded.
fn publish_shows_peer(header: Vec<u8>, stream: &str, want_peer: &str) {
    let d = Daemon::start_with("proxy_protocol = true\n", FLV);
    let rt = common::rt();
    let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));
    let push = rt.spawn(publish_behind_proxy(
        d.rtmp,
        header,
        d.url("live", stream),
        tags,
        live_for(3),
    ));
    wait_until("the push is live with the header's address", &d, || {
        peers(&d).iter().any(|(s, p)| s == stream && p == want_peer)
    });
    rt.block_on(push)
        .expect("join")
        .expect("the publish behind the proxy succeeds");
    let files = d.wait_files(
        "localhost",
        "live",
        stream,
        "flv",
        1,
        Duration::from_secs(20),
    );
    assert!(!files.is_empty(), "recorded");
    // The connection's own log lines name the client, not the balancer.
    let started = log_line_with(&d, "publish started");
    assert!(started.contains(want_peer), "{started}");
}

#[test]
fn v1_header_then_publish_is_recorded_with_the_header_address() {
    publish_shows_peer(v1("203.0.113.7", 40000), "v1", "203.0.113.7:40000");
}

#[test]
fn v2_ipv6_header_then_publish_is_recorded_with_the_header_address() {
    publish_shows_peer(
        v2_tcp6("2001:db8::7".parse().expect("v6"), 40001),
        "v2",
        "[2001:db8::7]:40001",
    );
}

#[test]
fn max_connections_per_ip_counts_the_header_address() {
    let d = Daemon::start_with("proxy_protocol = true\nmax_connections_per_ip = 1\n", FLV);
    let rt = common::rt();
    let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));
    // Two clients behind the balancer (all from 127.0.0.1 on the socket): both in.
    let a = rt.spawn(publish_behind_proxy(
        d.rtmp,
        v1("198.51.100.1", 5000),
        d.url("live", "a"),
        tags.clone(),
        live_for(3),
    ));
    let b = rt.spawn(publish_behind_proxy(
        d.rtmp,
        v2_tcp4([198, 51, 100, 2], 5000),
        d.url("live", "b"),
        tags.clone(),
        live_for(3),
    ));
    wait_until("both clients are live", &d, || peers(&d).len() == 2);
    // A second connection of a client that is live already: refused.
    let same = rt.block_on(publish_behind_proxy(
        d.rtmp,
        v1("198.51.100.1", 5001),
        d.url("live", "c"),
        tags.clone(),
        PublishOptions::default(),
    ));
    assert!(same.is_err(), "a second connection from 198.51.100.1");
    wait_until("the refusal is logged", &d, || {
        d.log()
            .contains("refusing connection: too many connections from this address")
    });
    rt.block_on(a).expect("join").expect("a is untouched");
    rt.block_on(b).expect("join").expect("b is untouched");
    assert!(d.files("localhost", "live", "c", "flv").is_empty());
    let log = d.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("too many connections from this address"))
        .expect("refusal line");
    assert!(refusal.contains("198.51.100.1"), "{refusal}");
    // Its place is free again once the first has gone.
    rt.block_on(publish_behind_proxy(
        d.rtmp,
        v1("198.51.100.1", 5002),
        d.url("live", "c"),
        tags,
        PublishOptions::default(),
    ))
    .expect("the same client after its first connection ended");
}

/// Whether the daemon closed `s` (EOF or reset) within `wait`.
fn closed_by_server(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            // Not expected (nothing here is valid), but not an answer either.
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

fn log_line_with(d: &Daemon, needle: &str) -> String {
    wait_until(&format!("a log line with {needle:?}"), d, || {
        d.log().contains(needle)
    });
    d.log()
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn bad_or_missing_headers_close_the_connection_with_a_reason() {
    let d = Daemon::start_with("proxy_protocol = true\nhandshake_timeout = 2\n", FLV);
    let rt = common::rt();
    let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));

    // Garbage.
    let mut s = TcpStream::connect(d.rtmp).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert!(closed_by_server(&mut s, Duration::from_secs(5)), "garbage");
    let line = log_line_with(&d, "no PROXY header: the connection starts with");
    assert!(line.contains("127.0.0.1"), "names the socket peer: {line}");

    // A plain RTMP client, no header: the publish fails.
    let plain = rt.block_on(testkit::publish_flv(
        &d.url("live", "plain"),
        &tags,
        &PublishOptions::default(),
    ));
    assert!(plain.is_err(), "RTMP without a header: {plain:?}");
    log_line_with(&d, "no PROXY header: the connection starts with \"\\x03");

    // A v1 line past 107 bytes without CRLF.
    let mut s = TcpStream::connect(d.rtmp).expect("connect");
    let mut long = b"PROXY TCP4 ".to_vec();
    long.resize(200, b'1');
    s.write_all(&long).expect("write");
    assert!(
        closed_by_server(&mut s, Duration::from_secs(5)),
        "v1 too long"
    );
    log_line_with(&d, "PROXY v1 header has no CRLF within 107 bytes");

    // A malformed v1 address.
    let mut s = TcpStream::connect(d.rtmp).expect("connect");
    s.write_all(b"PROXY TCP4 203.0.113.300 127.0.0.1 1 1935\r\n\x03")
        .expect("write");
    assert!(closed_by_server(&mut s, Duration::from_secs(5)), "bad v1");
    log_line_with(&d, "bad PROXY v1 header");

    // A v2 header announcing 65535 bytes: refused before they are read.
    let mut s = TcpStream::connect(d.rtmp).expect("connect");
    let mut big = SIG.to_vec();
    big.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
    s.write_all(&big).expect("write");
    assert!(
        closed_by_server(&mut s, Duration::from_secs(5)),
        "v2 too long"
    );
    log_line_with(&d, "PROXY v2 header announces 65535 bytes");

    // A truncated v2 header, then the client's FIN.
    let mut s = TcpStream::connect(d.rtmp).expect("connect");
    let mut cut = v2_tcp4([203, 0, 113, 9], 1);
    cut.truncate(20);
    s.write_all(&cut).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert!(closed_by_server(&mut s, Duration::from_secs(5)), "v2 cut");
    log_line_with(&d, "connection closed after 20 bytes");

    // A client that sends nothing: closed at handshake_timeout, not before.
    let started = Instant::now();
    let mut s = TcpStream::connect(d.rtmp).expect("connect");
    assert!(closed_by_server(&mut s, Duration::from_secs(10)), "silent");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(8),
        "closed after {after:?}, handshake_timeout = 2"
    );
    log_line_with(&d, "no PROXY header within 2s");

    // Nothing was recorded, and the daemon still serves a well-formed connection.
    assert!(
        common::walk(&d.root()).is_empty(),
        "{:?}",
        common::walk(&d.root())
    );
    rt.block_on(publish_behind_proxy(
        d.rtmp,
        b"PROXY UNKNOWN\r\n".to_vec(),
        d.url("live", "ok"),
        tags,
        PublishOptions::default(),
    ))
    .expect("a health-check style UNKNOWN header keeps the socket address and publishes");
}

#[test]
fn without_proxy_protocol_a_header_is_not_taken_as_one() {
    let d = Daemon::start_with("", FLV);
    let rt = common::rt();
    let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));
    for header in [v1("203.0.113.7", 40000), v2_tcp4([203, 0, 113, 7], 40000)] {
        let r = rt.block_on(publish_behind_proxy(
            d.rtmp,
            header,
            d.url("live", "proxied"),
            tags.clone(),
            PublishOptions::default(),
        ));
        assert!(r.is_err(), "a PROXY header on a plain listener: {r:?}");
    }
    assert!(d.files("localhost", "live", "proxied", "flv").is_empty());
    assert!(!d.log().contains("203.0.113.7"), "log:\n{}", d.log());
    // The same listener takes plain RTMP.
    rt.block_on(testkit::publish_flv(
        &d.url("live", "plain"),
        &tags,
        &PublishOptions::default(),
    ))
    .expect("plain RTMP");
}

/// A self-signed certificate for localhost, as PEM files in `dir`.
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let cert = dir.join("proxy.crt");
    let key = dir.join("proxy.key");
    std::fs::write(&cert, ck.cert.pem()).expect("cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("key");
    (cert, key, ck.cert.pem().into_bytes())
}

/// A TLS handshake on `tcp`, trusting only `cert_pem`.
async fn tls_handshake(tcp: tokio::net::TcpStream, cert_pem: &[u8]) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn on_rtmps_the_header_comes_before_tls() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key, pem) = certificate(certs.path());
    let d = Daemon::start_with(
        "proxy_protocol = true\n",
        &format!("[rtmps]\nlisten = \"127.0.0.1:0\"\ncert = {cert:?}\nkey = {key:?}\n"),
    );
    let addr = d.rtmps.expect("rtmps listener");
    let rt = common::rt();
    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(&v1("203.0.113.8", 443))
            .await
            .expect("header");
        tls_handshake(tcp, &pem)
            .await
            .expect("TLS after the PROXY header");
        // TLS straight away: its ClientHello is not a PROXY header.
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let r = tls_handshake(tcp, &pem).await;
        assert!(r.is_err(), "TLS without a header: {r:?}");
    });
    log_line_with(&d, "no PROXY header: the connection starts with \"\\x16");
}

#[test]
fn a_reload_does_not_switch_proxy_protocol() {
    let d = Daemon::start_with("proxy_protocol = true\n", FLV);
    let cfg = std::fs::read_to_string(d.config_path()).expect("config");
    std::fs::write(
        d.config_path(),
        cfg.replace("proxy_protocol = true", "proxy_protocol = false"),
    )
    .expect("rewrite config");
    let (status, body) = d.api_post("/v1/reload", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("rtmp.proxy_protocol"), "{body}");
    // Still on: a header is still read and its address used.
    let rt = common::rt();
    let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));
    let push = rt.spawn(publish_behind_proxy(
        d.rtmp,
        v1("203.0.113.5", 4000),
        d.url("live", "r"),
        tags,
        live_for(2),
    ));
    wait_until("live with the header's address", &d, || {
        peers(&d).iter().any(|(_, p)| p == "203.0.113.5:4000")
    });
    rt.block_on(push).expect("join").expect("publish");
}

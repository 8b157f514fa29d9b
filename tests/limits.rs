//! R-SEC-2 limits on the RTMP side: concurrent connections (global and per address) and
//! streams being published; past a limit the newcomer is refused with a log line and the
//! ones already in are untouched.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Daemon;
use testkit::PublishOptions;

/// Whether the daemon closed `s` (EOF) within `wait`, rather than keeping it open.
fn closed_by_server(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut b = [0u8; 16];
    matches!(s.read(&mut b), Ok(0))
        || matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

fn wait_log(d: &Daemon, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.log().contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn connection_limit(rtmp_keys: &str, log_line: &str) {
    let d = Daemon::start_with(&format!("handshake_timeout = 30\n{rtmp_keys}"), "");
    let addr = d.rtmp;
    let mut first = TcpStream::connect(addr).expect("connect 1");
    let _second = TcpStream::connect(addr).expect("connect 2");
    let mut third = TcpStream::connect(addr).expect("connect 3");
    assert!(
        closed_by_server(&mut third, Duration::from_secs(5)),
        "the third connection is refused"
    );
    wait_log(&d, log_line);
    assert!(
        !closed_by_server(&mut first, Duration::from_millis(300)),
        "the ones already in stay"
    );
    // A place comes free: the next connection is taken.
    drop(first);
    std::thread::sleep(Duration::from_millis(300));
    let mut fourth = TcpStream::connect(addr).expect("connect 4");
    assert!(
        !closed_by_server(&mut fourth, Duration::from_millis(500)),
        "a connection after one left is accepted"
    );
}

#[test]
fn connections_past_max_connections_are_refused() {
    connection_limit(
        "max_connections = 2\n",
        "refusing connection: max_connections reached",
    );
}

#[test]
fn connections_past_max_connections_per_ip_are_refused() {
    connection_limit(
        "max_connections_per_ip = 2\n",
        "refusing connection: too many connections from this address",
    );
}

#[test]
fn publishes_past_max_streams_are_refused_and_the_live_one_is_recorded() {
    let d = Daemon::start_with("max_streams = 1\n", "");
    let url = d.url("live", "first");
    let tags = Arc::new(testkit::fixture_tags("avc_aac_2s.flv"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let t2 = tags.clone();
    let first = rt.spawn(async move {
        let opts = PublishOptions {
            realtime: true,
            duration: Some(Duration::from_secs(4)),
            ..PublishOptions::default()
        };
        testkit::publish_flv(&url, &t2, &opts).await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.api_get("/v1/streams").1.contains("\"first\"") {
        assert!(Instant::now() < deadline, "first push never live");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url2 = d.url("live", "second");
    let t3 = tags.clone();
    let refused =
        rt.block_on(
            async move { testkit::publish_flv(&url2, &t3, &PublishOptions::default()).await },
        );
    assert!(refused.is_err(), "a second stream past max_streams = 1");
    wait_log(&d, "rtmp.max_streams");
    rt.block_on(first)
        .expect("join")
        .expect("the live push is untouched");
    let files = d.wait_files(
        "localhost",
        "live",
        "first",
        "flv",
        1,
        Duration::from_secs(20),
    );
    assert!(!files.is_empty());
    assert!(d.files("localhost", "live", "second", "flv").is_empty());
    // Its place is free again.
    let url3 = d.url("live", "second");
    rt.block_on(
        async move { testkit::publish_flv(&url3, &tags, &PublishOptions::default()).await },
    )
    .expect("publish after the first ended");
}

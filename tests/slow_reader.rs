//! Issue 14, bounded writes: a publisher that stops reading (a tiny receive window and a
//! flood of pings whose answers it never drains) is dropped within `idle_timeout`, gives
//! its stream name back, and does not hold up SIGTERM.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Daemon;
use testkit::chunk::msg_type;
use testkit::conn::csid;
use testkit::{PublishOptions, RawConn};

const IDLE_S: u64 = 6;
/// A batch of pings blocked this long means the daemon stopped reading us, i.e. it is
/// stuck writing to us: the state under test.
const STALL: Duration = Duration::from_secs(1);

/// Publishes `live/{name}` on a socket whose receive buffer is tiny, then sends ping
/// requests without ever reading, until the daemon's answers back up into it. Returns
/// the connection once our own writes stall.
async fn stop_reading(addr: SocketAddr, name: &str) -> RawConn {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(2048).expect("rcvbuf");
    // A small send buffer too, so our own writes stall soon after the daemon's do.
    sock.set_send_buffer_size(4096).expect("sndbuf");
    let stream = sock.connect(addr).await.expect("connect");
    let mut c = RawConn::from_stream(stream).expect("conn");
    c.handshake().await.expect("handshake");
    c.connect_app("live", &format!("rtmp://{addr}/live"))
        .await
        .expect("connect");
    let sid = c.create_stream().await.expect("createStream");
    let code = c.publish(sid, name).await.expect("publish");
    assert_eq!(code, "NetStream.Publish.Start");
    // Ping requests (user control 6), a thousand per write: the daemon answers each
    // with a ping response we never read, until its writes to us block. Pings are not
    // media, so the idle deadline (IDLE_S from the publish) is the flood's budget; it
    // stalls in well under a second on an idle machine.
    let mut batch = Vec::new();
    for _ in 0..1000 {
        testkit::chunk::encode_message(
            &mut batch,
            csid::PROTOCOL,
            msg_type::USER_CONTROL,
            0,
            0,
            &[0, 6, 0, 0, 0, 1],
            128,
        );
    }
    loop {
        match tokio::time::timeout(STALL, c.send_raw(&batch)).await {
            Ok(Ok(())) => {}
            // Our writes stall: the daemon stopped reading us because its writes to us
            // stall. That is the state under test.
            Err(_) => return c,
            Ok(Err(e)) => panic!("the daemon dropped us before our flood stalled: {e}"),
        }
    }
}

fn publish_ok(d: &Daemon, name: &str) -> Result<(), String> {
    let url = d.url("live", name);
    let tags = std::sync::Arc::new(testkit::fixture_tags("avc_only.flv"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move { testkit::publish_flv(&url, &tags, &PublishOptions::default()).await })
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn a_peer_that_stops_reading_is_dropped_within_idle_timeout_and_frees_its_name() {
    let d = Daemon::start_with(&format!("idle_timeout = {IDLE_S}\n"), "");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let addr = d.rtmp;
    let stalled_at = Instant::now();
    let conn = rt.block_on(stop_reading(addr, "stuck"));
    // While it holds the name a second publisher is refused as a duplicate; within
    // idle_timeout (plus the time our flood took to stall) the name is free again.
    let deadline = stalled_at + Duration::from_secs(IDLE_S + 20);
    let freed = loop {
        if publish_ok(&d, "stuck").is_ok() {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the stalled publisher kept its name; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        d.log().contains("read nothing we sent"),
        "no line says why; log:\n{}",
        d.log()
    );
    eprintln!("name freed {:?} after the flood began", freed - stalled_at);
    drop(conn);
}

#[test]
fn a_peer_that_stops_reading_does_not_delay_sigterm() {
    // A long idle_timeout: only the shutdown token can end the stuck write quickly.
    let mut d = Daemon::start_with("idle_timeout = 60\n", "");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let conn = rt.block_on(stop_reading(d.rtmp, "stuck"));
    let t = Instant::now();
    assert_eq!(d.stop(), Some(0), "clean exit");
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "SIGTERM waited {took:?} for a peer that stopped reading"
    );
    drop(conn);
}

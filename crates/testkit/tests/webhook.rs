//! The webhook receiver answers as scripted and records everything, comes back on the same
//! port, and its verifiers agree with signatures computed by hand from the specs.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use liverec_testkit::webhook::{md5_sign, verify_standard_webhook, Answer, Received, Receiver};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How one raw request ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Status(u16),
    /// No answer within the client's timeout.
    TimedOut,
    /// Connection closed (or reset) before any answer.
    Closed,
}

/// A tiny HTTP/1.1 client: one POST on a fresh connection, `Connection: close`, then read
/// until EOF or `timeout`. Raw on purpose: no client library's retries or pooling.
async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Outcome {
    let timeout = Duration::from_millis(500);
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut resp = Vec::new();
    match tokio::time::timeout(timeout, s.read_to_end(&mut resp)).await {
        Err(_) => Outcome::TimedOut,
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionReset => Outcome::Closed,
        Ok(Err(e)) => panic!("read: {e}"),
        Ok(Ok(_)) if resp.is_empty() => Outcome::Closed,
        Ok(Ok(_)) => {
            let text = String::from_utf8_lossy(&resp);
            let status_line = text.lines().next().unwrap();
            assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
            Outcome::Status(status_line[9..12].parse().unwrap())
        }
    }
}

#[tokio::test]
async fn scripted_answers_in_order_and_all_recorded() {
    let rx = Receiver::start().await.unwrap();
    assert!(rx.url().starts_with("http://127.0.0.1:"));
    assert!(rx.url().ends_with("/hook"));
    rx.script([Answer::Status(500), Answer::Status(500), Answer::Hang]);

    let mut outcomes = Vec::new();
    for i in 0..4 {
        let body = format!(r#"{{"attempt":{i}}}"#);
        let attempt = i.to_string();
        outcomes.push(
            post(
                rx.addr(),
                "/hook",
                &[("X-Attempt", attempt.as_str())],
                body.as_bytes(),
            )
            .await,
        );
    }
    assert_eq!(
        outcomes,
        [
            Outcome::Status(500),
            Outcome::Status(500),
            Outcome::TimedOut,
            Outcome::Status(200)
        ]
    );

    let got = rx
        .wait_for("4 requests", Duration::from_secs(5), |r| r.len() == 4)
        .await;
    let answered: Vec<_> = got.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [Some(500), Some(500), None, Some(200)]);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hook");
        assert_eq!(r.header("x-attempt"), Some(i.to_string().as_str()));
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert!(r.headers.iter().all(|(n, _)| *n == n.to_ascii_lowercase()));
        assert_eq!(r.json().unwrap()["attempt"], i);
    }
    assert!(got.windows(2).all(|w| w[0].at <= w[1].at));
    rx.stop().await;
}

#[tokio::test]
async fn drop_closes_without_answer_and_default_applies() {
    let rx = Receiver::start().await.unwrap();
    rx.set_default(Answer::Status(503));
    rx.script([Answer::Drop]);
    assert_eq!(post(rx.addr(), "/hook", &[], b"{}").await, Outcome::Closed);
    assert_eq!(
        post(rx.addr(), "/hook", &[], b"{}").await,
        Outcome::Status(503)
    );
    let answered: Vec<_> = rx.received().iter().map(|r| r.answered).collect();
    assert_eq!(answered, [None, Some(503)]);
    rx.stop().await;
}

#[tokio::test]
async fn stop_refuses_then_start_on_same_addr_comes_back() {
    let rx = Receiver::start().await.unwrap();
    let addr = rx.addr();
    // A hung connection must not keep the receiver (or its port) alive.
    rx.script([Answer::Hang]);
    let mut hung = TcpStream::connect(addr).await.unwrap();
    hung.write_all(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    rx.wait_for("the hung request", Duration::from_secs(5), |r| r.len() == 1)
        .await;
    assert_eq!(post(addr, "/hook", &[], b"{}").await, Outcome::Status(200));
    rx.stop().await;

    // The hung connection was aborted: EOF or reset, not silence.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), hung.read_to_end(&mut buf))
        .await
        .expect("hung connection still open after stop");
    assert!(buf.is_empty(), "{read:?} {buf:?}");

    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);

    let back = Receiver::start_on(addr).await.unwrap();
    assert_eq!(back.addr(), addr);
    assert!(back.received().is_empty());
    assert_eq!(post(addr, "/hook", &[], b"{}").await, Outcome::Status(200));
    assert_eq!(back.received().len(), 1);
    back.stop().await;
}

#[tokio::test]
#[should_panic(expected = "waiting for a request that never comes")]
async fn wait_for_panics_with_what() {
    let rx = Receiver::start().await.unwrap();
    rx.wait_for(
        "a request that never comes",
        Duration::from_millis(100),
        |r| !r.is_empty(),
    )
    .await;
}

fn received(headers: Vec<(&str, String)>, body: &[u8]) -> Received {
    Received {
        at: SystemTime::now(),
        method: "POST".into(),
        path: "/hook".into(),
        headers: headers
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect(),
        body: body.to_vec(),
        answered: Some(200),
    }
}

#[test]
fn standard_webhook_hand_signature_verifies() {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b"a test key of thirty-two bytes!!";
    let secret = format!("whsec_{}", b64.encode(key));
    let id = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let body = br#"{"event":"record.finished","file":"a.flv"}"#;

    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let sig = format!("v1,{}", b64.encode(mac.finalize().into_bytes()));

    let r = received(
        vec![
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts.clone()),
            ("webhook-signature", sig.clone()),
        ],
        body,
    );
    verify_standard_webhook(&secret, &r).unwrap();

    let wrong = format!("whsec_{}", b64.encode(b"another key, also 32 bytes long!"));
    assert!(verify_standard_webhook(&wrong, &r).is_err());

    let mut tampered = r.clone();
    tampered.body[2] ^= 1;
    assert!(verify_standard_webhook(&secret, &tampered).is_err());

    let unsigned = received(vec![("webhook-id", id.to_string())], body);
    assert!(verify_standard_webhook(&secret, &unsigned).is_err());
}

#[test]
fn md5_sign_matches_known_digest() {
    // printf abc123 | md5sum
    assert_eq!(md5_sign("abc", 123), "e99a18c428cb38d5f260853678922e03");
}

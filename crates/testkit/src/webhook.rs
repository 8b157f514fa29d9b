//! A real HTTP/1.1 webhook receiver on loopback for end-to-end tests, plus independent
//! verifiers of the daemon's callback signatures.
//!
//! The daemon delivers callbacks at least once, retrying failed attempts. Tests need the
//! other end to fail in the ways a real endpoint fails (error statuses, no answer at all,
//! a dropped connection, being down and coming back) and then to check what arrived, so
//! the receiver answers from a script and records every request, including those it never
//! answered.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use liverec_testkit::webhook::{Answer, Receiver};
//! use std::time::Duration;
//! let rx = Receiver::start().await?;
//! rx.script([Answer::Status(500), Answer::Hang]);
//! // ... point the daemon at rx.url() ...
//! let got = rx.wait_for("3 attempts", Duration::from_secs(10), |r| r.len() >= 3).await;
//! assert_eq!(got[2].answered, Some(200));
//! rx.stop().await;
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, Notify};
use tokio::task::{JoinHandle, JoinSet};

/// How the receiver answers one request: the failure modes a delivery client must survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An answer with this status: 2xx is what the client must treat as delivered, anything
    /// else as a failure to retry (or give up on).
    Status(u16),
    /// Never answers, so the client's per-attempt timeout must fire; the request is still
    /// recorded, because the endpoint may well have acted on it (hence at-least-once).
    Hang,
    /// Closes the connection without an answer, as a crashing endpoint or a proxy does: the
    /// client sees an I/O error rather than a timeout. The request is still recorded.
    Drop,
}

/// One request as it arrived, kept raw so tests can check exactly what the daemon sent
/// (signatures are over the raw body bytes, not a re-serialisation).
#[derive(Clone, Debug)]
pub struct Received {
    /// When the full request had arrived: lets tests check the client's retry spacing.
    pub at: SystemTime,
    /// The HTTP method, e.g. "POST".
    pub method: String,
    /// The request path with its query, e.g. "/hook".
    pub path: String,
    /// All headers in arrival order, names lowercased so lookups need no case folding.
    pub headers: Vec<(String, String)>,
    /// The body exactly as sent.
    pub body: Vec<u8>,
    /// The status the receiver answered with; `None` for [`Answer::Hang`] and
    /// [`Answer::Drop`], which never answer.
    pub answered: Option<u16>,
}

impl Received {
    /// The first value of header `name` (any case): most webhook headers occur once.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON: the daemon's callbacks are JSON, and tests mostly want fields.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// What the receiver shares between the test (scripting, reading) and its connection tasks.
struct State {
    script: VecDeque<Answer>,
    default: Answer,
    received: Vec<Received>,
}

type Shared = Arc<Mutex<State>>;

/// Locks the state even if a test thread panicked while holding it: a poisoned receiver
/// would only hide the first failure behind a second one.
fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A webhook endpoint on 127.0.0.1 whose answers the test scripts. Dropping it without
/// [`Receiver::stop`] still shuts it down, but without waiting for that to finish.
pub struct Receiver {
    addr: SocketAddr,
    shared: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Starts on a free port, so parallel tests never collide.
    pub async fn start() -> std::io::Result<Receiver> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr`, typically the [`Receiver::addr`] of a stopped receiver: the daemon
    /// keeps its configured URL, so a receiver that "comes back" must reuse the port. Binds
    /// with SO_REUSEADDR and retries briefly, since the old connections' TIME_WAIT may hold
    /// the port for a moment.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Receiver> {
        let listener = bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared: Shared = Arc::new(Mutex::new(State {
            script: VecDeque::new(),
            default: Answer::Status(200),
            received: Vec::new(),
        }));
        let (shutdown, shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, shared.clone(), shutdown_rx));
        Ok(Receiver {
            addr,
            shared,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// The bound address, for [`Receiver::start_on`] after a stop.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to configure in the daemon; the `/hook` path shows the daemon keeps the path.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Queues answers for the next requests, in order (after any still queued), so a test
    /// can script a failure sequence; once used up, the default answers.
    ///
    /// Panics on a status outside 200..=599: that is a mistake in the test, not a scenario.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        let answers: Vec<Answer> = answers.into_iter().collect();
        answers.iter().for_each(check_answer);
        lock(&self.shared).script.extend(answers);
    }

    /// Sets the answer once the script is used up (initially `Status(200)`): a test of
    /// giving up wants every attempt to fail without counting them in advance.
    ///
    /// Panics on a status outside 200..=599, as [`Receiver::script`] does.
    pub fn set_default(&self, a: Answer) {
        check_answer(&a);
        lock(&self.shared).default = a;
    }

    /// Every request so far, answered or not, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared).received.clone()
    }

    /// Waits until `done` holds for what has arrived and returns it; deliveries are
    /// asynchronous, so tests poll rather than sleep a guessed time.
    ///
    /// Panics after `timeout`, naming `what` and summarising what did arrive, so a failing
    /// test says why on its own.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let state = lock(&self.shared);
                if done(&state.received) {
                    return state.received.clone();
                }
            }
            if Instant::now() >= deadline {
                let got = self.received();
                panic!(
                    "webhook receiver at {}: timed out after {timeout:?} waiting for {what}; {}",
                    self.addr,
                    summary(&got)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops listening and aborts every open connection, hung ones included, and returns
    /// once they are gone: the port is then free and the daemon gets connection refused,
    /// as from an endpoint that is down.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Receiver {
    /// A test that panics never reaches `stop`; aborting here keeps hung connections from
    /// outliving it.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Panics on statuses hyper cannot send as a final answer, or that would make a scripted
/// failure mean something else (1xx is not an answer).
fn check_answer(a: &Answer) {
    if let Answer::Status(code) = *a {
        assert!(
            (200..=599).contains(&code),
            "webhook receiver: Answer::Status({code}) is not a final HTTP status (200..=599)"
        );
    }
}

/// One line per request, for panic messages.
fn summary(got: &[Received]) -> String {
    let mut s = format!("{} request(s) arrived", got.len());
    for (i, r) in got.iter().enumerate() {
        let body = String::from_utf8_lossy(&r.body);
        let body: String = body.chars().take(200).collect();
        let answered = match r.answered {
            Some(code) => code.to_string(),
            None => "none".to_string(),
        };
        let _ = write!(
            s,
            "\n  #{i} {} {} answered={answered} body={body}",
            r.method, r.path
        );
    }
    s
}

/// Binds with SO_REUSEADDR, retrying `AddrInUse` for a few seconds.
async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let attempt = (|| {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(1024)
        })();
        match attempt {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Accepts until shut down; each connection runs in `conns`, so shutting down can abort
/// them all and wait until their sockets are closed.
async fn serve(listener: TcpListener, shared: Shared, mut shutdown: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                // Accept errors (e.g. too many open files) are transient: keep listening.
                if let Ok((stream, _)) = accepted {
                    conns.spawn(connection(stream, shared.clone()));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// Serves one connection until the client closes it, or until a request scripted
/// [`Answer::Drop`] asks for it to be closed unanswered.
async fn connection(stream: tokio::net::TcpStream, shared: Shared) {
    let drop_now = Arc::new(Notify::new());
    let service = {
        let drop_now = drop_now.clone();
        service_fn(move |req| handle(req, shared.clone(), drop_now.clone()))
    };
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let conn = pin!(conn);
    tokio::select! {
        // Errors here are the client's doing (reset, malformed request): nothing to report.
        _ = conn => {}
        // Dropping the connection future closes the socket without an answer.
        _ = drop_now.notified() => {}
    }
}

/// Records the request, then answers it as scripted.
async fn handle(
    req: Request<Incoming>,
    shared: Shared,
    drop_now: Arc<Notify>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // A body cut short by the client is recorded as far as it got: the client gave up on
    // this attempt, and the test may still want to see it.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());

    let answer = {
        let mut state = lock(&shared);
        let answer = state.script.pop_front().unwrap_or(state.default);
        let answered = match answer {
            Answer::Status(code) => Some(code),
            Answer::Hang | Answer::Drop => None,
        };
        state.received.push(Received {
            at: SystemTime::now(),
            method: parts.method.as_str().to_string(),
            path,
            headers,
            body,
            answered,
        });
        answer
    };

    match answer {
        Answer::Status(code) => {
            let mut resp = Response::new(Empty::new());
            // check_answer only lets valid codes in; 500 is a safe fallback all the same.
            *resp.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Ok(resp)
        }
        Answer::Hang => never().await,
        Answer::Drop => {
            // notify_one stores a permit, so the close happens even if the connection task
            // is not waiting yet.
            drop_now.notify_one();
            never().await
        }
    }
}

/// A future that never completes, typed to fit [`handle`].
fn never() -> impl Future<Output = Result<Response<Empty<Bytes>>, Infallible>> {
    std::future::pending()
}

/// The md5 signature some push/callback schemes use: lowercase hex md5 of `key` followed by
/// the decimal `t`. Computed with the `md5` crate, not the daemon's RustCrypto `md-5`, so a
/// bug in one is not mirrored in the check.
pub fn md5_sign(key: &str, t: u64) -> String {
    format!("{:x}", md5::compute(format!("{key}{t}")))
}

/// Checks `r`'s `webhook-id`, `webhook-timestamp` and `webhook-signature` headers against
/// its raw body with the Standard Webhooks reference crate (`standardwebhooks`), not the
/// daemon's own hmac/sha2 code, so a shared misreading of the spec cannot pass.
///
/// `secret` is as configured in the daemon (`whsec_` + base64). Like any receiver, this
/// rejects a timestamp more than 5 minutes from now.
pub fn verify_standard_webhook(secret: &str, r: &Received) -> Result<(), String> {
    let wh = standardwebhooks::Webhook::new(secret).map_err(|e| format!("secret: {e}"))?;
    let mut headers = http::HeaderMap::new();
    for (name, value) in &r.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("header name {name:?}: {e}"))?;
        let value = http::HeaderValue::from_str(value)
            .map_err(|e| format!("header {name} value {value:?}: {e}"))?;
        headers.append(name, value);
    }
    wh.verify(&r.body, &headers).map_err(|e| e.to_string())
}

/// Lowercase hex md5 of `s`, with the `md5` crate: an implementation independent of the
/// daemon's (RustCrypto's md-5), for signed push URLs (`txSecret`) in tests.
pub fn md5_hex(s: &str) -> String {
    format!("{:x}", md5::compute(s.as_bytes()))
}

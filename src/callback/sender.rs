//! Delivers the outbox (R-CB-4): at least once, each event until an endpoint answers
//! 2xx or `[callback] max_age` passes. Per order key (an endpoint and a stream) one
//! event is in flight and the next waits for it, so a stream's events arrive in order;
//! different keys go concurrently, so a dead endpoint or a slow stream holds back no
//! other. Each attempt signs afresh (`t` expires; `webhook-timestamp` is the attempt's).

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::sign;
use crate::clock::Clock as _;
use crate::config::{CallbackConfig, RunningConfig};
use crate::db::{Callback, Db};

/// Events in flight at once, across all keys.
const MAX_IN_FLIGHT: usize = 64;
/// The longest wait between two attempts of one event (R-CB-4: capped at 10 min).
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// The first retry's delay; doubled per failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How long sent events stay in the outbox (for the API and against duplicates of a
/// file indexed again by a recovery).
const KEEP_SENT: Duration = Duration::from_secs(7 * 86_400);

/// What shutdown asks of the sender: is anything still worth waiting for?
pub struct SenderState {
    in_flight: AtomicUsize,
    /// When the next pending event is due (unix ms; i64::MAX: none).
    next_due_ms: AtomicI64,
}

impl Default for SenderState {
    fn default() -> Self {
        SenderState {
            in_flight: AtomicUsize::new(0),
            next_due_ms: AtomicI64::new(i64::MAX),
        }
    }
}

impl SenderState {
    /// True while an attempt is running or an event is due before `deadline_ms`.
    pub fn busy_until(&self, deadline_ms: i64) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
            || self.next_due_ms.load(Ordering::SeqCst) <= deadline_ms
    }
}

/// The HTTP client: rustls, no redirects (a callback URL that moved is a
/// misconfiguration to see, and a redirect must not carry the signed body elsewhere).
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("liverec/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Runs until `stop`; the daemon stops it only at the end of its shutdown grace, so
/// events of the last files still go out.
pub async fn run(
    db: Db,
    config: Arc<RunningConfig>,
    state: Arc<SenderState>,
    stop: CancellationToken,
) {
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            warn!("callbacks disabled: cannot build the HTTP client: {e}");
            return;
        }
    };
    let mut busy: HashSet<String> = HashSet::new();
    let mut attempts: JoinSet<(Callback, Result<(), String>)> = JoinSet::new();
    let mut last_prune = tokio::time::Instant::now();
    // A full scan of the outbox (every key's head) happens at start, when events are
    // queued, when a backoff ends and when the in-flight cap was hit; a settled event
    // only needs its own key's next one (one index seek), which keeps a backlog of
    // thousands of events linear.
    let mut scan = true;
    let mut saturated = false;
    let mut wake_at = tokio::time::Instant::now() + Duration::from_secs(60);
    let spawn = |cb: Callback, attempts: &mut JoinSet<_>, busy: &mut HashSet<String>| {
        busy.insert(cb.order_key.clone());
        let cfg = config.snapshot().config.callback.clone();
        let client = client.clone();
        attempts.spawn(async move {
            let r = attempt(&client, &cfg, &cb).await;
            (cb, r)
        });
    };
    loop {
        let now = now_ms();
        if scan {
            scan = false;
            saturated = false;
            wake_at = tokio::time::Instant::now() + Duration::from_secs(60);
            match db.callbacks_due(now, MAX_IN_FLIGHT * 2).await {
                Ok((due, next)) => {
                    let mut soonest = next.unwrap_or(i64::MAX);
                    for cb in due {
                        if busy.contains(&cb.order_key) {
                            continue;
                        }
                        if attempts.len() >= MAX_IN_FLIGHT {
                            saturated = true;
                            soonest = now;
                            break;
                        }
                        spawn(cb, &mut attempts, &mut busy);
                    }
                    state.next_due_ms.store(soonest, Ordering::SeqCst);
                    if soonest != i64::MAX && !saturated {
                        wake_at = wake_at.min(instant_at(soonest, now));
                    }
                }
                Err(e) => {
                    warn!("callback outbox unreadable, trying again in 5 s: {e}");
                    wake_at = tokio::time::Instant::now() + Duration::from_secs(5);
                }
            }
        }
        state.in_flight.store(attempts.len(), Ordering::SeqCst);
        if last_prune.elapsed() > Duration::from_secs(3600) {
            last_prune = tokio::time::Instant::now();
            let before = now.saturating_sub(KEEP_SENT.as_millis() as i64);
            if let Err(e) = db.prune_sent_callbacks(before).await {
                debug!("pruning sent callbacks: {e}");
            }
        }
        tokio::select! {
            Some(done) = attempts.join_next(), if !attempts.is_empty() => {
                let Ok((cb, result)) = done else {
                    // An attempt panicked (a bug): its key stays busy until restart
                    // rather than delivering that stream's events out of order.
                    warn!("a callback attempt failed unexpectedly");
                    continue;
                };
                let key = cb.order_key.clone();
                let max_age = config.snapshot().config.callback.max_age;
                settle(&db, cb, result, max_age).await;
                busy.remove(&key);
                if saturated {
                    scan = true;
                    continue;
                }
                match db.callback_head(key).await {
                    Ok(Some(next)) if next.next_ms <= now_ms() => {
                        spawn(next, &mut attempts, &mut busy);
                    }
                    Ok(Some(next)) => {
                        state.next_due_ms.fetch_min(next.next_ms, Ordering::SeqCst);
                        wake_at = wake_at.min(instant_at(next.next_ms, now_ms()));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        debug!("callback outbox: {e}");
                        scan = true;
                    }
                }
            }
            _ = db.callbacks_wake().notified() => scan = true,
            _ = tokio::time::sleep_until(wake_at) => scan = true,
            _ = stop.cancelled() => {
                attempts.abort_all();
                return;
            }
        }
    }
}

/// The runtime instant of the unix-ms time `at` (`now` = unix ms now); at least 10 ms
/// ahead so a due time in the past cannot spin.
fn instant_at(at: i64, now: i64) -> tokio::time::Instant {
    let ms = u64::try_from(at.saturating_sub(now)).unwrap_or(0).max(10);
    tokio::time::Instant::now() + Duration::from_millis(ms)
}

/// One POST of `cb`.
async fn attempt(
    client: &reqwest::Client,
    cfg: &CallbackConfig,
    cb: &Callback,
) -> Result<(), String> {
    let now_s = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let body = sign::body(&cb.body, &cfg.key, now_s, cfg.sign_ttl);
    let mut req = client
        .post(&cb.url)
        .timeout(Duration::from_secs(cfg.timeout.max(1)))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        // The event id on every attempt: the receiver's key for dropping duplicates.
        .header("webhook-id", &cb.event_id);
    if !cfg.secret.is_empty() {
        // Checked when the config was loaded; a bad one here sends unsigned rather
        // than not at all, and the receiver refuses it visibly.
        if let Ok(key) = sign::secret_key(&cfg.secret) {
            req = req.header("webhook-timestamp", now_s.to_string()).header(
                "webhook-signature",
                sign::webhook_signature(&key, &cb.event_id, now_s, &body),
            );
        }
    }
    match req.body(body).send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("HTTP {}", resp.status().as_u16())),
        Err(e) if e.is_timeout() => Err(format!("no answer within {} s", cfg.timeout.max(1))),
        Err(e) if e.is_connect() => Err(format!("cannot connect: {}", root_cause(&e))),
        Err(e) => Err(root_cause(&e)),
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Records an attempt's outcome: sent; again later; or, past `max_age`, failed.
async fn settle(db: &Db, cb: Callback, result: Result<(), String>, max_age_s: u64) {
    let now = now_ms();
    let done = match result {
        Ok(()) => {
            crate::metrics::callback_sent(Duration::from_millis(
                u64::try_from(now.saturating_sub(cb.created_ms)).unwrap_or(0),
            ));
            debug!(event_id = %cb.event_id, url = %cb.url, attempts = cb.attempts + 1, "callback delivered");
            db.callback_sent(cb.id, now).await
        }
        Err(error) => {
            let deadline = cb
                .since_ms
                .saturating_add(i64::try_from(max_age_s.saturating_mul(1000)).unwrap_or(i64::MAX));
            if now >= deadline {
                crate::metrics::callback_failed();
                warn!(event_id = %cb.event_id, url = %cb.url, attempts = cb.attempts + 1, "callback given up after [callback] max_age = {max_age_s} s: {error}; kept as failed (GET /v1/callbacks?status=failed, POST /v1/callbacks/{}/retry)", cb.event_id);
                db.callback_failed(cb.id, now, error).await
            } else {
                crate::metrics::callback_retried();
                let next = now.saturating_add(backoff_ms(cb.attempts)).min(deadline);
                if cb.attempts == 0 {
                    info!(event_id = %cb.event_id, url = %cb.url, "callback not taken ({error}); retrying with backoff");
                } else {
                    debug!(event_id = %cb.event_id, url = %cb.url, attempts = cb.attempts + 1, "callback not taken: {error}");
                }
                db.callback_retry_at(cb.id, next, error).await
            }
        }
    };
    if let Err(e) = done {
        warn!(event_id = %cb.event_id, "callback outcome not recorded (it will be sent again): {e}");
    }
}

/// The wait after failed attempt number `attempts` (0-based): 1 s doubling to 10 min,
/// with ±25 % jitter (never past the cap) so endpoints that come back are not hit by every event at once.
fn backoff_ms(attempts: u32) -> i64 {
    let base = FIRST_BACKOFF
        .saturating_mul(1u32.checked_shl(attempts.min(20)).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF)
        .as_millis() as f64;
    let jitter = rand::rng().random_range(0.75..1.25);
    ((base * jitter) as i64).min(MAX_BACKOFF.as_millis() as i64)
}

fn now_ms() -> i64 {
    crate::clock::SystemClock.now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_within_seconds_and_caps_at_ten_minutes() {
        for _ in 0..100 {
            let first = backoff_ms(0);
            assert!((750..=1250).contains(&first), "{first}");
            let later = backoff_ms(30);
            assert!((450_000..=600_000).contains(&later), "{later}");
        }
    }

    /// The outbox and sender at scale, in every run: every queued event reaches a real
    /// HTTP receiver exactly once (no attempt fails here), each stream's events in the
    /// order they were queued; the rate and the process's CPU per 1 000 events (sender,
    /// database thread and the in-process receiver together) are printed for
    /// benches/README.md. CI runs a small scale; the README's figures come from
    /// `LIVEREC_BENCH_EVENTS=20000`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callbacks_at_scale() {
        use std::collections::HashMap;
        use testkit::webhook::Receiver;

        let n: usize = std::env::var("LIVEREC_BENCH_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000)
            .max(100);
        let streams = 50;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let recv = Receiver::start().await.unwrap();
        let mut loaded = crate::config::load(None).unwrap();
        loaded.config.callback.secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into();
        loaded.config.callback.key = "k".into();
        let config = RunningConfig::new(loaded, None);
        let queued = std::time::Instant::now();
        for i in 0..n {
            let s = i % streams;
            db.queue_callback(crate::callback::event::NewEvent {
                event_id: format!("e{i}"),
                event_type: 100,
                url: recv.url(),
                order_key: format!("{} d/live/s{s}", recv.url()),
                dedup: None,
                body: serde_json::json!({"stream_id": format!("s{s}"), "n": i, "object_key": format!("d/live/s{s}/{i}.flv")}),
            })
            .await
            .unwrap();
        }
        let queue_s = queued.elapsed().as_secs_f64();
        let cpu0 = process_cpu_s();
        let started = std::time::Instant::now();
        let stop = CancellationToken::new();
        let sender = tokio::spawn(run(
            db.clone(),
            config,
            Arc::new(SenderState::default()),
            stop.clone(),
        ));
        let got = recv
            .wait_for("every event", Duration::from_secs(300), |r| r.len() >= n)
            .await;
        // The last answers are recorded a moment after the receiver saw the requests.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while db.callback_counts().await.unwrap().pending > 0 {
            assert!(std::time::Instant::now() < deadline, "answers not recorded");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let send_s = started.elapsed().as_secs_f64();
        let cpu = process_cpu_s() - cpu0;
        stop.cancel();
        sender.await.unwrap();
        assert_eq!(
            got.len(),
            n,
            "each event once: nothing failed, so nothing retried"
        );
        let mut last: HashMap<String, i64> = HashMap::new();
        for r in &got {
            let v = r.json().unwrap();
            let s = v["stream_id"].as_str().unwrap().to_string();
            let k = v["n"].as_i64().unwrap();
            if let Some(prev) = last.insert(s.clone(), k) {
                assert!(k > prev, "{s}: event {k} arrived after {prev}");
            }
        }
        println!(
            "callbacks_at_scale: {n} events over {streams} streams; queued {:.0}/s (one commit each); delivered {:.0}/s; {:.3} CPU-s per 1000 events (process)",
            n as f64 / queue_s,
            n as f64 / send_s,
            cpu / n as f64 * 1000.0
        );
        recv.stop().await;
    }

    /// utime + stime of this process, seconds (Linux).
    fn process_cpu_s() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // Fields 14 and 15 of stat(5); `after` starts at field 3.
        (ticks(11) + ticks(12)) / 100.0
    }
}

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
    loop {
        let now = now_ms();
        let mut wait = Duration::from_secs(60);
        match db.callbacks_due(now, MAX_IN_FLIGHT * 2).await {
            Ok((due, next)) => {
                let mut soonest = next.unwrap_or(i64::MAX);
                for cb in due {
                    if busy.contains(&cb.order_key) {
                        continue;
                    }
                    if attempts.len() >= MAX_IN_FLIGHT {
                        soonest = now;
                        break;
                    }
                    busy.insert(cb.order_key.clone());
                    let cfg = config.snapshot().config.callback.clone();
                    let client = client.clone();
                    attempts.spawn(async move {
                        let r = attempt(&client, &cfg, &cb).await;
                        (cb, r)
                    });
                }
                state.next_due_ms.store(soonest, Ordering::SeqCst);
                if soonest != i64::MAX {
                    let ms = u64::try_from(soonest.saturating_sub(now)).unwrap_or(0);
                    wait = wait.min(Duration::from_millis(ms.max(10)));
                }
            }
            Err(e) => {
                warn!("callback outbox unreadable, trying again in 5 s: {e}");
                wait = Duration::from_secs(5);
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
                if let Ok((cb, result)) = done {
                    busy.remove(&cb.order_key);
                    let max_age = config.snapshot().config.callback.max_age;
                    settle(&db, cb, result, max_age).await;
                } else {
                    // An attempt panicked (a bug): its key stays busy until restart
                    // rather than delivering that stream's events out of order.
                    warn!("a callback attempt failed unexpectedly");
                }
            }
            _ = db.callbacks_wake().notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => {
                attempts.abort_all();
                return;
            }
        }
    }
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
    chrono::Utc::now().timestamp_millis()
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
}

//! systemd integration (R-OP-2): `Type=notify` readiness, the watchdog, and reload/stop
//! notifications, through the `sd-notify` crate (a few lines of datagram protocol it does
//! well; no libsystemd needed). Without `NOTIFY_SOCKET` (not run by systemd) every call
//! is a no-op.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{info, warn};

static FAILED: AtomicBool = AtomicBool::new(false);

fn send(states: &[NotifyState]) {
    // The environment is kept (`false`): later notifications need NOTIFY_SOCKET too.
    if let Err(e) = sd_notify::notify(false, states) {
        if !FAILED.swap(true, Ordering::Relaxed) {
            warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
        }
    }
}

/// The listeners are open and recovery is done, or a reload is over (applied or
/// refused): `READY=1`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A config reload begins (SIGHUP / `POST /v1/reload`). `MONOTONIC_USEC` must follow
/// `RELOADING=1` for systemd ≥ 253's `Type=notify-reload`.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// SIGTERM: finalizing and stopping.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("finalizing open recordings"),
    ]);
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog at half its interval for as long as the runtime schedules this task
/// (through shutdown too: finalizing may take a while and is not a hang), so a wedged
/// runtime gets the daemon restarted.
pub async fn watchdog(every: Duration) {
    info!(
        interval_ms = every.as_millis() as u64,
        "systemd watchdog enabled"
    );
    let mut tick = tokio::time::interval(every / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}

/// A reload (R-TP-6) as systemd sees it: RELOADING, then READY again (R-OP-2).
pub async fn reload(config: &crate::config::RunningConfig) -> Result<Vec<String>, Vec<String>> {
    reloading();
    let res = config.reload().await;
    ready(match &res {
        Ok(_) => "recording; config reloaded",
        Err(_) => "recording; config reload refused, the previous config runs",
    });
    res
}

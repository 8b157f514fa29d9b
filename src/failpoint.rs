//! Named crash points (issue 11): the steps a closed file goes through on its way to
//! being stored, indexed and, once expired, deleted. Built with `--features failpoints`
//! (what `scripts/test.sh` does), the daemon aborts — like `kill -9`: no destructor, no
//! flush of anything buffered in the process — when it reaches the step named by the
//! `LIVEREC_FAILPOINT` environment variable, so `tests/e2e_crash_steps.rs` can crash it
//! between any two steps and check that the restart finishes the file. Without the
//! feature `hit` is an empty inline function: a release build has no way to be told to
//! abort.
//!
//! The steps, in order (README "Durability"):
//! - `file.closed`: finalized and patched in the spool (`{file}.part`), nothing else.
//! - `local.owed`: its `files` row is committed (`closed`), not yet moved into the root.
//! - `local.stored`: renamed into the recordings directory, not yet indexed.
//! - `s3.renamed`: renamed to `{file}.up`, its `files` row (`queued`) not yet written.
//! - `s3.queued`: its `files` row is committed, not yet uploaded.
//! - `s3.stored`: the store confirmed the upload, not yet indexed.
//! - `s3.indexed`: indexed, the spool copy not yet removed.
//! - `hls.stored`: an ended playlist is in the store, not yet indexed.
//! - `retention.deleted`: an expired file is deleted from the store, its schedule row
//!   and recordings entry not yet removed.
//!
//! One step hangs instead of aborting: `recording.hang` stops the first recorder that
//! reads its 200th event for 6 s, once per process — a hung disk, for
//! the `[ingest] stall_timeout` test (issue 12).

/// The environment variable naming the step to abort at.
#[cfg(feature = "failpoints")]
pub const ENV: &str = "LIVEREC_FAILPOINT";

#[cfg(feature = "failpoints")]
pub fn hit(step: &'static str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty()));
    if armed.as_deref() == Some(step) {
        eprintln!("failpoint {step}: aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_step: &'static str) {}

/// The event count at which `recording.hang` stops a recorder.
#[cfg(feature = "failpoints")]
pub const HANG_AFTER: u64 = 200;
/// How long it stops: longer than the test's `stall_timeout` plus the time the rest of
/// the push takes to overrun the ring.
#[cfg(feature = "failpoints")]
pub const HANG_FOR: std::time::Duration = std::time::Duration::from_secs(6);

/// `Some(HANG_FOR)` the first time a recorder reaches `HANG_AFTER` events while
/// `recording.hang` is armed; `None` otherwise (always, without the feature).
#[cfg(feature = "failpoints")]
pub fn hang(step: &'static str, events: u64) -> Option<std::time::Duration> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static HUNG: AtomicBool = AtomicBool::new(false);
    if events < HANG_AFTER
        || HUNG.load(Ordering::Relaxed)
        || std::env::var(ENV).ok().as_deref() != Some(step)
    {
        return None;
    }
    (!HUNG.swap(true, Ordering::SeqCst)).then(|| {
        eprintln!("failpoint {step}: hanging for {HANG_FOR:?}");
        HANG_FOR
    })
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hang(_step: &'static str, _events: u64) -> Option<std::time::Duration> {
    None
}

/// Logged at start: the armed step, or that `LIVEREC_FAILPOINT` is set in a build that
/// cannot honour it (a crash-step test then says why nothing crashed).
pub fn log_at_start() {
    let Some(step) = std::env::var("LIVEREC_FAILPOINT")
        .ok()
        .filter(|s| !s.is_empty())
    else {
        return;
    };
    if cfg!(feature = "failpoints") {
        tracing::warn!(step, "failpoint armed: the daemon aborts at this step");
    } else {
        tracing::warn!(
            step,
            "LIVEREC_FAILPOINT is set but this build has no failpoints (build with --features failpoints)"
        );
    }
}

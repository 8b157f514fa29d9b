//! The recordings catalog in the store (R-QY-1, DESIGN "State in the store"): every
//! indexed recording is also a small JSON object under `.liverec/state/recordings/{key}.json`
//! of the storage backend, so the local index (`{spool}/.index/recordings/`) can be
//! rebuilt from a listing — on a new node, after the spool was lost, or to see what other
//! nodes sharing the bucket stored.
//!
//! Changes reach the store through an append-only queue in the spool (`publish.jsonl` plus
//! a confirmed offset), in order and retried like uploads, so a crash or an outage delays
//! the store's copy but never loses an entry.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::retention::{FileRecord, Index, Op};
use crate::state::{State, StateError};

/// The state kind (directory) of catalog objects.
pub const KIND: &str = "recordings";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("a rebuild of the recordings index is already running")]
    Running,
    #[error(
        "{0} recordings index changes are still waiting for the store; rebuild when it answers"
    )]
    NotDrained(u64),
    #[error("listing the store: {0}")]
    State(#[from] StateError),
    #[error("writing the local index: {0}")]
    Io(#[from] std::io::Error),
}

/// Publishes queued catalog changes to the store, in order, until `stop`.
pub async fn publisher(index: Arc<Index>, state: State, stop: CancellationToken) {
    loop {
        let ops = match index.queued_ops() {
            Ok(ops) => ops,
            Err(e) => {
                warn!("cannot read the recordings publish queue: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        if ops.is_empty() {
            tokio::select! {
                _ = index.wake.notified() => continue,
                _ = stop.cancelled() => return,
            }
        }
        for (op, end) in ops {
            if !publish_one(&state, &op, &stop).await {
                return;
            }
            if let Err(e) = index.published(end) {
                warn!("cannot advance the recordings publish queue: {e}");
            }
        }
    }
}

/// One change, retried with backoff until the store takes it; false when stopped first.
async fn publish_one(state: &State, op: &Op, stop: &CancellationToken) -> bool {
    let mut attempt = 0u32;
    loop {
        let res = match op {
            Op::Put(r) => state.put(KIND, &r.key, r).await,
            Op::Delete(k) if k.is_empty() => Ok(()),
            Op::Delete(k) => state.delete(KIND, k).await,
        };
        let key = match op {
            Op::Put(r) => r.key.as_str(),
            Op::Delete(k) => k.as_str(),
        };
        match res {
            Ok(()) => {
                if attempt > 0 {
                    info!(key, "recordings index reached the store again");
                }
                return true;
            }
            // Not a store failure: retrying cannot help.
            Err(e @ (StateError::Key(_) | StateError::Json(_))) => {
                warn!(key, "recordings index entry cannot be stored, skipped: {e}");
                return true;
            }
            Err(e) => {
                attempt += 1;
                if attempt == 1 {
                    warn!(
                        key,
                        "recordings index entry not stored, retrying with backoff: {e}"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(super::upload::backoff(attempt)) => {}
                    _ = stop.cancelled() => return false,
                }
            }
        }
    }
}

/// Rebuilds the local index from the store's catalog objects. Changes made while the
/// store is listed are kept; changes still queued are waited for (up to `drain`), since
/// the listing could not show them.
pub async fn rebuild(index: &Index, state: &State, drain: Duration) -> Result<usize, CatalogError> {
    if index.rebuilding.swap(true, Ordering::SeqCst) {
        return Err(CatalogError::Running);
    }
    index.journal_start();
    let res = async {
        let deadline = tokio::time::Instant::now() + drain;
        while index.unpublished() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(CatalogError::NotDrained(index.unpublished()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let listed: Vec<FileRecord> = state.list(KIND).await?;
        Ok(index.replace(listed)?)
    }
    .await;
    if res.is_err() {
        index.journal_stop();
    }
    index.rebuilding.store(false, Ordering::SeqCst);
    res
}

/// At start, when there was no local index: rebuilds it from the store, retrying with
/// backoff while the store is unreachable.
pub async fn rebuild_at_start(index: Arc<Index>, state: State, stop: CancellationToken) {
    if !index.needs_rebuild {
        return;
    }
    let mut attempt = 0u32;
    loop {
        match rebuild(&index, &state, Duration::from_secs(60)).await {
            Ok(n) => {
                info!(
                    recordings = n,
                    "no local recordings index: rebuilt it from the store"
                );
                restore_retention(&index, &state).await;
                return;
            }
            Err(CatalogError::Running) => return,
            Err(e) => {
                attempt += 1;
                if attempt == 1 {
                    warn!("cannot rebuild the recordings index from the store yet, retrying: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(super::upload::backoff(attempt)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// The spool's retention entries went with its index: the rebuilt entries' expiries are
/// put back (an HLS recording's segments from its stored playlist), so files stored before
/// still expire. Entries this run stored itself already have theirs.
async fn restore_retention(index: &Index, state: &State) {
    let due: Vec<FileRecord> = index
        .query(&Default::default())
        .into_iter()
        .filter(|r| r.expires > 0 && !index.recently_stored(&r.key))
        .collect();
    let mut n = 0usize;
    for r in due {
        if r.format == "hls" {
            match state.get_recording(&r.key).await {
                Ok(text) => {
                    let text = String::from_utf8_lossy(&text);
                    match hls::MediaPlaylist::parse(&text) {
                        Ok((pl, _)) => {
                            for k in hls::PlaylistKey::new(&r.key).segment_keys(&pl) {
                                index.expire_at(&k, r.expires);
                                n += 1;
                            }
                        }
                        Err(e) => {
                            warn!(key = %r.key, "stored playlist unreadable, its segments will not expire: {e}")
                        }
                    }
                }
                Err(e) => {
                    warn!(key = %r.key, "cannot read the stored playlist, its segments will not expire: {e}")
                }
            }
        }
        index.expire_at(&r.key, r.expires);
        n += 1;
    }
    if n > 0 {
        info!(
            files = n,
            "retention restored for files stored before the index was lost"
        );
    }
}

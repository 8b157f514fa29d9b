//! The recordings catalog in the store (R-QY-1, DESIGN "State in the store"): every
//! indexed recording is also a small JSON object under `.liverec/state/recordings/{key}.json`
//! of the storage backend, so the local index (table `recordings` of the node database,
//! `crate::db`) can be rebuilt from a listing — on a new node, after the spool was lost, or
//! to see what other nodes sharing the bucket stored.
//!
//! Changes reach the store through the database's outbox (`catalog_outbox`), queued in the
//! same transaction as the local change and removed only once the store has it, in order
//! and retried like uploads, so a crash or an outage delays the store's copy but never
//! loses an entry.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Sink;
use crate::db::{Db, DbError, FileRecord, Op};
use crate::state::{State, StateError};

/// Outbox rows read per round trip.
const PUBLISH_BATCH: usize = 256;

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
    Db(#[from] DbError),
}

/// Where each published batch also goes when several nodes share the store: the
/// cluster's change log (`cluster::sync`, R-SC-1), which the other nodes read
/// incrementally. A trait so `sink` does not depend on `cluster`.
pub trait ChangeLog: Send + Sync {
    /// This node's id, written into its catalog entries so every node knows whose
    /// files they are (retention stays with the owner, R-SC-1).
    fn node_id(&self) -> &str;
    fn append<'a>(&'a self, ops: &'a [Op]) -> futures::future::BoxFuture<'a, Result<(), String>>;
}

/// Publishes queued catalog changes to the store, in order, until `stop`.
pub async fn publisher(
    db: Db,
    state: State,
    log: Option<Arc<dyn ChangeLog>>,
    stop: CancellationToken,
) {
    loop {
        // A commit between this read and the wait below still wakes it: `notify_one` keeps
        // a permit when no one is waiting yet. (At worst a stale permit costs one extra,
        // empty read.)
        let wake = db.outbox_wake().notified();
        let ops = match db.pending(PUBLISH_BATCH).await {
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
                _ = wake => continue,
                _ = stop.cancelled() => return,
            }
        }
        // Confirmed a batch at a time (one transaction); a crash mid-batch publishes the
        // confirmed-but-unrecorded changes again, which the store takes as no-ops.
        let mut done = Vec::with_capacity(ops.len());
        let mut batch = Vec::with_capacity(ops.len());
        for (id, mut op) in ops {
            if let (Some(log), Op::Put(r)) = (&log, &mut op) {
                if r.node.is_empty() {
                    r.node = log.node_id().to_string();
                }
            }
            if !publish_one(&state, &op, &stop).await {
                // The log has not seen them: confirmed only after it has, below.
                if log.is_some() {
                    return;
                }
                // Stopped: confirm what the store already has, so the next start does not
                // publish it again.
                if let Err(e) = db.published(done).await {
                    warn!("cannot advance the recordings publish queue: {e}");
                }
                return;
            }
            done.push(id);
            batch.push(op);
        }
        if let Some(log) = &log {
            // Before the batch is confirmed: a crash in between appends it again, which
            // the other nodes apply as no-ops.
            let mut attempt = 0u32;
            while let Err(e) = log.append(&batch).await {
                attempt += 1;
                if attempt == 1 {
                    warn!("recordings index changes not yet in the cluster's log, retrying: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(super::upload::backoff(attempt)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
        // A failure here leaves the rows queued: they are published again (idempotent puts
        // and deletes), never lost.
        if let Err(e) = db.published(done).await {
            warn!("cannot advance the recordings publish queue: {e}");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stop.cancelled() => return,
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
pub async fn rebuild(sink: &Sink, state: &State, drain: Duration) -> Result<usize, CatalogError> {
    if sink.rebuilding.swap(true, Ordering::SeqCst) {
        return Err(CatalogError::Running);
    }
    let db = sink.db();
    let res = async {
        db.rebuild_start().await?;
        let deadline = tokio::time::Instant::now() + drain;
        while db.unpublished() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(CatalogError::NotDrained(db.unpublished()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let listed: Vec<FileRecord> = state.list(KIND).await?;
        // `replace` ends the journal itself.
        Ok(db.replace(listed).await?)
    }
    .await;
    if res.is_err() {
        if let Err(e) = db.rebuild_stop().await {
            warn!("cannot stop the rebuild journal: {e}");
        }
    }
    sink.rebuilding.store(false, Ordering::SeqCst);
    res
}

/// At start, when there was no complete local index: rebuilds it from the store, retrying
/// with backoff while the store is unreachable.
pub async fn rebuild_at_start(sink: Arc<Sink>, state: State, stop: CancellationToken) {
    if !sink.db().needs_rebuild() {
        return;
    }
    let mut attempt = 0u32;
    loop {
        match rebuild(&sink, &state, Duration::from_secs(60)).await {
            Ok(n) => {
                info!(
                    recordings = n,
                    "no local recordings index: rebuilt it from the store"
                );
                restore_retention(sink.db(), &state).await;
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
/// still expire. Entries this run stored itself are not filtered out (the JSON-lines index
/// skipped its recently stored keys): `expire_at` keeps an existing later expiry, so
/// scheduling them again changes nothing — and `recently_stored` now also answers true
/// for every rebuilt recording, so it cannot tell them apart anyway.
async fn restore_retention(db: &Db, state: &State) {
    let all = match db.query_all(Default::default()).await {
        Ok(all) => all,
        Err(e) => {
            warn!("cannot read the rebuilt recordings index, retention not restored: {e}");
            return;
        }
    };
    let n = expire_again(db, state, all).await;
    if n > 0 {
        info!(
            files = n,
            "retention restored for files stored before the index was lost"
        );
    }
}

/// Schedules the expiry of stored recordings in this node's retention (an HLS
/// recording's segments from its stored playlist): after a rebuild, or for the files of
/// a node gone longer than `[cluster] orphan_after` (R-SC-1). Returns how many files.
pub async fn expire_again(db: &Db, state: &State, all: Vec<FileRecord>) -> usize {
    let mut n = 0usize;
    let mut expire = |key: String, at: i64| {
        let db = db.clone();
        n += 1;
        async move {
            if let Err(e) = db.expire_at(&key, at).await {
                warn!(
                    key,
                    "cannot schedule the file's expiry, it will not expire: {e}"
                );
            }
        }
    };
    for r in all.into_iter().filter(|r| r.expires > 0) {
        if r.format == "hls" {
            match state.get_recording(&r.key).await {
                Ok(text) => {
                    let text = String::from_utf8_lossy(&text);
                    match hls::MediaPlaylist::parse(&text) {
                        Ok((pl, _)) => {
                            for k in hls::PlaylistKey::new(&r.key).segment_keys(&pl) {
                                expire(k, r.expires).await;
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
        expire(r.key.clone(), r.expires).await;
    }
    n
}

//! The node's own state in one SQLite database (issue 11, DESIGN "node state"): the
//! recordings index (R-QY-1), the retention schedule (R-ST-5), the catalog publish queue
//! and the life-cycle of the files the node owes (R-ST-4), in `{spool}/.liverec.db`
//! (dot-named, so the spool scan of `sink::recover` passes it by).
//!
//! One thread owns the connection; async callers send it closures and await the answer on
//! a oneshot, so no task blocks a runtime worker on disk I/O or holds a std lock across
//! an `.await`. Each operation is one transaction: the steps that used to be separate
//! appends to separate files (index line, retention line, publish line) now commit or
//! vanish together, which closes the crash windows between them.
//!
//! On the first open of a spool that still has the JSON-lines index of earlier versions
//! (`{spool}/.index/`), it is imported in the same transaction that records the import,
//! then renamed aside (`import.rs`).

mod callbacks;
mod import;
mod schema;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};
use tracing::{info, warn};

pub use crate::model::FileRecord;
pub use callbacks::Callback;
pub use schema::VERSION;

/// The database file, in the spool directory.
pub const DB_FILE: &str = ".liverec.db";
/// The JSON-lines index of earlier versions, imported once.
pub const LEGACY_INDEX_DIR: &str = ".index";

/// Recordings per page when the caller does not say (R-QY-1's API).
pub const PAGE_DEFAULT: usize = 100;
pub const PAGE_MAX: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("opening the node database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the node database {path} has schema version {found}, newer than the {known} this \
         liverec knows: run the newer liverec that wrote it, or move the file aside"
    )]
    FutureVersion {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("migrating the node database to version {version}: {source}")]
    Migrate {
        version: i64,
        source: rusqlite::Error,
    },
    #[error("node database: {op} `{key}`: {source}")]
    Sql {
        op: &'static str,
        key: String,
        source: rusqlite::Error,
    },
    #[error("node database: {op} `{key}`: {what}")]
    Corrupt {
        op: &'static str,
        key: String,
        what: String,
    },
    #[error("node database: {op} `{key}`: {source}")]
    Json {
        op: &'static str,
        key: String,
        source: serde_json::Error,
    },
    #[error("file {id} is `{found}`, not `{from}`: refusing the step {from} -> {to}")]
    WrongState {
        id: i64,
        from: FileState,
        found: FileState,
        to: FileState,
    },
    #[error("file {id}: {from} -> {to} is not a step forward")]
    Backwards {
        id: i64,
        from: FileState,
        to: FileState,
    },
    #[error("file {id} is not in the node database")]
    NoSuchFile { id: i64 },
    #[error("the page token is not one this server gave out")]
    BadPageToken,
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the node database thread is gone (during {op})")]
    Closed { op: &'static str },
    #[error("starting the node database thread: {0}")]
    Thread(std::io::Error),
    /// A test's simulated crash inside a transaction.
    #[cfg(test)]
    #[error("simulated crash")]
    Crash,
}

/// Adds the operation and key to a rusqlite error.
trait Ctx<T> {
    fn ctx(self, op: &'static str, key: impl std::fmt::Display) -> Result<T, DbError>;
}

impl<T> Ctx<T> for rusqlite::Result<T> {
    fn ctx(self, op: &'static str, key: impl std::fmt::Display) -> Result<T, DbError> {
        self.map_err(|source| DbError::Sql {
            op,
            key: key.to_string(),
            source,
        })
    }
}

/// The filter of the recordings API (R-QY-1).
#[derive(Debug, Default, Clone)]
pub struct RecordingFilter {
    pub domain: Option<String>,
    pub app: Option<String>,
    pub stream: Option<String>,
    /// Unix seconds: files that end after `from` and start before `to`.
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub format: Option<String>,
    pub task_id: Option<String>,
}

/// Which page of a query: the first one without a token; `page_size` is clamped to
/// 1..=[`PAGE_MAX`].
#[derive(Debug, Default, Clone)]
pub struct PageRequest {
    pub page_size: Option<usize>,
    pub page_token: Option<String>,
}

/// A change of the store's recordings catalog waiting in `catalog_outbox` (the
/// queue of the old JSON-lines index). An unreadable row comes back as
/// `Delete("")`, which the publisher passes over, as it did a torn queue line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
// Ops live briefly, at most a publish batch (256) at a time; nearly all are puts, so a
// box would cost an allocation each and save nothing.
#[allow(clippy::large_enum_variant)]
pub enum Op {
    Put(FileRecord),
    Delete(String),
}

/// A retention entry whose time has come.
#[derive(Debug, Clone, PartialEq)]
pub struct Expired {
    pub key: String,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// None for an expiry restored from the store's catalog or the old index.
    pub storage_time: Option<u64>,
}

/// Where a file the node owes is (R-ST-4); only ever forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileState {
    /// Finalized in the spool.
    Closed,
    /// Waiting for its upload (`.up` in the spool).
    Queued,
    /// The store has it; not indexed yet (an HLS segment waits for its playlist).
    Stored,
    /// In `recordings`, `retention` and `catalog_outbox`: nothing more is owed.
    Indexed,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Closed => "closed",
            FileState::Queued => "queued",
            FileState::Stored => "stored",
            FileState::Indexed => "indexed",
        }
    }

    fn parse(s: &str) -> Option<FileState> {
        Some(match s {
            "closed" => FileState::Closed,
            "queued" => FileState::Queued,
            "stored" => FileState::Stored,
            "indexed" => FileState::Indexed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for FileState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A closed file the node now owes a store and an index entry.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFile {
    pub spool_path: PathBuf,
    pub key: String,
    pub format: String,
    /// Seconds it is kept once stored (0 = forever, R-ST-5).
    pub storage_time: u64,
    /// Its recordings entry; None for a file that has none (an HLS segment).
    pub record: Option<FileRecord>,
    /// Keys that expire with it: an HLS playlist's segments.
    pub segments: Vec<String>,
}

/// A row of `files`.
#[derive(Debug, Clone, PartialEq)]
pub struct OwedFile {
    pub id: i64,
    pub state: FileState,
    pub file: NewFile,
}

/// What the owning thread holds: the connection and the rebuild journal.
pub(crate) struct Conn {
    db: Connection,
    /// While a rebuild lists the store: the catalog changes made meanwhile, applied on
    /// top of the listing.
    journal: Option<Vec<Op>>,
    shared: Arc<Shared>,
    #[cfg(test)]
    crash_before_commit: bool,
}

/// What every handle reads without a round trip to the thread.
struct Shared {
    path: PathBuf,
    /// Rows in `catalog_outbox` (the `liverec_recordings_index_unpublished` gauge).
    unpublished: AtomicU64,
    /// Rung after a commit that queued catalog changes (the publisher waits on it).
    wake: Notify,
    /// Rung after a commit that may have queued a callback (the sender waits on it).
    callbacks_wake: Notify,
    /// The local catalog is not complete: rebuild it from the store (R-QY-1).
    needs_rebuild: AtomicBool,
}

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

enum Cmd {
    Run(Job),
    Close(oneshot::Sender<()>),
}

/// A handle on the node database; cheap to clone. The thread and the connection end
/// when the last handle is dropped or [`Db::close`] is called.
#[derive(Clone)]
pub struct Db {
    tx: std::sync::mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
}

impl Db {
    /// Opens (creating, migrating and, once, importing the old index) the database of
    /// the spool directory `spool`.
    pub async fn open(spool: &Path) -> Result<Db, DbError> {
        Db::open_at(&spool.join(DB_FILE), Some(&spool.join(LEGACY_INDEX_DIR))).await
    }

    /// Opens the database at `path`; imports `legacy` (a JSON-lines index directory) if
    /// it exists.
    pub async fn open_at(path: &Path, legacy: Option<&Path>) -> Result<Db, DbError> {
        let (tx, rx) = std::sync::mpsc::channel::<Cmd>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (path, legacy) = (path.to_path_buf(), legacy.map(Path::to_path_buf));
        std::thread::Builder::new()
            .name("liverec-db".into())
            .spawn(move || {
                let mut conn = match Conn::open(path, legacy.as_deref()) {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(c.shared.clone()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        // A panic is a bug of ours; it must not take the thread (and every
                        // later call) with it. The open transaction rolls back on unwind.
                        Cmd::Run(job) => {
                            let res =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    job(&mut conn)
                                }));
                            if res.is_err() {
                                warn!("a node database operation panicked; it was rolled back");
                            }
                        }
                        Cmd::Close(done) => {
                            drop(conn);
                            let _ = done.send(());
                            return;
                        }
                    }
                }
            })
            .map_err(DbError::Thread)?;
        let shared = ready_rx
            .await
            .map_err(|_| DbError::Closed { op: "open" })??;
        Ok(Db { tx, shared })
    }

    /// Runs `f` on the owning thread.
    async fn call<R: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Conn) -> Result<R, DbError> + Send + 'static,
    ) -> Result<R, DbError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |c| {
            let _ = tx.send(f(c));
        });
        self.tx
            .send(Cmd::Run(job))
            .map_err(|_| DbError::Closed { op })?;
        rx.await.map_err(|_| DbError::Closed { op })?
    }

    /// Closes the connection (checkpointing the WAL) and waits for it; other handles'
    /// later calls fail with [`DbError::Closed`].
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    // --- The recordings index and catalog (R-QY-1) ---

    /// A stored file with its recordings entry, in one transaction: `rec` (its `expires`
    /// set from `storage_time`), its retention entry and its segments' (when
    /// `storage_time` > 0), and the catalog change: what the old JSON-lines index did in
    /// three separate appends.
    pub async fn record_stored(
        &self,
        rec: FileRecord,
        storage_time: u64,
        segments: Vec<String>,
    ) -> Result<(), DbError> {
        self.call("record", move |c| {
            let now = now_ms();
            c.write("record", &rec.key.clone(), |tx, ops| {
                let key = rec.key.clone();
                index_in(tx, ops, &key, storage_time, Some(rec), &segments, now)
            })
        })
        .await
    }

    #[cfg(test)] // fixtures and the scale test: many recordings in one commit
    /// Many [`Db::record_stored`]s in one transaction (one commit, one sync): for
    /// backlogs such as a recovery's uploads.
    pub async fn record_many(&self, recs: Vec<(FileRecord, u64)>) -> Result<(), DbError> {
        self.call("record_many", move |c| {
            let now = now_ms();
            c.write("record_many", &recs.len(), |tx, ops| {
                for (rec, storage_time) in recs {
                    let key = rec.key.clone();
                    index_in(tx, ops, &key, storage_time, Some(rec), &[], now)?;
                }
                Ok(())
            })
        })
        .await
    }

    /// A stored file without a recordings entry: retention only.
    pub async fn add(&self, key: &str, storage_time: u64) -> Result<(), DbError> {
        let key = key.to_string();
        self.call("add", move |c| {
            let now = now_ms();
            c.write("add", &key.clone(), |tx, ops| {
                index_in(tx, ops, &key, storage_time, None, &[], now)
            })
        })
        .await
    }

    /// Stored files without a recordings entry (an HLS playlist whose record was lost
    /// and its segments), retention only, in one transaction.
    pub async fn add_all(&self, keys: Vec<String>, storage_time: u64) -> Result<(), DbError> {
        self.call("add_all", move |c| {
            let now = now_ms();
            c.write("add_all", &keys.len(), |tx, ops| {
                for k in &keys {
                    index_in(tx, ops, k, storage_time, None, &[], now)?;
                }
                Ok(())
            })
        })
        .await
    }

    /// A retention entry with a known expiry (unix seconds, as `FileRecord::expires`):
    /// one restored from the store's catalog after a rebuild. An existing later expiry
    /// is kept: a file is never deleted before its time (R-ST-5).
    pub async fn expire_at(&self, key: &str, expires_unix_s: i64) -> Result<(), DbError> {
        let key = key.to_string();
        self.call("expire_at", move |c| {
            c.write("expire_at", &key.clone(), |tx, _| {
                schedule(tx, &key, expires_unix_s.saturating_mul(1000), None)
            })
        })
        .await
    }

    /// Stored recordings matching `f`, oldest first (by start, then key): one page, and
    /// the token of the next when there is more.
    pub async fn query(
        &self,
        f: RecordingFilter,
        page: PageRequest,
    ) -> Result<(Vec<FileRecord>, Option<String>), DbError> {
        let size = page.page_size.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
        let after = match &page.page_token {
            Some(t) => Some(decode_token(t).ok_or(DbError::BadPageToken)?),
            None => None,
        };
        self.call("query", move |c| {
            let mut recs = query_in(&c.db, &f, after.as_ref(), Some(size + 1))?;
            let next = if recs.len() > size {
                recs.truncate(size);
                recs.last().map(|r| encode_token(r.start_ms, &r.key))
            } else {
                None
            };
            Ok((recs, next))
        })
        .await
    }

    /// Every stored recording matching `f`, oldest first.
    pub async fn query_all(&self, f: RecordingFilter) -> Result<Vec<FileRecord>, DbError> {
        self.call("query", move |c| query_in(&c.db, &f, None, None))
            .await
    }

    /// Whether `key` is taken by this node: stored, scheduled or owed. Never forgets
    /// (unlike the bounded memory of the old index's recent keys), for R-ST-3's collision
    /// check.
    pub async fn recently_stored(&self, key: &str) -> Result<bool, DbError> {
        let key = key.to_string();
        self.call("recently_stored", move |c| {
            c.db.query_row(
                "SELECT EXISTS (SELECT 1 FROM recordings WHERE key = ?1)
                     OR EXISTS (SELECT 1 FROM retention WHERE key = ?1)
                     OR EXISTS (SELECT 1 FROM files WHERE key = ?1)",
                [&key],
                |r| r.get(0),
            )
            .ctx("recently_stored", &key)
        })
        .await
    }

    /// Catalog changes the store has not confirmed (the gauge; no round trip).
    pub fn unpublished(&self) -> u64 {
        self.shared.unpublished.load(Ordering::SeqCst)
    }

    /// Notified after a commit that queued catalog changes.
    pub fn outbox_wake(&self) -> &Notify {
        &self.shared.wake
    }

    /// Up to `limit` queued catalog changes, oldest first, each with the id to confirm.
    pub async fn pending(&self, limit: usize) -> Result<Vec<(i64, Op)>, DbError> {
        self.call("pending", move |c| {
            let mut st =
                c.db.prepare_cached(
                    "SELECT id, op, key, record FROM catalog_outbox ORDER BY id LIMIT ?1",
                )
                .ctx("pending", "")?;
            let rows = st
                .query_map([limit.min(i64::MAX as usize) as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                })
                .ctx("pending", "")?;
            let mut out = Vec::new();
            for row in rows {
                let (id, op, key, record) = row.ctx("pending", "")?;
                let parsed = match (op.as_str(), record) {
                    ("delete", _) => Some(Op::Delete(key.clone())),
                    ("put", Some(json)) => serde_json::from_str(&json).ok().map(Op::Put),
                    _ => None,
                };
                out.push((
                    id,
                    parsed.unwrap_or_else(|| {
                        warn!(id, key, "unreadable catalog outbox row, passed over");
                        Op::Delete(String::new())
                    }),
                ));
            }
            Ok(out)
        })
        .await
    }

    /// The store has these changes.
    pub async fn published(&self, ids: Vec<i64>) -> Result<(), DbError> {
        self.call("published", move |c| {
            let tx = c.db.transaction().ctx("published", "")?;
            let mut gone = 0u64;
            {
                let mut st = tx
                    .prepare_cached("DELETE FROM catalog_outbox WHERE id = ?1")
                    .ctx("published", "")?;
                for id in &ids {
                    gone += st.execute([id]).ctx("published", id)? as u64;
                }
            }
            tx.commit().ctx("published", "")?;
            let _ = c
                .shared
                .unpublished
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    Some(n.saturating_sub(gone))
                });
            Ok(())
        })
        .await
    }

    /// Whether the local catalog must be rebuilt from the store (a new node, a lost
    /// spool, or a rebuild that never finished).
    pub fn needs_rebuild(&self) -> bool {
        self.shared.needs_rebuild.load(Ordering::SeqCst)
    }

    /// Starts recording the catalog changes made while a rebuild lists the store.
    pub async fn rebuild_start(&self) -> Result<(), DbError> {
        self.call("rebuild_start", |c| {
            c.journal = Some(Vec::new());
            Ok(())
        })
        .await
    }

    pub async fn rebuild_stop(&self) -> Result<(), DbError> {
        self.call("rebuild_stop", |c| {
            c.journal = None;
            Ok(())
        })
        .await
    }

    /// Recordings other nodes indexed (R-SC-1), applied to this node's index only: no
    /// outbox row (the store has them already) and no retention entry (their owner
    /// expires them). `cursor` (how far the shared change log was read) is saved in the
    /// same transaction, so a restart goes on from there.
    pub async fn apply_remote(&self, ops: Vec<Op>, cursor: String) -> Result<(), DbError> {
        self.call("apply_remote", move |c| {
            let tx = c.db.transaction().ctx("apply_remote", "")?;
            for op in &ops {
                match op {
                    Op::Put(r) => put_recording(&tx, r)?,
                    Op::Delete(k) => {
                        tx.execute("DELETE FROM recordings WHERE key = ?1", [k])
                            .ctx("apply_remote", k)?;
                    }
                }
            }
            set_meta(&tx, "cluster_catalog_cursor", &cursor)?;
            tx.commit().ctx("apply_remote", "")?;
            // A rebuild running meanwhile replaces the table with a listing that may
            // predate these: they are replayed over it like local changes.
            if let Some(j) = c.journal.as_mut() {
                j.extend(ops);
            }
            Ok(())
        })
        .await
    }

    /// The recordings `node` stored that expire (R-SC-1 retention takeover): key,
    /// format and expiry.
    pub async fn expiring_of(&self, node: String) -> Result<Vec<FileRecord>, DbError> {
        self.call("expiring_of", move |c| {
            let mut st =
                c.db.prepare(
                    "SELECT key, format, expires FROM recordings WHERE node = ?1 AND expires > 0",
                )
                .ctx("expiring_of", &node)?;
            let rows = st
                .query_map([&node], |r| {
                    Ok(FileRecord {
                        key: r.get(0)?,
                        format: r.get(1)?,
                        expires: r.get(2)?,
                        node: node.clone(),
                        ..Default::default()
                    })
                })
                .ctx("expiring_of", &node)?;
            rows.collect::<Result<Vec<_>, _>>()
                .ctx("expiring_of", &node)
        })
        .await
    }

    /// How far this node read the cluster's recordings change log (None: never).
    pub async fn cluster_cursor(&self) -> Result<Option<String>, DbError> {
        self.call("cluster_cursor", |c| {
            get_meta(&c.db, "cluster_catalog_cursor")
        })
        .await
    }

    /// Replaces the recordings with the store's listing plus the changes made since
    /// [`Db::rebuild_start`], in one transaction; returns how many there are. Retention
    /// and the outbox are left alone.
    pub async fn replace(&self, listed: Vec<FileRecord>) -> Result<usize, DbError> {
        self.call("replace", move |c| {
            let journal = c.journal.take().unwrap_or_default();
            let tx = c.db.transaction().ctx("replace", "")?;
            tx.execute("DELETE FROM recordings", [])
                .ctx("replace", "")?;
            for r in &listed {
                put_recording(&tx, r)?;
            }
            for op in &journal {
                match op {
                    Op::Put(r) => put_recording(&tx, r)?,
                    Op::Delete(k) => {
                        tx.execute("DELETE FROM recordings WHERE key = ?1", [k])
                            .ctx("replace", k)?;
                    }
                }
            }
            set_meta(&tx, "catalog_ready", "1")?;
            let n: i64 = tx
                .query_row("SELECT count(*) FROM recordings", [], |r| r.get(0))
                .ctx("replace", "")?;
            tx.commit().ctx("replace", "")?;
            c.shared.needs_rebuild.store(false, Ordering::SeqCst);
            Ok(n.max(0) as usize)
        })
        .await
    }

    // --- Retention (R-ST-5) ---

    /// Up to `limit` entries due at `now_ms`, soonest first. They stay scheduled until
    /// [`Db::deleted`]: a crash between the delete and that step deletes again, which is
    /// harmless, and a failed delete is simply retried by the next sweep.
    pub async fn take_expired(&self, now_ms: i64, limit: usize) -> Result<Vec<Expired>, DbError> {
        self.call("take_expired", move |c| {
            let mut st =
                c.db.prepare_cached(
                    "SELECT key, expires_at, storage_time FROM retention
                     WHERE expires_at <= ?1 ORDER BY expires_at, key LIMIT ?2",
                )
                .ctx("take_expired", now_ms)?;
            let rows = st
                .query_map(params![now_ms, limit.min(i64::MAX as usize) as i64], |r| {
                    Ok(Expired {
                        key: r.get(0)?,
                        expires_at: r.get(1)?,
                        storage_time: r.get::<_, Option<i64>>(2)?.map(|s| s.max(0) as u64),
                    })
                })
                .ctx("take_expired", now_ms)?;
            rows.collect::<Result<Vec<_>, _>>()
                .ctx("take_expired", now_ms)
        })
        .await
    }

    /// These files are deleted from the store: out of the schedule, the recordings, the
    /// finished `files` rows, and a catalog delete queued for each recording.
    pub async fn deleted(&self, keys: Vec<String>) -> Result<(), DbError> {
        self.call("deleted", move |c| {
            c.write("deleted", &keys.len(), |tx, ops| {
                for k in &keys {
                    tx.execute("DELETE FROM retention WHERE key = ?1", [k])
                        .ctx("deleted", k)?;
                    tx.execute(
                        "DELETE FROM files WHERE key = ?1 AND state = 'indexed'",
                        [k],
                    )
                    .ctx("deleted", k)?;
                    let was = tx
                        .execute("DELETE FROM recordings WHERE key = ?1", [k])
                        .ctx("deleted", k)?;
                    if was > 0 {
                        outbox(tx, &Op::Delete(k.clone()))?;
                    }
                    // The listing a rebuild reads may still hold it; the journal drops it.
                    ops.push((Op::Delete(k.clone()), was > 0));
                }
                Ok(())
            })
        })
        .await
    }
}

// --- Files the node owes (R-ST-4) ---
impl Db {
    /// A file closed in the spool: owed from now on; returns its id.
    pub async fn owe(&self, f: NewFile) -> Result<i64, DbError> {
        self.owe_at(f, FileState::Closed).await
    }

    /// A file owed from `state` on (`Queued`: renamed to `{file}.up` for its upload).
    pub async fn owe_at(&self, f: NewFile, state: FileState) -> Result<i64, DbError> {
        self.call("owe", move |c| {
            let record = f
                .record
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|source| DbError::Json {
                    op: "owe",
                    key: f.key.clone(),
                    source,
                })?;
            let segments = (!f.segments.is_empty())
                .then(|| serde_json::to_string(&f.segments))
                .transpose()
                .map_err(|source| DbError::Json {
                    op: "owe",
                    key: f.key.clone(),
                    source,
                })?;
            c.db.execute(
                "INSERT INTO files (spool_path, key, format, state, storage_time, record,
                                    segments, updated_ms)
                 VALUES (?1, ?2, ?3, ?8, ?4, ?5, ?6, ?7)",
                params![
                    f.spool_path.to_string_lossy(),
                    f.key,
                    f.format,
                    clamp_i64(f.storage_time),
                    record,
                    segments,
                    now_ms(),
                    state.as_str()
                ],
            )
            .ctx("owe", &f.key)?;
            Ok(c.db.last_insert_rowid())
        })
        .await
    }

    /// Moves file `id` from `from` to `to` in one transaction, refusing when it is not at
    /// `from` (another step got there first, or a stale retry) or the step goes back. The
    /// step to `Indexed` is the whole indexing: the recordings row, the retention rows
    /// and the catalog change commit with it, or nothing does.
    pub async fn advance(&self, id: i64, from: FileState, to: FileState) -> Result<(), DbError> {
        self.call("advance", move |c| c.advance(id, from, to, now_ms()))
            .await
    }

    /// Files not yet indexed, oldest first: what recovery resumes after a crash.
    pub async fn owed(&self) -> Result<Vec<OwedFile>, DbError> {
        self.call("owed", |c| {
            let mut st =
                c.db.prepare_cached(&format!(
                    "{FILE_COLUMNS} FROM files WHERE state <> 'indexed' ORDER BY id"
                ))
                .ctx("owed", "")?;
            let rows = st.query_map([], file_row).ctx("owed", "")?;
            let mut out = Vec::new();
            for row in rows {
                // One unreadable row must not hide the others from recovery.
                match row.ctx("owed", "").and_then(parse_file) {
                    Ok(f) => out.push(f),
                    Err(e) => warn!("skipping an owed file: {e}"),
                }
            }
            Ok(out)
        })
        .await
    }

    /// The rows of these spool files (any state, the newest row per path): how recovery
    /// tells a finished spool file still owed from one indexed just before a crash.
    pub async fn files_at(&self, paths: Vec<PathBuf>) -> Result<Vec<OwedFile>, DbError> {
        self.call("files_at", move |c| {
            let mut st =
                c.db.prepare_cached(&format!(
                    "{FILE_COLUMNS} FROM files WHERE spool_path = ?1 ORDER BY id DESC LIMIT 1"
                ))
                .ctx("files_at", "")?;
            let mut out = Vec::new();
            for p in &paths {
                let path = p.to_string_lossy();
                let row = st
                    .query_row([path.as_ref()], file_row)
                    .optional()
                    .ctx("files_at", &path)?;
                if let Some(row) = row {
                    match parse_file(row) {
                        Ok(f) => out.push(f),
                        Err(e) => warn!("skipping a file row: {e}"),
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Drops a `files` row: a file this node no longer owes (it went elsewhere).
    pub async fn forget(&self, id: i64) -> Result<(), DbError> {
        self.call("forget", move |c| {
            c.db.execute("DELETE FROM files WHERE id = ?1", [id])
                .ctx("forget", id)?;
            Ok(())
        })
        .await
    }

    /// One `files` row.
    #[cfg(test)]
    pub async fn file(&self, id: i64) -> Result<Option<OwedFile>, DbError> {
        self.call("file", move |c| {
            c.db.query_row(
                &format!("{FILE_COLUMNS} FROM files WHERE id = ?1"),
                [id],
                file_row,
            )
            .optional()
            .ctx("file", id)?
            .map(parse_file)
            .transpose()
        })
        .await
    }
}

const FILE_COLUMNS: &str =
    "SELECT id, state, spool_path, key, format, storage_time, record, segments";

type FileRow = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
);

fn file_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn parse_file(row: FileRow) -> Result<OwedFile, DbError> {
    let (id, state, spool_path, key, format, storage_time, record, segments) = row;
    let corrupt = |what: String| DbError::Corrupt {
        op: "read file",
        key: format!("{id} {key}"),
        what,
    };
    let state =
        FileState::parse(&state).ok_or_else(|| corrupt(format!("unknown state `{state}`")))?;
    let record = record
        .map(|j| serde_json::from_str::<FileRecord>(&j))
        .transpose()
        .map_err(|e| corrupt(format!("record: {e}")))?;
    let segments = segments
        .map(|j| serde_json::from_str::<Vec<String>>(&j))
        .transpose()
        .map_err(|e| corrupt(format!("segments: {e}")))?
        .unwrap_or_default();
    Ok(OwedFile {
        id,
        state,
        file: NewFile {
            spool_path: PathBuf::from(spool_path),
            key,
            format,
            storage_time: storage_time.max(0) as u64,
            record,
            segments,
        },
    })
}

impl Conn {
    fn open(path: PathBuf, legacy: Option<&Path>) -> Result<Conn, DbError> {
        let open_err = |source| DbError::Open {
            path: path.clone(),
            source,
        };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|source| DbError::Io {
                op: "creating the spool directory",
                path: d.to_path_buf(),
                source,
            })?;
        }
        let mut db = Connection::open(&path).map_err(open_err)?;
        // WAL: readers (an operator's `sqlite3`) do not block the daemon's writes, and a
        // commit is one append. synchronous=FULL: a commit survives a power cut too, since
        // a lost `indexed` step would leave a stored file that never expires (R-ST-5).
        let mode: String = db
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            warn!(path = %path.display(), mode, "the node database is not in WAL mode");
        }
        // The WAL is checkpointed every 64 pages (256 KiB) instead of SQLite's 1000
        // (4 MiB): the file never grows past a few hundred KiB, so a disk that is nearly
        // full — or a file-size limit, as the write-error tests use — fails the spool
        // files long before the database that indexes what was already stored. A
        // checkpoint every ~20 commits costs one more fsync each time.
        db.execute_batch(
            "PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000; PRAGMA wal_autocheckpoint = 64;",
        )
        .map_err(open_err)?;
        let found = schema::migrate(&mut db, &path)?;
        if found < VERSION {
            info!(path = %path.display(), from = found, to = VERSION, "node database schema migrated");
        }
        let mut conn = Conn {
            db,
            journal: None,
            shared: Arc::new(Shared {
                path: path.clone(),
                unpublished: AtomicU64::new(0),
                wake: Notify::new(),
                callbacks_wake: Notify::new(),
                needs_rebuild: AtomicBool::new(false),
            }),
            #[cfg(test)]
            crash_before_commit: false,
        };
        if let Some(dir) = legacy {
            import::import_once(&mut conn.db, dir, now_ms())?;
        }
        let outbox: i64 = conn
            .db
            .query_row("SELECT count(*) FROM catalog_outbox", [], |r| r.get(0))
            .ctx("open", "catalog_outbox")?;
        conn.shared
            .unpublished
            .store(outbox.max(0) as u64, Ordering::SeqCst);
        let ready = get_meta(&conn.db, "catalog_ready")?.is_some();
        conn.shared.needs_rebuild.store(!ready, Ordering::SeqCst);
        Ok(conn)
    }

    /// Runs `f` in one transaction; after the commit, records its catalog changes in the
    /// rebuild journal and counts and announces those it queued (`(op, queued)` pairs).
    fn write<R>(
        &mut self,
        op: &'static str,
        key: &dyn std::fmt::Display,
        f: impl FnOnce(&Transaction<'_>, &mut Vec<(Op, bool)>) -> Result<R, DbError>,
    ) -> Result<R, DbError> {
        let tx = self.db.transaction().ctx(op, key)?;
        let mut ops = Vec::new();
        let r = f(&tx, &mut ops)?;
        #[cfg(test)]
        if self.crash_before_commit {
            return Err(DbError::Crash);
        }
        tx.commit().ctx(op, key)?;
        let queued = ops.iter().filter(|(_, q)| *q).count() as u64;
        if let Some(j) = self.journal.as_mut() {
            j.extend(ops.into_iter().map(|(o, _)| o));
        }
        if queued > 0 {
            // A recordings entry was put or removed; a put may have queued its file event.
            self.shared.callbacks_wake.notify_one();
            self.shared.unpublished.fetch_add(queued, Ordering::SeqCst);
            self.shared.wake.notify_one();
        }
        Ok(r)
    }

    fn advance(
        &mut self,
        id: i64,
        from: FileState,
        to: FileState,
        now: i64,
    ) -> Result<(), DbError> {
        if to <= from {
            return Err(DbError::Backwards { id, from, to });
        }
        self.write("advance", &id, |tx, ops| {
            let row = tx
                .query_row(
                    &format!("{FILE_COLUMNS} FROM files WHERE id = ?1"),
                    [id],
                    file_row,
                )
                .optional()
                .ctx("advance", id)?
                .ok_or(DbError::NoSuchFile { id })?;
            let owed = parse_file(row)?;
            if owed.state != from {
                return Err(DbError::WrongState {
                    id,
                    from,
                    found: owed.state,
                    to,
                });
            }
            tx.execute(
                "UPDATE files SET state = ?2, updated_ms = ?3 WHERE id = ?1",
                params![id, to.as_str(), now],
            )
            .ctx("advance", id)?;
            if to == FileState::Indexed {
                let f = owed.file;
                index_in(tx, ops, &f.key, f.storage_time, f.record, &f.segments, now)?;
            }
            Ok(())
        })
    }
}

/// The indexing of one stored file inside the caller's transaction: retention for it and
/// its segments, its recordings row and the catalog change.
fn index_in(
    tx: &Transaction<'_>,
    ops: &mut Vec<(Op, bool)>,
    key: &str,
    storage_time: u64,
    record: Option<FileRecord>,
    segments: &[String],
    now_ms: i64,
) -> Result<(), DbError> {
    let expires_at = (storage_time > 0).then(|| expires_at_ms(now_ms, storage_time));
    if let Some(at) = expires_at {
        for k in segments.iter().map(String::as_str).chain([key]) {
            schedule(tx, k, at, Some(storage_time))?;
        }
    }
    if let Some(mut rec) = record {
        rec.key = key.to_string();
        rec.expires = expires_at.map_or(0, |at| at.div_euclid(1000));
        // The file event is queued with the index entry or not at all (R-CB-4); the
        // notice itself stays out of the catalog.
        if let Some(notice) = rec.notice.take() {
            if let Some(ev) = crate::callback::event::file_event(&rec, &notice) {
                callbacks::queue_in(tx, &ev, now_ms)?;
            }
        }
        put_recording(tx, &rec)?;
        let op = Op::Put(rec);
        outbox(tx, &op)?;
        ops.push((op, true));
    }
    Ok(())
}

/// When a file stored at `now_ms` with `storage_time` (> 0) expires: from the next whole
/// second, so never before its full storage_time.
fn expires_at_ms(now_ms: i64, storage_time: u64) -> i64 {
    let secs = now_ms.saturating_add(999).div_euclid(1000);
    secs.saturating_add(clamp_i64(storage_time))
        .saturating_mul(1000)
}

fn clamp_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn schedule(
    tx: &Transaction<'_>,
    key: &str,
    expires_at: i64,
    storage_time: Option<u64>,
) -> Result<(), DbError> {
    tx.prepare_cached(
        "INSERT INTO retention (key, expires_at, storage_time) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET
             expires_at = max(expires_at, excluded.expires_at),
             storage_time = coalesce(excluded.storage_time, storage_time)",
    )
    .and_then(|mut st| st.execute(params![key, expires_at, storage_time.map(clamp_i64)]))
    .ctx("schedule", key)?;
    Ok(())
}

fn put_recording(tx: &Transaction<'_>, r: &FileRecord) -> Result<(), DbError> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO recordings
             (key, format, domain, app, stream, task_id, start_ms, end_ms, duration_ms, size,
              expires, gaps, node)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .and_then(|mut st| {
        // Plain data: serializing it cannot fail, and a gap list is never worth
        // failing the file's indexing over.
        let gaps = (!r.gaps.is_empty())
            .then(|| serde_json::to_string(&r.gaps).ok())
            .flatten();
        st.execute(params![
            r.key,
            r.format,
            r.domain,
            r.app,
            r.stream,
            r.task_id,
            r.start_ms,
            r.end_ms,
            r.duration_ms,
            clamp_i64(r.size),
            r.expires,
            gaps,
            r.node
        ])
    })
    .ctx("put recording", &r.key)?;
    Ok(())
}

fn outbox(tx: &Transaction<'_>, op: &Op) -> Result<(), DbError> {
    let (kind, key, record) = match op {
        Op::Put(r) => (
            "put",
            r.key.as_str(),
            Some(serde_json::to_string(r).map_err(|source| DbError::Json {
                op: "queue catalog put",
                key: r.key.clone(),
                source,
            })?),
        ),
        Op::Delete(k) => ("delete", k.as_str(), None),
    };
    tx.prepare_cached("INSERT INTO catalog_outbox (op, key, record) VALUES (?1, ?2, ?3)")
        .and_then(|mut st| st.execute(params![kind, key, record]))
        .ctx("queue catalog change", key)?;
    Ok(())
}

fn get_meta(db: &Connection, name: &str) -> Result<Option<String>, DbError> {
    db.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .optional()
    .ctx("read meta", name)
}

fn set_meta(tx: &Transaction<'_>, name: &str, value: &str) -> Result<(), DbError> {
    tx.execute(
        "INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)",
        [name, value],
    )
    .ctx("write meta", name)?;
    Ok(())
}

const RECORD_COLUMNS: &str = "SELECT key, format, domain, app, stream, task_id, start_ms, \
                              end_ms, duration_ms, size, expires, gaps, node FROM recordings";

/// The recordings matching `f` after `(start_ms, key)`, in that order, at most `limit`.
fn query_in(
    db: &Connection,
    f: &RecordingFilter,
    after: Option<&(i64, String)>,
    limit: Option<usize>,
) -> Result<Vec<FileRecord>, DbError> {
    let mut sql = format!("{RECORD_COLUMNS} WHERE 1");
    let mut args: Vec<Value> = Vec::new();
    let mut eq = |col: &str, v: &Option<String>, sql: &mut String| {
        if let Some(v) = v {
            sql.push_str(&format!(" AND {col} = ?"));
            args.push(Value::Text(v.clone()));
        }
    };
    eq("domain", &f.domain, &mut sql);
    eq("app", &f.app, &mut sql);
    eq("stream", &f.stream, &mut sql);
    eq("format", &f.format, &mut sql);
    eq("task_id", &f.task_id, &mut sql);
    if let Some(from) = f.from {
        let from_ms = from.saturating_mul(1000);
        sql.push_str(" AND end_ms > ?");
        args.push(Value::Integer(from_ms));
        // A file ending after `from` started after `from` minus the longest span: a bound
        // the start_ms indexes can seek to, so an hour's query does not read the history.
        let span: Option<i64> = db
            .query_row("SELECT max(end_ms - start_ms) FROM recordings", [], |r| {
                r.get(0)
            })
            .ctx("query", "span")?;
        if let Some(span) = span {
            sql.push_str(" AND start_ms >= ?");
            args.push(Value::Integer(from_ms.saturating_sub(span)));
        }
    }
    if let Some(to) = f.to {
        sql.push_str(" AND start_ms < ?");
        args.push(Value::Integer(to.saturating_mul(1000)));
    }
    if let Some((start, key)) = after {
        sql.push_str(" AND (start_ms, key) > (?, ?)");
        args.push(Value::Integer(*start));
        args.push(Value::Text(key.clone()));
    }
    sql.push_str(" ORDER BY start_ms, key");
    if let Some(n) = limit {
        sql.push_str(" LIMIT ?");
        args.push(Value::Integer(n.min(i64::MAX as usize) as i64));
    }
    let mut st = db.prepare_cached(&sql).ctx("query", "")?;
    let rows = st
        .query_map(rusqlite::params_from_iter(args), |r| {
            Ok(FileRecord {
                key: r.get(0)?,
                format: r.get(1)?,
                domain: r.get(2)?,
                app: r.get(3)?,
                stream: r.get(4)?,
                task_id: r.get(5)?,
                start_ms: r.get(6)?,
                end_ms: r.get(7)?,
                duration_ms: r.get(8)?,
                size: r.get::<_, i64>(9)?.max(0) as u64,
                expires: r.get(10)?,
                // An unreadable list is dropped rather than the whole row.
                gaps: r
                    .get::<_, Option<String>>(11)?
                    .and_then(|j| serde_json::from_str(&j).ok())
                    .unwrap_or_default(),
                notice: None,
                node: r.get(12)?,
            })
        })
        .ctx("query", "")?;
    rows.collect::<Result<Vec<_>, _>>().ctx("query", "")
}

/// The page token: the last row's `(start_ms, key)`, hex so it passes a query string as
/// is. Opaque to clients; versioned so its shape can change.
fn encode_token(start_ms: i64, key: &str) -> String {
    format!("1:{start_ms}:{key}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_token(t: &str) -> Option<(i64, String)> {
    if !t.len().is_multiple_of(2) || t.len() > 4096 {
        return None;
    }
    let bytes = (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let text = String::from_utf8(bytes).ok()?;
    let rest = text.strip_prefix("1:")?;
    let (start, key) = rest.split_once(':')?;
    Some((start.parse().ok()?, key.to_string()))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

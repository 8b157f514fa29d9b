//! Where recorded bytes go (R-ST-1…5): every file is written to a spool file first, then
//! stored under its final key — by rename into the recordings directory (local backend,
//! no second copy of the bytes) or by upload to S3 (`upload.rs`), retried until the store
//! confirms it; only then does the spool copy go away.
//!
//! Spool layout, per stream directory `{spool}/{domain}/{app}/{stream}/` (what crash
//! recovery, `recover.rs`, reads back):
//! - `{rec}.rec.json` — one per recording (stream × format): the name pattern and what it
//!   needs, so a file left behind by a crash can still be named.
//! - `{rec}.{seq}.{start_ms}.{ext}.part` — a file being written (`seq` = file number in
//!   the recording, `start_ms` = its wall-clock start).
//! - `{rec}.{seq}.{start_ms}.s{n}.ts.part` — HLS segment `n` of playlist `seq`.
//! - `{file}.up` (S3) — finished and patched, waiting for its upload; its key and
//!   recordings entry are its `files` row in the node database (an earlier version's
//!   `{file}.up.json` beside it is still read).
//! - `{rec}.{seq}.m3u8.json` — an open playlist's key; with S3 also `{rec}.{seq}.m3u8`,
//!   the playlist as last written.
//!
//! And at the top, `.liverec.db` (with its `-wal`/`-shm` files): the node database
//! (`crate::db`) — recordings index, retention schedule, catalog outbox. A stored file is
//! indexed there before its spool copy goes (`index_stored`).

pub mod catalog;
mod flush;
mod recover;
pub mod retention;
mod spool_io;
mod spool_write;
pub mod store;
mod upload;

use std::collections::{HashMap, HashSet};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use flv::mux::Patch;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::Config;
use crate::db::{Db, DbError, FileState, NewFile};
use crate::ingest::identity::StreamId;
use crate::model::FileRecord;
use spool_write::SpoolWriter;
use store::Backend;
use upload::{HlsLane, Uploader};

pub use flush::FlushPolicy;

pub use recover::RecoveryReport;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("spool file {path}: {source}")]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("storing {key}: {source}")]
    Store { key: String, source: std::io::Error },
    #[error("object key {key:?} is invalid: {source}")]
    Key {
        key: String,
        source: object_store::path::Error,
    },
    #[error("{0}")]
    Backend(#[from] store::StoreError),
    #[error("background write task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("opening the node database in the spool {spool}: {source}")]
    Db {
        spool: PathBuf,
        // Boxed: the database's errors are large and this one is rare (start only).
        source: Box<DbError>,
    },
}

fn spool_err(path: &Path) -> impl FnOnce(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Spool {
        path: path.to_path_buf(),
        source,
    }
}

/// What a recording's files need to be named and kept, also after a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecMeta {
    pub domain: String,
    pub app: String,
    pub stream: String,
    /// Extension = format (`flv`, `mp4`, `m3u8`, `aac`).
    pub ext: String,
    pub file_name: String,
    #[serde(default)]
    pub task_id: String,
    /// Seconds the files are kept (0 = forever, R-ST-5).
    #[serde(default)]
    pub storage_time: u64,
    /// Time zone of the name's time fields (`[record] time_zone`), seconds east of UTC.
    #[serde(default)]
    pub utc_offset_s: i32,
    /// Where its files' events go (R-CB-1); kept in the spool's markers so a file
    /// finalized by recovery after a crash is announced too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<crate::model::Notice>,
    /// Which template (and rule) made the recording, for `/v1/streams` (issue 16).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template: String,
}

impl RecMeta {
    /// The index record of a file of this recording (key and size come when stored).
    pub fn record(&self, start: DateTime<Utc>, duration_ms: i64) -> FileRecord {
        let start_ms = start.timestamp_millis();
        FileRecord {
            key: String::new(),
            format: self.ext.clone(),
            domain: self.domain.clone(),
            app: self.app.clone(),
            stream: self.stream.clone(),
            task_id: self.task_id.clone(),
            start_ms,
            end_ms: start_ms.saturating_add(duration_ms),
            duration_ms,
            size: 0,
            expires: 0,
            gaps: Vec::new(),
            notice: self.notice.clone().map(Box::new),
            node: String::new(),
        }
    }

    fn id(&self) -> StreamId {
        StreamId {
            domain: self.domain.clone(),
            app: self.app.clone(),
            stream: self.stream.clone(),
        }
    }

    /// The file name for file `seq` spanning `start..end` (R-ST-3).
    pub fn render(&self, seq: u64, start: DateTime<Utc>, end: DateTime<Utc>) -> String {
        record::naming::render(
            &self.file_name,
            &record::naming::NameVars {
                stream: &self.stream,
                domain: &self.domain,
                app: &self.app,
                task_id: &self.task_id,
                format: &self.ext,
                seq,
                start,
                end,
                utc_offset_s: self.utc_offset_s,
            },
        )
    }
}

/// One recording's place in the spool.
pub struct Rec {
    pub meta: RecMeta,
    dir: PathBuf,
    tag: String,
}

impl Rec {
    fn manifest(&self) -> PathBuf {
        self.dir.join(format!("{}.rec.json", self.tag))
    }
}

/// Bytes in the spool against `[spool] max_bytes` (R-ST-4).
pub struct Quota {
    used: AtomicU64,
    max: u64,
}

impl Quota {
    fn add(&self, n: u64) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }
    fn sub(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
    pub fn max(&self) -> u64 {
        self.max
    }
    pub fn is_full(&self) -> bool {
        self.used() >= self.max
    }
}

pub struct Sink {
    spool: PathBuf,
    backend: Arc<Backend>,
    uploader: Option<Arc<Uploader>>,
    pub quota: Arc<Quota>,
    /// The node database: recordings index, retention schedule, catalog outbox.
    db: Db,
    /// A rebuild of the recordings index from the store is running (`catalog::rebuild`).
    pub(crate) rebuilding: AtomicBool,
    next_id: AtomicU64,
    /// Distinguishes this run's spool names from a previous run's.
    boot: u64,
    /// Keys handed out but maybe not yet visible in the store, so two files closing in
    /// the same second never get one name (R-ST-3).
    taken: Mutex<HashSet<String>>,
    /// When open files' buffers are written (`[spool] flush_interval`, `flush.rs`).
    flush: FlushPolicy,
    /// The recordings being written, by spool tag, for `/v1/streams` (issue 16).
    open: Mutex<HashMap<String, OpenRec>>,
    /// The threads the sink's file work runs on (spool files, local stores, playlists).
    io: spool_io::SpoolIo,
    /// Spool files are written around the page cache (`[spool] direct_io`,
    /// `spool_write.rs`).
    direct_io: bool,
}

/// A recording being written, as `/v1/streams` and the console show it (issue 16). Its
/// current file has no key yet: the name is rendered when it closes (R-ST-3).
#[derive(Debug, Clone, Serialize)]
pub struct OpenFile {
    /// The template and what chose it, e.g. `1 (archive) by record.default_template`.
    pub template: String,
    pub task_id: String,
    pub format: String,
    /// The recording's file number (from 0) and, HLS, its segment number.
    pub file_seq: u64,
    pub segment: Option<u64>,
    /// The current file's (HLS: segment's) start, unix ms; 0 before its first file.
    pub file_started_ms: i64,
    /// Bytes appended to the current file (or segment) so far.
    pub bytes: u64,
}

struct OpenRec {
    id: StreamId,
    shown: OpenFile,
    bytes: Arc<AtomicU64>,
}

/// An open spool file. Appends are buffered and written by [`FlushPolicy`]: what a crash
/// can lose is at most `[spool] flush_interval` of each open file (issue 11). Nothing is
/// fsynced (as in nginx-rtmp and MediaMTX): a daemon crash loses nothing the kernel has,
/// power loss can lose what the page cache held; an fsync per flush cost ~10 ms of disk
/// latency per stream per second on this machine's ext4 and is not worth it for live
/// media.
pub struct SpoolFile {
    path: PathBuf,
    file: Option<SpoolWriter>,
    pending: Vec<Bytes>,
    pending_len: usize,
    /// When the oldest byte of `pending` was appended.
    pending_since: Option<tokio::time::Instant>,
    policy: FlushPolicy,
    quota: Arc<Quota>,
    written: u64,
    /// S3: the upload that follows this file while it grows (R-ST-2).
    stream: Option<upload::StreamHandle>,
    /// A write failed (ENOSPC, EIO, EFBIG): the file may end in a torn unit, so nothing
    /// more is written to it — appending after the tear would bury it mid-file — until
    /// the owner ends it with [`SpoolFile::cut_back`].
    failed: bool,
    /// Bytes appended, as `/v1/streams` shows them (shared with [`Sink::open_files`]).
    shown: Arc<AtomicU64>,
    io: spool_io::SpoolIo,
}

impl SpoolFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every later write fail with ENOSPC (a full disk), for tests.
    #[cfg(test)]
    pub fn fail_writes(&mut self) {
        self.file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .ok()
            .map(|f| SpoolWriter::new(f, Path::new("/dev/full"), false));
    }

    /// Bytes written to the file so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether a write to this file failed (see [`SpoolFile::cut_back`]).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Ends a file whose write failed at its last complete unit (FLV tag, ADTS frame,
    /// MP4 fragment, TS packet; `ext` says which) with the crash-repair scanners, and
    /// patches what it kept (FLV duration and size, MP4 duration) as crash recovery does.
    /// The buffer that was not written is dropped; the file handle is closed, so the file
    /// can only be stored from here (`Sink::finish_cut`, or `Sink::segment_done` for an
    /// HLS segment). Truncating and overwriting inside the file need no new space, so
    /// this works on the full disk that caused the error.
    pub async fn cut_back(&mut self, ext: &str) -> Result<media::repair::Repair, SinkError> {
        self.pending.clear();
        self.pending_len = 0;
        self.pending_since = None;
        self.failed = true;
        drop(self.file.take());
        // A streaming upload has sent parts of the torn file: it is abandoned (dropping
        // the handle aborts it) and the cut file is uploaded whole.
        drop(self.stream.take());
        let (path, ext) = (self.path.clone(), ext.to_string());
        let r = self
            .io
            .run(move || recover::repair_path(&path, &ext))
            .await?
            .map_err(spool_err(&self.path))?;
        // The quota counted what was written successfully: it now counts what is kept
        // (a failed write's complete units in, a torn tail out); storing subtracts the
        // file's size.
        self.quota.add(r.keep_len.saturating_sub(self.written));
        self.quota.sub(self.written.saturating_sub(r.keep_len));
        self.written = r.keep_len;
        self.shown.store(r.keep_len, Ordering::Relaxed);
        Ok(r)
    }

    /// Buffers `bufs`; writes the buffer when the policy says it is due (full, or its
    /// oldest byte has waited the flush interval). The recorder task sleeps until
    /// [`Self::flush_due`] for a buffer no further append comes to.
    pub async fn append(&mut self, bufs: Vec<Bytes>) -> Result<(), SinkError> {
        self.append_since(bufs, tokio::time::Instant::now()).await
    }

    /// [`Self::append`] of bytes whose media has waited since `since` already (an MP4
    /// fragment the muxer held): their flush deadline counts from then, so what the
    /// muxer held and what the spool holds add up to one flush interval, not two.
    pub async fn append_since(
        &mut self,
        bufs: Vec<Bytes>,
        since: tokio::time::Instant,
    ) -> Result<(), SinkError> {
        if self.failed {
            // Media for a file that can no longer be written is dropped (the owner has
            // been told by the error that failed it).
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        let before = self.pending_len;
        for b in bufs {
            if b.is_empty() {
                continue;
            }
            let oldest = self.pending_since.map_or(since, |t| t.min(since));
            self.pending_since = Some(oldest);
            self.pending_len += b.len();
            self.pending.push(b);
        }
        self.shown
            .fetch_add((self.pending_len - before) as u64, Ordering::Relaxed);
        if self
            .policy
            .is_due(self.pending_len, self.pending_since, now)
        {
            self.flush().await?;
        }
        Ok(())
    }

    /// When the buffer must be written; None when nothing is buffered.
    pub fn flush_due(&self) -> Option<tokio::time::Instant> {
        self.policy.due_at(self.pending_len, self.pending_since)
    }

    /// Writes pending buffers on a blocking thread: a slow disk must stall this
    /// recording only, never the runtime that serves ingest.
    pub async fn flush(&mut self) -> Result<(), SinkError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // Keep the queue's capacity for the next batch instead of regrowing it.
        let cap = self.pending.capacity();
        let bufs = std::mem::replace(&mut self.pending, Vec::with_capacity(cap));
        let len = std::mem::take(&mut self.pending_len);
        self.pending_since = None;
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        let (file, res) = self
            .io
            .run(move || {
                let res = file.write_all(&bufs);
                (file, res)
            })
            .await?;
        self.file = Some(file);
        if let Err(e) = res {
            // Part of the batch may be on disk, ending in a torn unit: no further write
            // may follow it (the owner cuts the file back). The batch is dropped.
            self.failed = true;
            return Err(spool_err(&self.path)(e));
        }
        self.quota.add(len as u64);
        self.written += len as u64;
        if let Some(s) = &self.stream {
            s.flushed(self.written);
        }
        Ok(())
    }
}

/// Writes `data` to `path` through a temporary file and a rename, so a reader or a crash
/// sees the old or the new content, never a mix.
fn write_atomic(path: &Path, data: &[u8], n: u64) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

#[derive(Debug, Serialize, Deserialize)]
struct UpMeta {
    key: String,
    #[serde(default)]
    storage_time: u64,
    /// What the recordings index gets once the store has the file.
    #[serde(default)]
    info: Option<FileRecord>,
}

/// An open HLS playlist: its key, fixed when it opens, and (S3) the lane that uploads its
/// segments and then the playlist, in order.
pub struct PlaylistHandle {
    pub key: String,
    info: FileRecord,
    marker: PathBuf,
    copy: PathBuf,
    lane: Option<HlsLane>,
    storage_time: u64,
    segment_keys: Vec<String>,
}

impl Sink {
    /// Builds the backend, then recovers what a previous run left in the spool (files
    /// finalized and stored, playlists ended) before anything new is recorded.
    pub async fn start(config: &Config) -> Result<(Arc<Self>, RecoveryReport), SinkError> {
        let spool = config.spool.dir.clone();
        let backend = Arc::new(store::build(&config.storage)?);
        let mk = |d: &PathBuf| std::fs::create_dir_all(d).map_err(spool_err(d));
        mk(&spool)?;
        if let Backend::Local { root } = &*backend {
            mk(root)?;
        }
        if let Backend::S3(s3) = &*backend {
            match tokio::time::timeout(Duration::from_secs(10), s3.check()).await {
                Ok(Ok(())) => info!(bucket = %s3.bucket, "S3 bucket reachable"),
                Ok(Err(e)) => {
                    warn!(bucket = %s3.bucket, "S3 bucket NOT reachable, recording to the spool until it is: {e}")
                }
                Err(_) => {
                    warn!(bucket = %s3.bucket, "S3 bucket did not answer within 10 s, recording to the spool until it does")
                }
            }
        }
        let quota = Arc::new(Quota {
            used: AtomicU64::new(0),
            max: config.spool.max_bytes,
        });
        let db = Db::open(&spool).await.map_err(|source| SinkError::Db {
            spool: spool.clone(),
            source: Box::new(source),
        })?;
        info!(path = %db.path().display(), "node database open");
        let uploader = match &*backend {
            Backend::S3(_) => Some(Uploader::new(backend.clone(), quota.clone(), db.clone())),
            Backend::Local { .. } => None,
        };
        let boot = Utc::now().timestamp_millis().max(0) as u64;
        let io = spool_io::SpoolIo::new(config.spool.io_threads()).map_err(spool_err(&spool))?;
        // With S3 the uploader reads each spool file back as it grows: from the page
        // cache, not the disk, unless the operator says otherwise.
        let direct_io = config
            .spool
            .direct_io
            .applies(matches!(*backend, Backend::Local { .. }));
        info!(
            direct_io = direct_io,
            "spool files written {}",
            if direct_io {
                "around the page cache (O_DIRECT)"
            } else {
                "through the page cache"
            }
        );
        let sink = Arc::new(Sink {
            spool,
            backend,
            uploader,
            quota,
            db,
            rebuilding: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            boot,
            taken: Mutex::new(HashSet::new()),
            open: Mutex::default(),
            flush: FlushPolicy::new(config.spool.flush_interval()),
            direct_io,
            io,
        });
        let report = recover::run(&sink).await;
        Ok((sink, report))
    }

    /// Files and playlists whose upload has not been confirmed yet (0 for local).
    pub fn pending_uploads(&self) -> usize {
        self.uploader.as_ref().map_or(0, |u| u.queued_len())
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// `[spool] flush_interval`: the most of an open file a crash may cost.
    pub fn flush_interval(&self) -> Duration {
        self.flush.interval
    }

    /// Waits (up to `grace`) for pending uploads; what is left stays in the spool and
    /// is uploaded by the next start.
    pub async fn drain(&self, grace: Duration) -> bool {
        match &self.uploader {
            Some(u) => u.drain(grace).await,
            None => true,
        }
    }

    /// Registers a recording in the spool (its manifest), before its first file.
    pub async fn begin(&self, meta: RecMeta) -> Result<Rec, SinkError> {
        let dir = self
            .spool
            .join(&meta.domain)
            .join(&meta.app)
            .join(&meta.stream);
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let rec = Rec {
            meta,
            dir,
            tag: format!("r{}-{n}", self.boot),
        };
        self.open_recs().insert(
            rec.tag.clone(),
            OpenRec {
                id: rec.meta.id(),
                shown: OpenFile {
                    template: rec.meta.template.clone(),
                    task_id: rec.meta.task_id.clone(),
                    // As `/v1/recordings` names it: an HLS recording is `hls`.
                    format: match rec.meta.ext.as_str() {
                        "m3u8" => "hls".into(),
                        e => e.into(),
                    },
                    file_seq: 0,
                    segment: None,
                    file_started_ms: 0,
                    bytes: 0,
                },
                bytes: Arc::default(),
            },
        );
        let path = rec.manifest();
        let json = serde_json::to_vec(&rec.meta).map_err(|e| SinkError::Spool {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let p2 = path.clone();
        self.io
            .run(move || write_atomic(&p2, &json, n))
            .await?
            .map_err(spool_err(&path))?;
        Ok(rec)
    }

    /// The recording is over; its manifest goes (its finished files carry their keys).
    pub async fn end(&self, rec: Rec) {
        self.open_recs().remove(&rec.tag);
        let _ = tokio::fs::remove_file(rec.manifest()).await;
    }

    fn open_recs(&self) -> std::sync::MutexGuard<'_, HashMap<String, OpenRec>> {
        // Each critical section is one insert, update or read: a panic elsewhere cannot
        // leave the map half-changed.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The recordings of `id` being written now, with their current files (issue 16).
    pub fn open_files(&self, id: &StreamId) -> Vec<OpenFile> {
        let mut v: Vec<OpenFile> = self
            .open_recs()
            .values()
            .filter(|r| &r.id == id)
            .map(|r| OpenFile {
                bytes: r.bytes.load(Ordering::Relaxed),
                ..r.shown.clone()
            })
            .collect();
        v.sort_by(|a, b| {
            (&a.task_id, &a.template, &a.format).cmp(&(&b.task_id, &b.template, &b.format))
        });
        v
    }

    /// Opens the spool file of file `seq` of a recording (`segment`: HLS segment number).
    pub async fn create(
        &self,
        rec: &Rec,
        seq: u64,
        start: DateTime<Utc>,
        segment: Option<u64>,
    ) -> Result<SpoolFile, SinkError> {
        let ms = start.timestamp_millis().max(0);
        let name = match segment {
            Some(n) => format!("{}.{seq}.{ms}.s{n}.ts.part", rec.tag),
            None => format!("{}.{seq}.{ms}.{}.part", rec.tag, rec.meta.ext),
        };
        let path = rec.dir.join(name);
        let (dir, p2, direct) = (rec.dir.clone(), path.clone(), self.direct_io);
        let file = self
            .io
            .run(move || {
                std::fs::create_dir_all(&dir)?;
                std::fs::OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .open(&p2)
                    .map(|f| SpoolWriter::new(f, &p2, direct))
            })
            .await?
            .map_err(spool_err(&path))?;
        // HLS segments are small whole objects; other files follow their spool file up.
        let stream = match (&self.uploader, segment) {
            (Some(u), None) => {
                let temp = format!(
                    ".liverec/uploading/{}/{}/{}/{}",
                    rec.meta.domain,
                    rec.meta.app,
                    rec.meta.stream,
                    file_of(&path.to_string_lossy()).trim_end_matches(".part")
                );
                u.start_stream(&path, temp)
            }
            _ => None,
        };
        let shown = Arc::new(AtomicU64::new(0));
        if let Some(r) = self.open_recs().get_mut(&rec.tag) {
            r.shown.file_seq = seq;
            r.shown.segment = segment;
            r.shown.file_started_ms = ms;
            r.bytes = shown.clone();
        }
        Ok(SpoolFile {
            path,
            file: Some(file),
            pending: Vec::new(),
            pending_len: 0,
            pending_since: None,
            policy: self.flush,
            quota: self.quota.clone(),
            written: 0,
            stream,
            failed: false,
            shown,
            io: self.io.clone(),
        })
    }

    /// Completes a file: flush, patch in place (FLV metadata, MP4 duration), then store
    /// it as `{domain}/{app}/{stream}/{name}.{ext}` (`_N` added if taken). Returns the key;
    /// with S3 the upload goes on in the background (retried until it succeeds). `span`
    /// is the file's wall-clock start and end (its first and last packets' arrival) and
    /// its media duration in ms.
    pub async fn finish(
        &self,
        mut f: SpoolFile,
        patches: &[Patch],
        rec: &RecMeta,
        name: &str,
        span: (DateTime<Utc>, DateTime<Utc>, i64),
        gaps: Vec<crate::model::Gap>,
    ) -> Result<String, SinkError> {
        let closed = Instant::now();
        f.flush().await?;
        let Some(file) = f.file.take() else {
            return Err(SinkError::Spool {
                path: f.path,
                source: std::io::ErrorKind::NotFound.into(),
            });
        };
        let patches = patches.to_vec();
        let path = f.path.clone();
        self.io
            .run(move || patch_file(file.into_file(), &patches))
            .await?
            .map_err(spool_err(&path))?;
        crate::failpoint::hit("file.closed");
        let stream = f.stream.take();
        let mut info = rec.record(span.0, span.2);
        info.end_ms = span.1.timestamp_millis().max(info.start_ms);
        info.gaps = gaps;
        let key = self
            .store_finished_since(
                closed,
                &path,
                &rec.id(),
                name,
                &rec.ext,
                rec.storage_time,
                stream,
                Some(info),
            )
            .await?;
        crate::metrics::finalize_time(&rec.ext, closed);
        Ok(key)
    }

    /// Stores file `seq` of a recording after a failed write cut it back
    /// ([`SpoolFile::cut_back`], which gave `kept`): named and indexed by what was kept
    /// (`started` plus the kept media's duration), as crash recovery names what it
    /// repairs. A file that kept nothing whole is removed; `None` then.
    pub async fn finish_cut(
        &self,
        f: SpoolFile,
        kept: &media::repair::Repair,
        rec: &RecMeta,
        seq: u64,
        started: DateTime<Utc>,
    ) -> Result<Option<String>, SinkError> {
        let closed = Instant::now();
        let path = f.path.clone();
        if kept.keep_len == 0 {
            let _ = tokio::fs::remove_file(&path).await;
            self.quota.sub(f.written);
            return Ok(None);
        }
        let (duration_ms, end) = recover::recovered_span(started, kept.duration_ms);
        let name = rec.render(seq, started, end);
        let mut info = rec.record(started, duration_ms);
        info.end_ms = end.timestamp_millis().max(info.start_ms);
        let key = self
            .store_finished_since(
                closed,
                &path,
                &rec.id(),
                &name,
                &rec.ext,
                rec.storage_time,
                None,
                Some(info),
            )
            .await?;
        crate::metrics::finalize_time(&rec.ext, closed);
        Ok(Some(key))
    }

    /// Stores a complete spool file under a fresh key; crash recovery's files closed in
    /// an earlier run, so their close → stored latency counts from now.
    #[allow(clippy::too_many_arguments)]
    async fn store_finished(
        &self,
        path: &Path,
        id: &StreamId,
        name: &str,
        ext: &str,
        storage_time: u64,
        stream: Option<upload::StreamHandle>,
        info: Option<FileRecord>,
    ) -> Result<String, SinkError> {
        let now = Instant::now();
        self.store_finished_since(now, path, id, name, ext, storage_time, stream, info)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_finished_since(
        &self,
        closed: Instant,
        path: &Path,
        id: &StreamId,
        name: &str,
        ext: &str,
        storage_time: u64,
        stream: Option<upload::StreamHandle>,
        info: Option<FileRecord>,
    ) -> Result<String, SinkError> {
        let key = self.claim_key(id, name, ext).await?;
        let p = path.to_path_buf();
        let size = self
            .io
            .run(move || std::fs::metadata(p).map_or(0, |m| m.len()))
            .await
            .unwrap_or(0);
        let info = info.map(|mut i| {
            i.key = key.clone();
            i.size = size;
            i
        });
        let res = match &*self.backend {
            Backend::Local { root } => {
                self.store_local(closed, path, root, &key, ext, storage_time, info)
                    .await
            }
            Backend::S3(_) => self
                .queue_upload(path, &key, storage_time, info, false)
                .await
                .map(|up| upload::Job { closed, ..up })
                .map(|up| match (stream, &self.uploader) {
                    (Some(s), Some(u)) => {
                        u.mark_queued(&up.key);
                        s.finish(up);
                    }
                    (None, Some(u)) => u.upload_file(up),
                    _ => {}
                }),
        };
        self.release_key(&key);
        res.map(|()| key)
    }

    /// The local store of a finished file, crash-ordered (R-ST-4, `crate::failpoint`):
    /// the rename into the root is the store and the spool copy's removal in one step,
    /// so the spool alone cannot tell a crash right after it from a file never closed.
    /// A `files` row, committed before the rename, can: a restart finds it `closed` and
    /// finishes it (`recover::resume_owed`) whichever side of the rename the crash fell.
    /// The step to `indexed` after the rename writes the recordings and retention rows
    /// in the same transaction.
    #[allow(clippy::too_many_arguments)]
    async fn store_local(
        &self,
        closed: Instant,
        path: &Path,
        root: &Path,
        key: &str,
        ext: &str,
        storage_time: u64,
        info: Option<FileRecord>,
    ) -> Result<(), SinkError> {
        let owed = self
            .db
            .owe(NewFile {
                spool_path: path.to_path_buf(),
                key: key.to_string(),
                format: ext.to_string(),
                storage_time,
                record: info.clone(),
                segments: Vec::new(),
            })
            .await;
        let id = match owed {
            Ok(id) => Some(id),
            Err(e) => {
                // Stored rather than stuck in the spool: the file is what the encoder
                // sent; only a crash in the next few milliseconds would leave it
                // unindexed.
                warn!(
                    key,
                    "cannot record the file as owed; storing it anyway: {e}"
                );
                None
            }
        };
        crate::failpoint::hit("local.owed");
        self.move_into_root(path, root, key).await?;
        crate::metrics::upload_latency("local", closed);
        crate::failpoint::hit("local.stored");
        match id {
            Some(id) => {
                if let Err(e) = self
                    .db
                    .advance(id, FileState::Closed, FileState::Indexed)
                    .await
                {
                    // Still owed: the next start indexes it.
                    warn!(
                        key,
                        "cannot index the stored file; the next start does: {e}"
                    );
                }
            }
            None => {
                index_stored(&self.db, key, storage_time, info, Vec::new()).await;
            }
        }
        Ok(())
    }

    /// Queues a finished file for its upload so that the queue survives a restart
    /// (R-ST-4): renamed `{file}.part` → `{file}.up` (finished: recovery no longer cuts
    /// it back), then — except for an HLS segment, which its playlist's marker and copy
    /// account for — a `files` row at `queued` with its key and recordings entry. A crash
    /// between the two leaves a `.up` the database does not know, which recovery stores
    /// like an unfinished file.
    async fn queue_upload(
        &self,
        path: &Path,
        key: &str,
        storage_time: u64,
        info: Option<FileRecord>,
        segment: bool,
    ) -> Result<upload::Job, SinkError> {
        let up = path.with_extension("up");
        let (src, up2) = (path.to_path_buf(), up.clone());
        self.io
            .run(move || std::fs::rename(&src, &up2))
            .await?
            .map_err(spool_err(path))?;
        crate::failpoint::hit("s3.renamed");
        let owed = if segment {
            upload::Owed::Segment
        } else {
            let format = info.as_ref().map_or_else(
                || key.rsplit('.').next().unwrap_or("").to_string(),
                |i| i.format.clone(),
            );
            let row = self
                .db
                .owe_at(
                    NewFile {
                        spool_path: up.clone(),
                        key: key.to_string(),
                        format,
                        storage_time,
                        record: info.clone(),
                        segments: Vec::new(),
                    },
                    FileState::Queued,
                )
                .await;
            match row {
                Ok(id) => upload::Owed::Row(id),
                Err(e) => {
                    // Uploaded (and indexed after it) rather than stuck in the spool.
                    warn!(
                        key,
                        "cannot record the queued upload; uploading it anyway: {e}"
                    );
                    upload::Owed::Unrecorded
                }
            }
        };
        crate::failpoint::hit("s3.queued");
        Ok(upload::Job {
            path: up,
            owed,
            key: key.into(),
            storage_time,
            closed: std::time::Instant::now(),
            info,
        })
    }

    async fn move_into_root(&self, src: &Path, root: &Path, key: &str) -> Result<(), SinkError> {
        let (src2, dest2) = (src.to_path_buf(), root.join(key));
        let size = self
            .io
            .run(move || -> std::io::Result<u64> {
                let size = std::fs::metadata(&src2).map_or(0, |m| m.len());
                if let Some(parent) = dest2.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                match std::fs::rename(&src2, &dest2) {
                    Ok(()) => Ok(size),
                    // EXDEV: spool and recordings live on different filesystems; copy, then
                    // drop the spool copy only once the copy is complete.
                    Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                        let tmp = dest2.with_extension(format!("tmp-{}", std::process::id()));
                        std::fs::copy(&src2, &tmp)?;
                        std::fs::rename(&tmp, &dest2)?;
                        std::fs::remove_file(&src2).map(|()| size)
                    }
                    Err(e) => Err(e),
                }
            })
            .await?
            .map_err(|source| SinkError::Store {
                key: key.into(),
                source,
            })?;
        self.quota.sub(size);
        Ok(())
    }

    /// Opens an HLS playlist starting at `start` (its first packet's arrival): claims
    /// `{name}.m3u8` (the name is fixed now, it is published while it grows) and records
    /// the key in the spool for crash recovery.
    pub async fn open_playlist(
        &self,
        rec: &Rec,
        seq: u64,
        name: &str,
        start: DateTime<Utc>,
    ) -> Result<PlaylistHandle, SinkError> {
        let key = self.claim_key(&rec.meta.id(), name, "m3u8").await?;
        let marker = rec.dir.join(format!("{}.{seq}.m3u8.json", rec.tag));
        let copy = rec.dir.join(format!("{}.{seq}.m3u8", rec.tag));
        let mut info = rec.meta.record(start, 0);
        info.key = key.clone();
        info.format = "hls".into();
        // The record goes in the marker too: crash recovery indexes the playlist it ends.
        let json = serde_json::to_vec(&UpMeta {
            key: key.clone(),
            storage_time: rec.meta.storage_time,
            info: Some(info.clone()),
        })
        .map_err(|e| SinkError::Spool {
            path: marker.clone(),
            source: std::io::Error::other(e),
        })?;
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (dir, m2) = (rec.dir.clone(), marker.clone());
        let res = self
            .io
            .run(move || {
                std::fs::create_dir_all(&dir)?;
                write_atomic(&m2, &json, n)
            })
            .await?
            .map_err(spool_err(&marker));
        if let Err(e) = res {
            self.release_key(&key);
            return Err(e);
        }
        let lane = self.uploader.as_ref().map(|u| {
            u.hls_lane(
                key.clone(),
                copy.clone(),
                marker.clone(),
                rec.meta.storage_time,
            )
        });
        Ok(PlaylistHandle {
            key,
            info,
            marker,
            copy,
            lane,
            storage_time: rec.meta.storage_time,
            segment_keys: Vec::new(),
        })
    }

    /// A segment is complete: store it, then the playlist `text` that lists it. With the
    /// local backend the playlist is replaced atomically in place; with S3 the spool copy
    /// is, and the lane uploads segment then playlist in that order, so the stored
    /// playlist never names a segment the store does not have.
    pub async fn segment_done(
        &self,
        pl: &mut PlaylistHandle,
        f: SpoolFile,
        id: &StreamId,
        name: &str,
        seg: hls::Segment,
        text: String,
    ) -> Result<String, SinkError> {
        let closed = Instant::now();
        let mut f = f;
        f.flush().await?;
        drop(f.file.take());
        let path = f.path.clone();
        pl.info.size += f.written;
        let key = self.claim_key(id, name, "ts").await?;
        let res = match (&*self.backend, &pl.lane) {
            (Backend::S3(_), Some(lane)) => {
                let job = self
                    .queue_upload(&path, &key, pl.storage_time, None, true)
                    .await;
                match job {
                    Ok(job) => {
                        let job = upload::Job { closed, ..job };
                        let mut seg = seg;
                        seg.uri = file_of(&key).into();
                        self.write_copy(&pl.copy, text.as_bytes()).await?;
                        lane.segment(job, seg);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            (Backend::Local { root }, _) => {
                let r = self.move_into_root(&path, root, &key).await;
                if r.is_ok() {
                    crate::metrics::upload_latency("local", closed);
                    self.put_local(root, &pl.key, text.into_bytes()).await?;
                }
                r
            }
            (Backend::S3(_), None) => Ok(()),
        };
        self.release_key(&key);
        res?;
        pl.segment_keys.push(key.clone());
        Ok(key)
    }

    /// Ends a playlist (`text` has `#EXT-X-ENDLIST`) of `duration_ms` of media whose last
    /// packet arrived at `end`.
    pub async fn close_playlist(
        &self,
        pl: PlaylistHandle,
        text: String,
        end: DateTime<Utc>,
        duration_ms: i64,
        gaps: Vec<crate::model::Gap>,
    ) -> Result<(), SinkError> {
        let closed = Instant::now();
        let mut info = pl.info.clone();
        info.gaps = gaps;
        info.duration_ms = duration_ms;
        info.end_ms = end.timestamp_millis().max(info.start_ms);
        let res = match (&*self.backend, pl.lane) {
            (Backend::S3(_), Some(lane)) => {
                self.write_copy(&pl.copy, text.as_bytes()).await?;
                lane.finish(pl.segment_keys, info, closed);
                Ok(())
            }
            (Backend::Local { root }, _) => {
                let r = self.put_local(root, &pl.key, text.into_bytes()).await;
                if r.is_ok() {
                    crate::metrics::upload_latency("local", closed);
                    crate::failpoint::hit("hls.stored");
                    // Indexed (playlist and segments, one transaction) before the marker
                    // goes: a crash before the commit leaves the marker, and recovery
                    // indexes the playlist it ends. A failed commit keeps it too.
                    let ok = index_stored(
                        &self.db,
                        &pl.key,
                        pl.storage_time,
                        Some(info),
                        pl.segment_keys,
                    )
                    .await;
                    if ok {
                        let _ = tokio::fs::remove_file(&pl.marker).await;
                    }
                }
                r
            }
            (Backend::S3(_), None) => Ok(()),
        };
        self.release_key(&pl.key);
        if res.is_ok() {
            crate::metrics::finalize_time("hls", closed);
        }
        res
    }

    async fn write_copy(&self, path: &Path, data: &[u8]) -> Result<(), SinkError> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (p2, d) = (path.to_path_buf(), data.to_vec());
        self.io
            .run(move || write_atomic(&p2, &d, n))
            .await?
            .map_err(spool_err(path))
    }

    async fn put_local(&self, root: &Path, key: &str, data: Vec<u8>) -> Result<(), SinkError> {
        ObjectPath::parse(key).map_err(|source| SinkError::Key {
            key: key.into(),
            source,
        })?;
        let dest = root.join(key);
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.io
            .run(move || write_atomic(&dest, &data, n))
            .await?
            .map_err(|source| SinkError::Store {
                key: key.into(),
                source,
            })
    }

    async fn claim_key(&self, id: &StreamId, name: &str, ext: &str) -> Result<String, SinkError> {
        let mut n = 0u64;
        loop {
            let file = if n == 0 {
                format!("{name}.{ext}")
            } else {
                format!("{name}_{n}.{ext}")
            };
            let key = format!("{}/{}/{}/{}", id.domain, id.app, id.stream, file);
            // `Path::parse` refuses `..`, empty segments and the like instead of
            // silently rewriting them as `Path::from` would (reliability.md N2).
            ObjectPath::parse(&key).map_err(|source| SinkError::Key {
                key: key.clone(),
                source,
            })?;
            if !self.key_exists(&key).await
                && self
                    .taken
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.clone())
            {
                return Ok(key);
            }
            n += 1;
        }
    }

    /// Whether a key is already used: on disk (local), or (S3) in what this node stored
    /// or has queued, else a HEAD with a short deadline — during an outage the name is
    /// assumed free rather than stalling the recorder.
    async fn key_exists(&self, key: &str) -> bool {
        match &*self.backend {
            Backend::Local { root } => {
                let p = root.join(key);
                self.io
                    .run(move || std::fs::exists(p).unwrap_or(true))
                    .await
                    .unwrap_or(true)
            }
            Backend::S3(s3) => {
                let stored = self.db.recently_stored(key).await.unwrap_or_else(|e| {
                    // Taken rather than risk overwriting: the next name is used.
                    warn!(key, "cannot check the node database for the key: {e}");
                    true
                });
                if stored || self.uploader.as_ref().is_some_and(|u| u.is_queued(key)) {
                    return true;
                }
                let Ok(path) = s3.path(key) else {
                    return true;
                };
                use object_store::ObjectStoreExt;
                matches!(
                    tokio::time::timeout(Duration::from_secs(2), s3.store.head(&path)).await,
                    Ok(Ok(_))
                )
            }
        }
    }

    fn release_key(&self, key: &str) {
        self.taken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

fn patch_file(mut file: std::fs::File, patches: &[Patch]) -> std::io::Result<()> {
    for p in patches {
        file.seek(SeekFrom::Start(p.offset))?;
        file.write_all(&p.bytes)?;
    }
    file.flush()
}

/// The last segment of a key: what a playlist names its segments by.
pub fn file_of(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Indexes a file the store has confirmed, in one transaction: its recordings entry
/// (`info`), its retention entry and its segments' (an HLS playlist's). The callers run it
/// after the store confirmed the file and before they remove its spool copy or marker, so
/// a crash in between leaves the spool copy, and recovery stores and indexes it again,
/// instead of a stored file that never expires and is not queryable. Returns false (and
/// logs) when the database refused: the caller then keeps the spool copy for the next
/// start.
pub(crate) async fn index_stored(
    db: &Db,
    key: &str,
    storage_time: u64,
    info: Option<FileRecord>,
    segments: Vec<String>,
) -> bool {
    let res = match info {
        Some(mut i) => {
            i.key = key.to_string();
            db.record_stored(i, storage_time, segments).await
        }
        None if segments.is_empty() => db.add(key, storage_time).await,
        None => {
            let mut keys = segments;
            keys.push(key.to_string());
            db.add_all(keys, storage_time).await
        }
    };
    match res {
        Ok(()) => true,
        Err(e) => {
            warn!(
                key,
                "cannot index the stored file; its spool copy stays for the next start: {e}"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn local_sink(dir: &Path) -> Arc<Sink> {
        local_sink_with(dir, crate::config::DirectIo::default()).await
    }

    async fn local_sink_with(dir: &Path, direct_io: crate::config::DirectIo) -> Arc<Sink> {
        let mut config = Config::default();
        config.spool.dir = dir.join("spool");
        config.storage.root = dir.join("rec");
        config.spool.direct_io = direct_io;
        Sink::start(&config).await.expect("sink").0
    }

    /// An FLV recording of stream d/a/s whose files are named by `file_name`.
    fn flv_meta(file_name: &str) -> RecMeta {
        RecMeta {
            domain: "d".into(),
            app: "a".into(),
            stream: "s".into(),
            ext: "flv".into(),
            file_name: file_name.into(),
            task_id: String::new(),
            storage_time: 0,
            utc_offset_s: 0,
            notice: None,
            template: String::new(),
        }
    }

    fn id() -> StreamId {
        StreamId {
            domain: "d".into(),
            app: "a".into(),
            stream: "s".into(),
        }
    }

    #[tokio::test]
    async fn keys_never_collide_and_never_escape() {
        let dir = tempfile::tempdir().unwrap();
        let sink = local_sink(dir.path()).await;
        // Two files closing with one name at once: the second gets `_1`.
        let a = sink.claim_key(&id(), "x", "flv").await.unwrap();
        let b = sink.claim_key(&id(), "x", "flv").await.unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("d/a/s/x.flv", "d/a/s/x_1.flv"));
        sink.release_key(&a);
        sink.release_key(&b);
        // A name already on disk is not reused either.
        std::fs::create_dir_all(dir.path().join("rec/d/a/s")).unwrap();
        std::fs::write(dir.path().join("rec/d/a/s/x.flv"), b"").unwrap();
        assert_eq!(
            sink.claim_key(&id(), "x", "flv").await.unwrap(),
            "d/a/s/x_1.flv"
        );
        // `Path::parse` refuses what `Path::from` would silently rewrite.
        for bad in ["a//b", "x/../y", "x/./y"] {
            assert!(
                matches!(
                    sink.claim_key(&id(), bad, "flv").await,
                    Err(SinkError::Key { .. })
                ),
                "{bad:?}"
            );
        }
        let dotdot = StreamId {
            domain: "..".into(),
            app: "a".into(),
            stream: "s".into(),
        };
        assert!(matches!(
            sink.claim_key(&dotdot, "x", "flv").await,
            Err(SinkError::Key { .. })
        ));
    }

    #[tokio::test]
    async fn a_failed_write_ends_the_file_at_its_last_complete_tag() {
        let dir = tempfile::tempdir().unwrap();
        let sink = local_sink(dir.path()).await;
        let meta = flv_meta("{StreamID}-{Seq}");
        let rec = sink.begin(meta.clone()).await.unwrap();
        let started = Utc::now();
        let mut f = sink.create(&rec, 3, started, None).await.unwrap();
        // What a short write leaves: a real FLV whose last tag is torn.
        let flv = std::fs::read(testkit::fixture("avc_aac_2s.flv")).unwrap();
        let torn = flv[..300_001].to_vec();
        f.append(vec![Bytes::from(torn.clone())]).await.unwrap();
        f.flush().await.unwrap();
        // Then the disk is full: /dev/full fails every write with ENOSPC.
        f.fail_writes();
        f.append(vec![Bytes::from_static(b"more media")])
            .await
            .unwrap();
        let err = f.flush().await.unwrap_err();
        assert!(
            matches!(&err, SinkError::Spool { source, .. } if source.raw_os_error() == Some(28)),
            "{err}"
        );
        assert!(f.failed());
        // Nothing more is buffered for a file that cannot be written.
        f.append(vec![Bytes::from_static(b"even more")])
            .await
            .unwrap();
        assert_eq!(f.flush_due(), None);

        let want = flv::repair::repair(&torn).unwrap();
        assert!(want.keep_len < torn.len() as u64 && want.keep_len > 250_000);
        let kept = f.cut_back("flv").await.unwrap();
        assert_eq!(kept, want);
        assert_eq!(
            std::fs::metadata(f.path()).unwrap().len(),
            kept.keep_len,
            "cut back to the last complete tag"
        );
        let key = sink
            .finish_cut(f, &kept, &meta, 3, started)
            .await
            .unwrap()
            .expect("stored");
        assert_eq!(key, "d/a/s/s-3.flv");
        let mut expect = torn[..kept.keep_len as usize].to_vec();
        kept.apply(&mut expect);
        assert_eq!(
            std::fs::read(dir.path().join("rec").join(&key)).unwrap(),
            expect,
            "the kept tags, with duration and size patched to match"
        );
        assert_eq!(
            flv::repair::repair(&expect).unwrap().keep_len,
            expect.len() as u64
        );
        assert_eq!(sink.quota.used(), 0, "moved out of the spool");
        sink.end(rec).await;
    }

    #[tokio::test]
    async fn local_finish_moves_the_spool_file_by_rename() {
        let dir = tempfile::tempdir().unwrap();
        let sink = local_sink(dir.path()).await;
        let meta = flv_meta("{StreamID}");
        let rec = sink.begin(meta.clone()).await.unwrap();
        let mut f = sink.create(&rec, 0, Utc::now(), None).await.unwrap();
        f.append(vec![Bytes::from_static(b"hello")]).await.unwrap();
        f.flush().await.unwrap();
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(f.path()).unwrap().ino();
        let key = sink
            .finish(f, &[], &meta, "s", (Utc::now(), Utc::now(), 0), Vec::new())
            .await
            .unwrap();
        let stored = dir.path().join("rec").join(&key);
        assert_eq!(std::fs::read(&stored).unwrap(), b"hello");
        assert_eq!(
            std::fs::metadata(&stored).unwrap().ino(),
            inode,
            "renamed, not copied"
        );
        assert_eq!(sink.quota.used(), 0, "moved out of the spool");
        sink.end(rec).await;
    }

    #[tokio::test]
    async fn local_spool_files_bypass_the_page_cache_unless_direct_io_is_off() {
        let mut resident = Vec::new();
        for direct_io in [crate::config::DirectIo::Auto, crate::config::DirectIo::Off] {
            let dir = tempfile::tempdir().unwrap();
            let sink = local_sink_with(dir.path(), direct_io).await;
            let meta = flv_meta("{StreamID}");
            let rec = sink.begin(meta).await.unwrap();
            let mut f = sink.create(&rec, 0, Utc::now(), None).await.unwrap();
            let media = Bytes::from(vec![7u8; 3 * flush::FLUSH_BYTES + 100]);
            f.append(vec![media.clone()]).await.unwrap();
            f.flush().await.unwrap();
            resident.push(spool_write::tests::resident_bytes(f.path()));
            assert_eq!(std::fs::read(f.path()).unwrap(), media, "{direct_io:?}");
        }
        // Local storage by default: only the partial last block went through the cache.
        assert!(resident[0] <= spool_write::ALIGN as u64, "{resident:?}");
        assert!(resident[1] >= 3 * flush::FLUSH_BYTES as u64, "{resident:?}");
    }
}

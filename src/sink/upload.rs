//! S3 uploads (R-ST-2, R-ST-4): whole objects for small files and HLS segments,
//! multipart (parts of `storage.part_size`, read back from the spool file) for large
//! ones; every failure is retried with exponential backoff and jitter, forever — the
//! spool copy is the data until the store has confirmed it, and only then deleted.
//!
//! Memory stays bounded whatever the store does: at most `upload_concurrency` uploads run
//! at once, each holding at most one part in memory; everything waiting is a file in the
//! spool (bounded by the quota) plus a small job record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use rand::Rng;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::index_stored;
use super::store::{Backend, S3Backend};
use super::Quota;
use crate::db::{Db, FileState};

pub struct Job {
    /// The finished spool file (`….up`).
    pub path: PathBuf,
    /// Where the node recorded that it owes this upload.
    pub owed: Owed,
    pub key: String,
    pub storage_time: u64,
    /// When the file closed, for the close → stored latency (log and `/metrics`).
    pub closed: Instant,
    /// The recordings index entry, added once the store has the file.
    pub info: Option<crate::model::FileRecord>,
}

/// The record of an upload the node owes, which says what happens once the store has
/// the file.
#[derive(Debug, Clone)]
pub enum Owed {
    /// A `files` row at `queued`: the step to `indexed` indexes it (R-ST-4).
    Row(i64),
    /// An HLS segment: indexed with its playlist; the playlist's spool copy and marker
    /// are its record.
    Segment,
    /// A `{file}.up.json` key record of an earlier version's spool, removed with it.
    Sidecar(PathBuf),
    /// Nothing durable (the database refused the row): indexed after the upload, as a
    /// sidecar was.
    Unrecorded,
}

/// The key record an earlier version wrote beside each `{file}.up`.
pub fn meta_path(up: &Path) -> PathBuf {
    let mut s = up.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error("reading the spool file: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Store(#[from] object_store::Error),
    #[error("key: {0}")]
    Key(#[from] object_store::path::Error),
    #[error("background read failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub struct Uploader {
    s3: Arc<Backend>,
    sem: Arc<Semaphore>,
    quota: Arc<Quota>,
    db: Db,
    tracker: TaskTracker,
    /// Keys whose upload is pending, so no second file gets one of them.
    queued: Mutex<HashMap<String, ()>>,
    /// When the store started failing (None: healthy). An outage is logged once when it
    /// starts and once when it ends, not once per file and retry.
    outage: Mutex<Option<Instant>>,
}

impl Uploader {
    pub fn new(backend: Arc<Backend>, quota: Arc<Quota>, db: Db) -> Arc<Self> {
        let n = match &*backend {
            Backend::S3(s3) => s3.concurrency,
            Backend::Local { .. } => 1,
        };
        Arc::new(Uploader {
            s3: backend,
            sem: Arc::new(Semaphore::new(n)),
            quota,
            db,
            tracker: TaskTracker::new(),
            queued: Mutex::new(HashMap::new()),
            outage: Mutex::new(None),
        })
    }

    fn s3(&self) -> &S3Backend {
        match &*self.s3 {
            Backend::S3(s3) => s3,
            // Constructed only for the S3 backend (Sink::start).
            Backend::Local { .. } => unreachable!("uploader without S3"),
        }
    }

    /// A request failed: the first failure of an outage is a warning.
    fn failed(&self, what: &str, key: &str, attempt: u32, e: &dyn std::fmt::Display) {
        let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if o.is_none() {
            *o = Some(Instant::now());
            drop(o);
            warn!(key, "storage failing ({what}): {e}; files stay in the spool and are retried with backoff until it answers");
        } else if attempt.is_power_of_two() && attempt >= 16 {
            drop(o);
            warn!(key, attempt, "{what} still failing: {e}");
        } else {
            drop(o);
            debug!(key, attempt, "{what} failed: {e}");
        }
    }

    /// A request succeeded: ends an outage, with a line saying so.
    fn succeeded(&self) {
        let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = o.take() {
            drop(o);
            info!(
                outage_s = since.elapsed().as_secs(),
                pending = self.queued_len(),
                "storage answering again; catching up on the spool"
            );
        }
    }

    /// The store confirmed `job` (`size` bytes): indexes it, then drops the spool copy —
    /// in that order, so a crash in between leaves the `.up` file and the next start
    /// uploads and indexes it again (R-ST-4/5). When the database refused, the copy stays
    /// for the next start too.
    async fn stored(&self, job: &Job, size: u64) {
        crate::failpoint::hit("s3.stored");
        let indexed = match &job.owed {
            Owed::Row(id) => match self
                .db
                .advance(*id, FileState::Queued, FileState::Indexed)
                .await
            {
                Ok(()) => true,
                Err(e) => {
                    warn!(key = %job.key, "cannot index the stored file; its spool copy stays for the next start: {e}");
                    false
                }
            },
            Owed::Sidecar(_) | Owed::Unrecorded | Owed::Segment => {
                index_stored(
                    &self.db,
                    &job.key,
                    job.storage_time,
                    job.info.clone(),
                    Vec::new(),
                )
                .await
            }
        };
        if indexed {
            crate::failpoint::hit("s3.indexed");
            self.remove_spool(job, size).await;
        }
    }

    /// Drops the spool copy of an uploaded file.
    async fn remove_spool(&self, job: &Job, size: u64) {
        let _ = tokio::fs::remove_file(&job.path).await;
        if let Owed::Sidecar(meta) = &job.owed {
            let _ = tokio::fs::remove_file(meta).await;
        }
        self.quota.sub(size);
    }

    pub fn mark_queued(&self, key: &str) {
        self.mark(key, true);
    }

    pub fn queued_len(&self) -> usize {
        self.queued.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_queued(&self, key: &str) -> bool {
        self.queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    fn mark(&self, key: &str, on: bool) {
        let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        if on {
            q.insert(key.to_string(), ());
        } else {
            q.remove(key);
        }
    }

    /// Uploads a finished file in the background.
    pub fn upload_file(self: &Arc<Self>, job: Job) {
        self.mark(&job.key, true);
        let me = self.clone();
        self.tracker.spawn(async move {
            let size = me.upload_until_done(&job).await;
            me.stored(&job, size).await;
            me.mark(&job.key, false);
        });
    }

    /// Waits up to `grace` for every pending upload; false when some are left (they stay
    /// in the spool for the next start).
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Uploads until the store confirms; returns the size. The spool copy is the caller's
    /// to remove, after it indexed the file.
    async fn upload_until_done(&self, job: &Job) -> u64 {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let res = {
                let _permit = self.sem.acquire().await;
                self.upload_once(&job.path, &job.key).await
            };
            match res {
                Ok(size) => {
                    self.succeeded();
                    crate::metrics::upload_latency("s3", job.closed);
                    let ms = job.closed.elapsed().as_millis();
                    if attempt > 1 {
                        info!(key = %job.key, bytes = size, attempts = attempt, delay_ms = ms as u64, "uploaded after retries");
                    } else {
                        debug!(key = %job.key, bytes = size, delay_ms = ms as u64, "uploaded");
                    }
                    return size;
                }
                Err(e) => {
                    let wait = backoff(attempt);
                    self.failed("upload", &job.key, attempt, &e);
                    if attempt == 1 {
                        report_storage_error(&self.db, job, &e);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn upload_once(&self, path: &Path, key: &str) -> Result<u64, UploadError> {
        let s3 = self.s3();
        let loc = s3.path(key)?;
        let size = tokio::fs::metadata(path).await?.len();
        if size as usize <= s3.part_size {
            let data = tokio::fs::read(path).await?;
            s3.store.put(&loc, PutPayload::from(data)).await?;
            return Ok(size);
        }
        let id = s3.store.create_multipart(&loc).await?;
        let res = self.put_parts(s3, &loc, &id, path, size).await;
        if res.is_err() {
            // Best effort: an upload left behind costs storage until the bucket's
            // lifecycle rule removes it; the retry starts a new one.
            let _ = s3.store.abort_multipart(&loc, &id).await;
        }
        res.map(|()| size)
    }

    async fn put_parts(
        &self,
        s3: &S3Backend,
        loc: &ObjectPath,
        id: &String,
        path: &Path,
        size: u64,
    ) -> Result<(), UploadError> {
        let part = s3.part_size as u64;
        let mut parts = Vec::new();
        let mut off = 0u64;
        let mut idx = 0usize;
        while off < size {
            let len = part.min(size - off);
            let data = read_at(path.to_path_buf(), off, len as usize).await?;
            parts.push(
                s3.store
                    .put_part(loc, id, idx, PutPayload::from(data))
                    .await?,
            );
            off += len;
            idx += 1;
        }
        s3.store.complete_multipart(loc, id, parts).await?;
        Ok(())
    }

    async fn put_small(&self, key: &str, data: Vec<u8>) -> Result<(), UploadError> {
        let s3 = self.s3();
        let loc = s3.path(key)?;
        let _permit = self.sem.acquire().await;
        s3.store.put(&loc, PutPayload::from(data)).await?;
        Ok(())
    }

    /// Puts a small object, retrying like a file upload.
    async fn put_small_until_done(&self, key: &str, data: &[u8]) {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.put_small(key, data.to_vec()).await {
                Ok(()) => {
                    self.succeeded();
                    return;
                }
                Err(e) => {
                    let wait = backoff(attempt);
                    self.failed("playlist upload", key, attempt, &e);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The ordered upload lane of one HLS playlist.
    pub fn hls_lane(
        self: &Arc<Self>,
        key: String,
        copy: PathBuf,
        marker: PathBuf,
        storage_time: u64,
    ) -> HlsLane {
        let (tx, rx) = mpsc::unbounded_channel();
        let me = self.clone();
        self.mark(&key, true);
        self.tracker.spawn(async move {
            me.run_lane(key, copy, marker, storage_time, rx).await;
        });
        HlsLane { tx }
    }

    async fn run_lane(
        &self,
        key: String,
        copy: PathBuf,
        marker: PathBuf,
        storage_time: u64,
        mut rx: mpsc::UnboundedReceiver<LaneMsg>,
    ) {
        let mut playlist = hls::MediaPlaylist::new();
        let mut dirty = false;
        while let Some(msg) = rx.recv().await {
            match msg {
                LaneMsg::Segment(job, seg) => {
                    // A segment is indexed with its playlist; until then the marker and
                    // the playlist copy (which lists it) are what recovery goes by.
                    let size = self.upload_until_done(&job).await;
                    self.remove_spool(&job, size).await;
                    playlist.push_segment(seg);
                    dirty = true;
                    // With a backlog (after an outage) only the newest playlist is put.
                    if rx.is_empty() {
                        self.put_small_until_done(&key, playlist.render(false).as_bytes())
                            .await;
                        dirty = false;
                    }
                }
                LaneMsg::Finish(segment_keys, info, closed) => {
                    self.put_small_until_done(&key, playlist.render(true).as_bytes())
                        .await;
                    crate::metrics::upload_latency("s3", closed);
                    crate::failpoint::hit("hls.stored");
                    // Indexed before the marker goes: a crash in between leaves the
                    // marker, and the next start ends and indexes the playlist again.
                    if index_stored(&self.db, &key, storage_time, Some(info), segment_keys).await {
                        let _ = tokio::fs::remove_file(&copy).await;
                        let _ = tokio::fs::remove_file(&marker).await;
                    }
                    self.mark(&key, false);
                    return;
                }
            }
        }
        // The recorder went away without finishing (shutdown deadline): leave the marker
        // so the next start ends the playlist.
        if dirty {
            self.put_small_until_done(&key, playlist.render(false).as_bytes())
                .await;
        }
        self.mark(&key, false);
    }
}

impl Uploader {
    /// Crash recovery of an S3 playlist: its remaining segments, then the playlist with
    /// ENDLIST, in the background and in that order.
    #[allow(clippy::too_many_arguments)]
    pub fn recover_playlist(
        self: &Arc<Self>,
        jobs: Vec<Job>,
        key: String,
        text: String,
        segment_keys: Vec<String>,
        storage_time: u64,
        copy: PathBuf,
        marker: PathBuf,
        info: Option<crate::model::FileRecord>,
    ) {
        let me = self.clone();
        self.mark(&key, true);
        for j in &jobs {
            self.mark(&j.key, true);
        }
        self.tracker.spawn(async move {
            for j in &jobs {
                let size = me.upload_until_done(j).await;
                me.remove_spool(j, size).await;
                me.mark(&j.key, false);
            }
            me.put_small_until_done(&key, text.as_bytes()).await;
            let info = match info {
                Some(mut i) => {
                    // Segments stored before the crash left the spool: their sizes come
                    // from the store (one HEAD each, on this rare path; one that fails
                    // counts 0).
                    i.size = me.stored_size(&segment_keys).await;
                    Some(i)
                }
                None => None,
            };
            let n = segment_keys.len();
            // Indexed before the marker goes (a crash in between recovers it again).
            if index_stored(&me.db, &key, storage_time, info, segment_keys).await {
                let _ = tokio::fs::remove_file(&copy).await;
                let _ = tokio::fs::remove_file(&marker).await;
            }
            me.mark(&key, false);
            info!(key = %key, segments = n, "recovered playlist stored");
        });
    }

    async fn stored_size(&self, keys: &[String]) -> u64 {
        let Backend::S3(s3) = &*self.s3 else {
            return 0;
        };
        let mut size = 0;
        for k in keys {
            let Ok(loc) = s3.path(k) else { continue };
            match s3.store.head(&loc).await {
                Ok(m) => size += m.size,
                Err(e) => warn!(key = %k, "cannot read a recovered segment's size: {e}"),
            }
        }
        size
    }
}

/// The multipart upload of a file still being recorded (R-ST-2): parts are sent as the
/// spool file grows, to a temporary key (the final name holds the end time, unknown until
/// the file closes); on close the first part — which the finalizing patches touch — and
/// the tail go up, the upload completes, and the object is copied to its key server-side.
/// Files that never reach two parts are uploaded whole at close, as before.
pub struct StreamHandle {
    flushed: tokio::sync::watch::Sender<u64>,
    fin: Option<tokio::sync::oneshot::Sender<Job>>,
}

impl StreamHandle {
    pub fn flushed(&self, len: u64) {
        self.flushed.send_replace(len);
    }

    pub fn finish(mut self, job: Job) {
        if let Some(f) = self.fin.take() {
            let _ = f.send(job);
        }
    }
}

/// Where a streaming upload goes before its file has a name; recorded in the spool so a
/// restart can abort it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct MpuMeta {
    pub temp_key: String,
    pub upload_id: String,
}

pub fn mpu_path(part: &Path) -> PathBuf {
    let mut s = part.as_os_str().to_owned();
    s.push(".mpu.json");
    PathBuf::from(s)
}

impl Uploader {
    pub fn start_stream(self: &Arc<Self>, path: &Path, temp_key: String) -> Option<StreamHandle> {
        let file = std::fs::File::open(path).ok()?;
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let (fin_tx, fin_rx) = tokio::sync::oneshot::channel();
        let me = self.clone();
        let mpu = mpu_path(path);
        self.tracker.spawn(async move {
            me.run_stream(Arc::new(file), temp_key, mpu, rx, fin_rx)
                .await;
        });
        Some(StreamHandle {
            flushed: tx,
            fin: Some(fin_tx),
        })
    }

    async fn run_stream(
        &self,
        file: Arc<std::fs::File>,
        temp_key: String,
        mpu: PathBuf,
        mut flushed: tokio::sync::watch::Receiver<u64>,
        mut fin: tokio::sync::oneshot::Receiver<Job>,
    ) {
        let s3 = self.s3();
        let p = s3.part_size as u64;
        let Ok(temp) = s3.path(&temp_key) else {
            return;
        };
        let mut upload: Option<String> = None;
        let mut parts: Vec<Option<object_store::multipart::PartId>> = vec![None];
        let job = loop {
            let len = *flushed.borrow_and_update();
            let next = parts.len() as u64;
            // Part k (k ≥ 1) is [k·P, (k+1)·P); it goes once the file is past it, and the
            // upload starts only for a file past two parts.
            if len >= (next + 1) * p && len >= 2 * p {
                if upload.is_none() {
                    upload = self
                        .create_until_done(&temp, &mpu, &temp_key, &mut fin, &flushed)
                        .await;
                    if upload.is_none() {
                        // Finished (or abandoned) while the store was unreachable.
                        match fin.try_recv() {
                            Ok(job) => break job,
                            Err(_) => return,
                        }
                    }
                }
                let id = upload.clone().unwrap_or_default();
                let part = self
                    .part_until_done(&temp, &id, &file, next * p, p as usize, next as usize)
                    .await;
                parts.push(Some(part));
                continue;
            }
            tokio::select! {
                // The job before the closed flush channel: finishing drops both at once.
                biased;
                j = &mut fin => match j {
                    Ok(job) => break job,
                    Err(_) => {
                        self.abandon(&temp, upload.as_ref(), &mpu).await;
                        return;
                    }
                },
                r = flushed.changed() => if r.is_err() {
                    match (&mut fin).await {
                        Ok(job) => break job,
                        Err(_) => {
                            self.abandon(&temp, upload.as_ref(), &mpu).await;
                            return;
                        }
                    }
                },
            }
        };
        self.mark(&job.key, true);
        let done = match &upload {
            Some(id) => self.complete_stream(&temp, id, &file, parts, &job).await,
            None => false,
        };
        if let Some(id) = &upload {
            if !done {
                let _ = s3.store.abort_multipart(&temp, id).await;
            }
        }
        let size = if done {
            crate::metrics::upload_latency("s3", job.closed);
            tokio::fs::metadata(&job.path).await.map_or(0, |m| m.len())
        } else {
            // Small file, or the multipart path failed for good: whole upload.
            self.upload_until_done(&job).await
        };
        // Indexed, then the spool copy goes (`stored`), then the multipart record: a crash
        // before the index commit leaves `.up` and the record, and the next start stores
        // and indexes it again.
        self.stored(&job, size).await;
        let _ = tokio::fs::remove_file(&mpu).await;
        self.mark(&job.key, false);
    }

    /// The recording dropped the file without finishing it (it lost its spool file).
    async fn abandon(&self, temp: &ObjectPath, upload: Option<&String>, mpu: &Path) {
        if let Some(id) = upload {
            let _ = self.s3().store.abort_multipart(temp, id).await;
        }
        let _ = tokio::fs::remove_file(mpu).await;
    }

    /// A streaming upload a killed daemon left open: aborted in the background (best
    /// effort; a bucket lifecycle rule for incomplete uploads catches the rest).
    pub fn abort_orphan(self: &Arc<Self>, meta: MpuMeta, record: PathBuf) {
        let me = self.clone();
        self.tracker.spawn(async move {
            let s3 = me.s3();
            if let Ok(temp) = s3.path(&meta.temp_key) {
                match s3.store.abort_multipart(&temp, &meta.upload_id).await {
                    Ok(()) => info!(key = %meta.temp_key, "aborted an upload left open by the last run"),
                    Err(e) => warn!(key = %meta.temp_key, "cannot abort an upload left open by the last run: {e}"),
                }
            }
            let _ = tokio::fs::remove_file(&record).await;
        });
    }

    /// Creates the multipart upload, retrying; gives up (None) only when the file is
    /// finished or dropped meanwhile, so the close path can take over.
    async fn create_until_done(
        &self,
        temp: &ObjectPath,
        mpu: &Path,
        temp_key: &str,
        fin: &mut tokio::sync::oneshot::Receiver<Job>,
        flushed: &tokio::sync::watch::Receiver<u64>,
    ) -> Option<String> {
        let s3 = self.s3();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let r = {
                let _permit = self.sem.acquire().await;
                s3.store.create_multipart(temp).await
            };
            match r {
                Ok(id) => {
                    self.succeeded();
                    let meta = MpuMeta {
                        temp_key: temp_key.to_string(),
                        upload_id: id.clone(),
                    };
                    if let Ok(json) = serde_json::to_vec(&meta) {
                        let _ = tokio::fs::write(mpu, json).await;
                    }
                    return Some(id);
                }
                Err(e) => {
                    let wait = backoff(attempt);
                    self.failed("starting a multipart upload", temp_key, attempt, &e);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = fin_ready(fin, flushed) => return None,
                    }
                }
            }
        }
    }

    async fn part_until_done(
        &self,
        temp: &ObjectPath,
        id: &String,
        file: &Arc<std::fs::File>,
        off: u64,
        len: usize,
        idx: usize,
    ) -> object_store::multipart::PartId {
        let s3 = self.s3();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let r: Result<_, UploadError> = async {
                let data = pread(file.clone(), off, len).await?;
                let _permit = self.sem.acquire().await;
                Ok(s3
                    .store
                    .put_part(temp, id, idx, PutPayload::from(data))
                    .await?)
            }
            .await;
            match r {
                Ok(part) => {
                    self.succeeded();
                    return part;
                }
                Err(e) => {
                    let wait = backoff(attempt);
                    self.failed("part upload", temp.as_ref(), attempt, &e);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The rest of a streamed file once it is closed and patched: the missing full parts,
    /// the tail, part 0, complete, then copy to the final key. False when it cannot be
    /// done this way (the caller uploads the file whole instead).
    async fn complete_stream(
        &self,
        temp: &ObjectPath,
        id: &String,
        file: &Arc<std::fs::File>,
        mut parts: Vec<Option<object_store::multipart::PartId>>,
        job: &Job,
    ) -> bool {
        let s3 = self.s3();
        let p = s3.part_size as u64;
        let Ok(size) = tokio::fs::metadata(&job.path).await.map(|m| m.len()) else {
            return false;
        };
        loop {
            let next = parts.len() as u64;
            if next * p >= size {
                break;
            }
            let len = p.min(size - next * p) as usize;
            let part = self
                .part_until_done(temp, id, file, next * p, len, next as usize)
                .await;
            parts.push(Some(part));
        }
        // Part 0 last: the finalizing patches (FLV metadata, MP4 duration) are in it.
        parts[0] = Some(self.part_until_done(temp, id, file, 0, p as usize, 0).await);
        let parts: Vec<_> = parts.into_iter().flatten().collect();
        let Ok(dest) = s3.path(&job.key) else {
            return false;
        };
        for attempt in 1..=20u32 {
            let r: Result<(), object_store::Error> = async {
                let _permit = self.sem.acquire().await;
                s3.store.complete_multipart(temp, id, parts.clone()).await?;
                Ok(())
            }
            .await;
            match r {
                Ok(()) => break,
                Err(e) if attempt == 20 => {
                    warn!(key = %job.key, "completing the multipart upload failed, uploading the file whole: {e}");
                    return false;
                }
                Err(e) => {
                    if attempt == 1 {
                        warn!(key = %job.key, "completing the multipart upload failed, retrying: {e}");
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        // CopyObject fails for objects over 5 GiB and on stores without it; after a few
        // minutes of failures the file goes up whole instead (the spool still has it).
        for attempt in 1..=20u32 {
            let r = {
                let _permit = self.sem.acquire().await;
                s3.store.copy(temp, &dest).await
            };
            match r {
                Ok(()) => break,
                Err(e) if attempt == 20 => {
                    warn!(key = %job.key, "server-side copy keeps failing, uploading the file whole: {e}");
                    let _ = s3.store.delete(temp).await;
                    return false;
                }
                Err(e) => {
                    self.failed("server-side copy", &job.key, attempt, &e);
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        let _ = s3.store.delete(temp).await;
        debug!(key = %job.key, bytes = size, delay_ms = job.closed.elapsed().as_millis() as u64, "uploaded (streamed)");
        true
    }
}

/// Resolves once the file is finished (the job waits in the channel for `try_recv`) or
/// dropped (its flush channel closed), without taking the job out.
/// A stored file's first failed upload is its recording's `record_error` (R-CB-2): the
/// file waits in the spool and is retried, and the platform hears why.
fn report_storage_error(db: &Db, job: &Job, e: &dyn std::fmt::Display) {
    let Some(rec) = &job.info else { return };
    let Some(notice) = &rec.notice else { return };
    let subject = crate::callback::event::Subject {
        stream: Some(crate::model::StreamId {
            domain: rec.domain.clone(),
            app: rec.app.clone(),
            stream: rec.stream.clone(),
        }),
        task_id: rec.task_id.clone(),
        format: rec.format.clone(),
    };
    crate::callback::queue_status(
        db,
        notice,
        &subject,
        crate::callback::event::RecordEvent::Error,
        &format!(
            "storage failing for {}: {e}; the file stays in the spool and is retried",
            job.key
        ),
        serde_json::Value::Null,
    );
}

async fn fin_ready(
    fin: &mut tokio::sync::oneshot::Receiver<Job>,
    flushed: &tokio::sync::watch::Receiver<u64>,
) {
    loop {
        if !fin.is_empty() || flushed.has_changed().is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pread(file: Arc<std::fs::File>, off: u64, len: usize) -> Result<Vec<u8>, UploadError> {
    Ok(
        tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, off)?;
            Ok(buf)
        })
        .await??,
    )
}

pub enum LaneMsg {
    Segment(Job, hls::Segment),
    /// The playlist's segment keys, its index record, and when it closed.
    Finish(Vec<String>, crate::model::FileRecord, Instant),
}

pub struct HlsLane {
    tx: mpsc::UnboundedSender<LaneMsg>,
}

impl HlsLane {
    pub fn segment(&self, job: Job, seg: hls::Segment) {
        let _ = self.tx.send(LaneMsg::Segment(job, seg));
    }

    pub fn finish(
        self,
        segment_keys: Vec<String>,
        info: crate::model::FileRecord,
        closed: Instant,
    ) {
        let _ = self.tx.send(LaneMsg::Finish(segment_keys, info, closed));
    }
}

/// 250 ms doubling to 30 s, each wait drawn from [½, 1] of that so many streams retrying
/// after one outage do not hit the store in lockstep.
pub(super) fn backoff(attempt: u32) -> Duration {
    let base = 250u64.saturating_mul(1u64 << attempt.min(8).saturating_sub(1));
    let cap = base.min(30_000);
    let ms = rand::rng().random_range(cap / 2..=cap);
    Duration::from_millis(ms)
}

async fn read_at(path: PathBuf, off: u64, len: usize) -> Result<Vec<u8>, UploadError> {
    Ok(
        tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(&path)?;
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, off)?;
            Ok(buf)
        })
        .await??,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_with_jitter() {
        for attempt in 1..40 {
            let d = backoff(attempt).as_millis() as u64;
            let cap = (250u64 << (attempt.min(8) - 1)).min(30_000);
            assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d} ms");
        }
        assert!(backoff(1) <= Duration::from_millis(250));
        assert!(backoff(30) >= Duration::from_secs(15));
    }
}

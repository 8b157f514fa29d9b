//! Where recorded bytes go: a spool file per open recording file, then the storage
//! backend under its final key (R-ST-1, R-ST-3).
//!
//! The recorder only ever sees `create`/`append`/`finish`, so adding S3 (issue 4) changes
//! this module alone. With the local backend a finished file is moved into the
//! recordings directory by rename, never copied a second time.

use std::collections::HashSet;
use std::io::{IoSlice, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flv::mux::Patch;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;

use crate::ingest::identity::StreamId;

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
    #[error("background write task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub struct Sink {
    spool: PathBuf,
    root: PathBuf,
    /// The object-store view of `root`, used for the cross-device fallback (spool and
    /// recordings on different filesystems).
    store: LocalFileSystem,
    next_id: AtomicU64,
    /// Keys handed out but maybe not yet visible on disk, so two files closing in the
    /// same second never get one name (R-ST-3).
    taken: Mutex<HashSet<String>>,
}

/// Appends are buffered up to this many bytes before a write, so 100 streams cost a few
/// writes per second each, not one per frame. What a crash can lose is therefore the
/// last ≤ 256 KiB of each open file (< 1 s at 3 Mb/s); nothing is fsynced (as in
/// nginx-rtmp and MediaMTX), so power loss can lose what the page cache held.
const FLUSH_BYTES: usize = 256 * 1024;

pub struct SpoolFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    pending: Vec<Bytes>,
    pending_len: usize,
}

impl SpoolFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn append(&mut self, bufs: Vec<Bytes>) -> Result<(), SinkError> {
        for b in bufs {
            self.pending_len += b.len();
            self.pending.push(b);
        }
        if self.pending_len >= FLUSH_BYTES {
            self.flush().await?;
        }
        Ok(())
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
        self.pending_len = 0;
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        let path = self.path.clone();
        let (file, res) = tokio::task::spawn_blocking(move || {
            let res = write_all_vectored(&mut file, &bufs);
            (file, res)
        })
        .await?;
        self.file = Some(file);
        res.map_err(|source| SinkError::Spool { path, source })
    }
}

fn write_all_vectored(f: &mut std::fs::File, bufs: &[Bytes]) -> std::io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < bufs.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(&bufs[idx][off..])
            .chain(bufs[idx + 1..].iter().map(|b| &b[..]))
            .take(1024)
            .map(IoSlice::new)
            .collect();
        let mut n = f.write_vectored(&slices)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while idx < bufs.len() && n > 0 {
            let left = bufs[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

impl Sink {
    pub fn new(spool: PathBuf, root: PathBuf) -> Result<Arc<Self>, SinkError> {
        for d in [&spool, &root] {
            std::fs::create_dir_all(d).map_err(|source| SinkError::Spool {
                path: d.clone(),
                source,
            })?;
        }
        let store = LocalFileSystem::new_with_prefix(&root).map_err(|e| SinkError::Store {
            key: root.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        Ok(Arc::new(Self {
            spool,
            root,
            store,
            next_id: AtomicU64::new(0),
            taken: Mutex::new(HashSet::new()),
        }))
    }

    /// Opens a new spool file for a stream's next file.
    pub async fn create(&self, id: &StreamId, ext: &str) -> Result<SpoolFile, SinkError> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dir = self.spool.join(&id.domain).join(&id.app).join(&id.stream);
        let pid = std::process::id();
        let path = dir.join(format!("{pid}-{n}.{ext}.part"));
        let p2 = path.clone();
        let file = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&p2)
        })
        .await?
        .map_err(|source| SinkError::Spool {
            path: path.clone(),
            source,
        })?;
        Ok(SpoolFile {
            path,
            file: Some(file),
            pending: Vec::new(),
            pending_len: 0,
        })
    }

    /// Completes a file: flush, patch in place (FLV metadata), then store it under
    /// `{domain}/{app}/{stream}/{name}.{ext}`, with `_N` added if that key is taken.
    /// Returns the key.
    pub async fn finish(
        &self,
        mut f: SpoolFile,
        patches: &[Patch],
        id: &StreamId,
        name: &str,
        ext: &str,
    ) -> Result<String, SinkError> {
        f.flush().await?;
        let Some(mut file) = f.file.take() else {
            return Err(SinkError::Spool {
                path: f.path,
                source: std::io::ErrorKind::NotFound.into(),
            });
        };
        let patches = patches.to_vec();
        let path = f.path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for p in &patches {
                file.seek(SeekFrom::Start(p.offset))?;
                file.write_all(&p.bytes)?;
            }
            file.flush()
        })
        .await?
        .map_err(|source| SinkError::Spool {
            path: path.clone(),
            source,
        })?;

        let key = self.claim_key(id, name, ext).await?;
        let dest = self.root.join(&key);
        let src = f.path.clone();
        let renamed = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match std::fs::rename(&src, &dest) {
                Ok(()) => Ok(true),
                // EXDEV: spool and recordings live on different filesystems.
                Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await?
        .map_err(|source| SinkError::Store {
            key: key.clone(),
            source,
        });
        let result = match renamed {
            Ok(true) => Ok(()),
            Ok(false) => self.copy_into_store(&f.path, &key).await,
            Err(e) => Err(e),
        };
        self.release_key(&key);
        result.map(|()| key)
    }

    async fn copy_into_store(&self, src: &Path, key: &str) -> Result<(), SinkError> {
        use object_store::ObjectStoreExt;
        let loc = ObjectPath::parse(key).map_err(|source| SinkError::Key {
            key: key.into(),
            source,
        })?;
        let data = tokio::fs::read(src)
            .await
            .map_err(|source| SinkError::Spool {
                path: src.into(),
                source,
            })?;
        self.store
            .put(&loc, data.into())
            .await
            .map_err(|e| SinkError::Store {
                key: key.into(),
                source: std::io::Error::other(e),
            })?;
        tokio::fs::remove_file(src)
            .await
            .map_err(|source| SinkError::Spool {
                path: src.into(),
                source,
            })
    }

    /// Reserves `{domain}/{app}/{stream}/{name}.{ext}` (or `{name}_N.{ext}`) for a file
    /// that is written in place while it grows (an HLS playlist); `release` when done.
    pub async fn claim(&self, id: &StreamId, name: &str, ext: &str) -> Result<String, SinkError> {
        self.claim_key(id, name, ext).await
    }

    pub fn release(&self, key: &str) {
        self.release_key(key);
    }

    /// Replaces the object at `key` with `data` atomically (write beside it, then rename),
    /// so a reader or a crash sees the old or the new version, never a mix (R-FM-2: a
    /// playlist rewritten after each segment).
    pub async fn put_atomic(&self, key: &str, data: Vec<u8>) -> Result<(), SinkError> {
        ObjectPath::parse(key).map_err(|source| SinkError::Key {
            key: key.into(),
            source,
        })?;
        let dest = self.root.join(key);
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tmp = dest.with_extension(format!("tmp-{}-{n}", std::process::id()));
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&tmp, &data)?;
            std::fs::rename(&tmp, &dest)
        })
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
            let exists = tokio::fs::try_exists(self.root.join(&key))
                .await
                .unwrap_or(true);
            if !exists
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

    fn release_key(&self, key: &str) {
        self.taken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

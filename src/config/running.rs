//! The one owner of the running configuration: the config file as last loaded, the
//! templates and rules made over the API (R-TP-5), and the two merged and validated.
//! Everyone else takes an immutable snapshot ([`RunningConfig::snapshot`]) and keeps it
//! for as long as it needs one consistent view (a connection, a recording: R-TP-6). A
//! reload and the API's edits are serialized by one async lock, held while an edit is
//! stored, so two edits never interleave.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::{info, warn};

use super::{ApiItems, ConfigError, Loaded};

pub struct RunningConfig {
    current: ArcSwap<Loaded>,
    sources: tokio::sync::Mutex<Sources>,
    /// Where the config came from (None: embedded defaults), for reloads.
    path: Option<PathBuf>,
}

struct Sources {
    file: Arc<Loaded>,
    api: ApiItems,
}

impl RunningConfig {
    /// Where the config comes from, as `/healthz` says it: the file's path, or
    /// `embedded defaults`.
    pub fn source(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "embedded defaults".into(),
        }
    }

    pub fn new(file: Loaded, path: Option<PathBuf>) -> Arc<Self> {
        let file = Arc::new(file);
        Arc::new(RunningConfig {
            current: ArcSwap::new(file.clone()),
            sources: tokio::sync::Mutex::new(Sources {
                file,
                api: ApiItems::default(),
            }),
            path,
        })
    }

    /// The running config, file and API items merged.
    pub fn snapshot(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// Exclusive access for an API edit, until the returned guard is dropped.
    pub async fn edit(&self) -> Edit<'_> {
        Edit {
            running: self,
            sources: self.sources.lock().await,
        }
    }

    /// Re-reads the config file (R-TP-6). A bad file is refused with its errors and the
    /// running config stays; a good one applies to connections and pushes that start from
    /// now on (recordings in progress keep the settings they started with). Keys that
    /// need a restart keep their running values, with a warning. Returns the warnings.
    pub async fn reload(&self) -> Result<Vec<String>, Vec<String>> {
        let refused = |msgs: Vec<String>| {
            for m in &msgs {
                warn!("reload refused, the running config stays: {m}");
            }
            msgs
        };
        let new = super::load(self.path.as_deref())
            .map_err(|errors| refused(errors.iter().map(|e| e.to_string()).collect()))?;
        let mut sources = self.sources.lock().await;
        let old = sources.file.clone();
        let fixed = restart_only_changes(&old, &new);
        let mut new = new;
        let mut warnings = Vec::new();
        if !fixed.is_empty() {
            // Keep what cannot change live, take the rest.
            new.rtmp_listen = old.rtmp_listen;
            new.config.rtmp.proxy_protocol = old.config.rtmp.proxy_protocol;
            new.api_listen = old.api_listen;
            if old.rtmps.as_ref().map(|r| r.0) != new.rtmps.as_ref().map(|r| r.0) {
                new.rtmps = old.rtmps.clone();
                new.config.rtmps = old.config.rtmps.clone();
            }
            new.config.api = old.config.api.clone();
            new.config.storage = old.config.storage.clone();
            new.config.spool = old.config.spool.clone();
            new.config.runtime = old.config.runtime.clone();
            new.config.log = old.config.log.clone();
            let w = format!(
                "changes to {} need a restart; the running values stay",
                fixed.join(", ")
            );
            warn!("{w}");
            warnings.push(w);
        }
        // The API's templates and rules go on top of the new file, checked together.
        let merged = Loaded::merged(&new, &sources.api).map_err(|errors| {
            refused(
                errors
                    .iter()
                    .map(|e| format!("with the API-made templates and rules: {e}"))
                    .collect(),
            )
        })?;
        sources.file = Arc::new(new);
        self.current.store(Arc::new(merged));
        let now = self.snapshot();
        info!(
            templates = now.config.templates.len(),
            rules = now.config.rules.len(),
            "config reloaded; new pushes use it"
        );
        Ok(warnings)
    }
}

/// An API edit in progress: the sources are locked until it is dropped.
pub struct Edit<'a> {
    running: &'a RunningConfig,
    sources: tokio::sync::MutexGuard<'a, Sources>,
}

impl Edit<'_> {
    /// The config file alone.
    pub fn file(&self) -> &Loaded {
        &self.sources.file
    }

    /// The API's templates and rules as kept.
    pub fn api(&self) -> &ApiItems {
        &self.sources.api
    }

    /// Makes `next` the API's items in the running config if the merge is valid; not
    /// kept until [`keep`](Self::keep) (a store failure [`revert`](Self::revert)s).
    pub fn apply(&self, next: &ApiItems) -> Result<(), Vec<ConfigError>> {
        let merged = Loaded::merged(&self.sources.file, next)?;
        self.running.current.store(Arc::new(merged));
        Ok(())
    }

    /// Keeps `next` (applied before) as the API's items.
    pub fn keep(&mut self, next: ApiItems) {
        self.sources.api = next;
    }

    /// Puts the running config back to the kept items.
    pub fn revert(&self) {
        if let Ok(merged) = Loaded::merged(&self.sources.file, &self.sources.api) {
            self.running.current.store(Arc::new(merged));
        }
    }
}

/// Keys a running daemon cannot change (sockets, storage, runtime).
fn restart_only_changes(old: &Loaded, new: &Loaded) -> Vec<&'static str> {
    let (o, n) = (&old.config, &new.config);
    let mut v = Vec::new();
    if old.rtmp_listen != new.rtmp_listen {
        v.push("rtmp.listen");
    }
    // What is in front of the listeners: switching it live would cut every balancer
    // connection in flight one way or the other.
    if o.rtmp.proxy_protocol != n.rtmp.proxy_protocol {
        v.push("rtmp.proxy_protocol");
    }
    // The certificate and key may change (they are re-read); the socket may not.
    if old.rtmps.as_ref().map(|r| r.0) != new.rtmps.as_ref().map(|r| r.0) {
        v.push("rtmps.listen");
    }
    if old.api_listen != new.api_listen || o.api.token != n.api.token {
        v.push("api");
    }
    if o.storage != n.storage {
        v.push("storage");
    }
    if o.spool != n.spool {
        v.push("spool");
    }
    if o.runtime != n.runtime {
        v.push("runtime");
    }
    if o.log != n.log {
        v.push("log");
    }
    v
}

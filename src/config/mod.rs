//! The TOML configuration (SPEC.md section 13): every key optional, embedded defaults,
//! unknown keys refused, and every error reported with its line (R-OP-1).
//!
//! This module is the model (plain structs, what the rest of the daemon reads) and the
//! loading; [`validate`] checks a model and names the key each problem is about, and
//! [`source`] turns that key into a line of the file. Spans stay inside loading.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::StreamId;
pub use crate::model::{FormatConfig, Plan};

pub mod running;
mod source;
mod validate;
pub use running::RunningConfig;

/// A config error with the line it concerns, so `check-config` can point at it.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", location.as_ref().map(|l| format!("{}:{}: ", l.file, l.line)).unwrap_or_default())]
pub struct ConfigError {
    pub location: Option<Location>,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub rtmp: RtmpConfig,
    pub api: ApiConfig,
    pub storage: StorageConfig,
    pub spool: SpoolConfig,
    pub record: RecordConfig,
    pub ingest: IngestConfig,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
    pub callback: CallbackConfig,
    /// RTMPS ingest; off when absent.
    pub rtmps: Option<RtmpsConfig>,
    /// Several nodes sharing one bucket (R-SC-1); a single node when absent.
    pub cluster: Option<ClusterConfig>,
    #[serde(rename = "publish_auth")]
    pub publish_auth: Vec<PublishAuth>,
    #[serde(rename = "template")]
    pub templates: Vec<Template>,
    #[serde(rename = "rule")]
    pub rules: Vec<Rule>,
}

/// Binds a template to a domain and optionally an app and a stream (R-TP-3).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub domain: String,
    #[serde(default)]
    pub app: String,
    #[serde(default)]
    pub stream: String,
    pub template_id: i64,
}

impl Rule {
    /// R-TP-3's priority (1 = most specific) when the rule matches `id`, else None.
    pub fn priority(&self, id: &StreamId) -> Option<u8> {
        crate::model::rule_priority(&self.domain, &self.app, &self.stream, id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDuplicate {
    Reject,
    Takeover,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpConfig {
    pub listen: String,
    /// Domain for pushes whose tcUrl host is an IP address or not in `domains` (R-IN-2).
    pub default_domain: String,
    /// Domains this node serves; a tcUrl host among them is used as the stream's domain.
    pub domains: Vec<String>,
    pub on_duplicate: OnDuplicate,
    /// Largest RTMP message accepted, in bytes (R-SEC-2; reliability.md C4).
    pub max_message_bytes: usize,
    /// Seconds a client has to finish the handshake and start publishing (reliability H3).
    pub handshake_timeout: u64,
    /// Seconds without any media before a publisher is dropped (reliability H4).
    pub idle_timeout: u64,
    pub max_connections: usize,
    /// Concurrent RTMP connections from one IP address (R-SEC-2); 0 = no per-IP limit.
    pub max_connections_per_ip: usize,
    /// Streams being published at once (R-SEC-2).
    pub max_streams: usize,
    /// Our outgoing chunk size; large chunks cost the publisher less CPU.
    pub chunk_size: u32,
    /// Every connection on the RTMP and RTMPS listeners starts with a PROXY protocol v1
    /// or v2 header (HAProxy `send-proxy`, an AWS NLB), whose source address is the
    /// client's for limits, auth hooks, logs and the API (issue 15, R-SC-1). Needs a
    /// restart to change.
    pub proxy_protocol: bool,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:1935".into(),
            default_domain: "localhost".into(),
            domains: Vec::new(),
            on_duplicate: OnDuplicate::Reject,
            max_message_bytes: 8 << 20,
            handshake_timeout: 10,
            idle_timeout: 30,
            max_connections: 2000,
            max_connections_per_ip: 256,
            max_streams: 1000,
            chunk_size: 4096,
            proxy_protocol: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: String,
    pub token: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            token: String::new(),
        }
    }
}

/// RTMPS ingest (issue 14): the same connections as `[rtmp]` (limits, handshake
/// deadline, identity, auth) over TLS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RtmpsConfig {
    pub listen: String,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Who may publish to a domain (or one app of it) (R-SEC-1). Without any entry anyone
/// may publish; a push matching an entry (the most specific: domain+app over domain) is
/// accepted when any method the entry configures accepts it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PublishAuth {
    pub domain: String,
    /// Empty: every app of the domain.
    #[serde(default)]
    pub app: String,
    /// `txSecret = md5(key + stream + txTime)`, `txTime` = expiry as hex unix seconds;
    /// two keys at once allow rotation.
    #[serde(default)]
    pub tx_secret_keys: Vec<String>,
    /// `?key=…` equal to one of these.
    #[serde(default)]
    pub stream_keys: Vec<String>,
    /// A file with one stream key per line (`#` comments), re-read on every load and
    /// reload.
    #[serde(default)]
    pub stream_keys_file: Option<PathBuf>,
    /// Asked with a POST per publish; 2xx allows.
    #[serde(default)]
    pub on_publish: String,
    #[serde(default = "default_hook_timeout")]
    pub on_publish_timeout: u64,
    /// Allow publishes when the hook does not answer (timeout, connection error).
    #[serde(default)]
    pub on_publish_fail_open: bool,
    /// Told (POST, answer ignored) when a publish it allowed ends.
    #[serde(default)]
    pub on_unpublish: String,
    /// The keys read from `stream_keys_file` when the config was loaded.
    #[serde(skip)]
    pub file_keys: Vec<String>,
}

fn default_hook_timeout() -> u64 {
    3
}

/// Several nodes sharing one S3 bucket (R-SC-1, `src/cluster/`). Absent: a single node
/// that makes no cluster requests at all.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Unique per node; default the host name.
    pub node_id: String,
    /// Seconds within which a node sees tasks, templates, rules and recordings made
    /// through another.
    pub sync_interval: u64,
    /// Seconds a stream lease (and a node's heartbeat) stays valid without a renewal.
    pub lease_ttl: u64,
    /// Seconds after which a silent node's files are another node's to expire.
    pub orphan_after: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            sync_interval: 2,
            lease_ttl: 15,
            orphan_after: 3600,
        }
    }
}

/// Where and how file and status events are sent (R-CB-1…4). Off without a `url`
/// (unless a template names its own `callback_url`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CallbackConfig {
    pub url: String,
    /// The reference product's md5 signing key: `sign = md5(key + t)` in the body.
    pub key: String,
    /// The Standard Webhooks secret (`whsec_` + base64): the three `webhook-*` headers.
    pub secret: String,
    /// Seconds added to now for the body's `t` (its expiry).
    pub sign_ttl: u64,
    /// Seconds per attempt.
    pub timeout: u64,
    /// Seconds an event is retried before it is marked failed.
    pub max_age: u64,
    /// The event types sent (100 file, 332 status).
    pub events: Vec<u32>,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            key: String::new(),
            secret: String::new(),
            sign_ttl: 600,
            timeout: 10,
            max_age: 86_400,
            events: vec![100, 332],
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Async worker threads; 0 = one per two cores, at least one (see [`Self::threads`]).
    pub worker_threads: usize,
}

impl RuntimeConfig {
    /// The runtime's worker threads. Not one per core (tokio's default): the runtime only
    /// decodes, muxes and hands buffers on — about 0.03 % of a core per hd stream — while
    /// file writes run on the blocking pool whatever this is. Every worker more is a
    /// thread that other workers wake (futex, context switch) whenever they have queued
    /// work, and once the reads were gathered per slot those hand-offs were the largest
    /// cost left: at 100 hd streams (FLV + HLS) on 2 cores, one worker used 8 % less CPU
    /// than two (benches/README.md, issue 17). Half the cores keeps room for many more
    /// streams on larger machines.
    pub fn threads(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        default_worker_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

fn default_worker_threads(cores: usize) -> usize {
    (cores / 2).max(1)
}

fn default_io_threads(cores: usize) -> usize {
    cores.max(4)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub kind: String,
    /// `kind = "local"`: the recordings directory.
    pub root: PathBuf,
    /// `kind = "s3"` (R-ST-1): any S3-compatible store through object_store.
    pub bucket: String,
    /// Empty means AWS itself (`https://s3.{region}.amazonaws.com`).
    pub endpoint: String,
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`) are the default because MinIO, Ceph
    /// RGW and Garage expect them; AWS accepts both.
    pub virtual_hosted_style: bool,
    /// Plain-HTTP endpoints are refused unless this is set.
    pub allow_http: bool,
    /// Empty: taken from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
    /// `AWS_SESSION_TOKEN`, as every S3 tool does.
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// Prepended to every key (`{prefix}/{domain}/{app}/{stream}/…`, R-ST-3).
    pub prefix: String,
    /// Base URL of the stored files, for `video_url` in callbacks and queries.
    pub public_base_url: String,
    /// Multipart part size in bytes (S3 needs ≥ 5 MiB for every part but the last).
    pub part_size: u64,
    /// Uploads running at once, over all streams.
    pub upload_concurrency: usize,
    /// Seconds between retention sweeps (R-ST-5).
    pub retention_sweep_interval: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            kind: "local".into(),
            root: PathBuf::from("./recordings"),
            bucket: String::new(),
            endpoint: String::new(),
            region: "us-east-1".into(),
            virtual_hosted_style: false,
            allow_http: false,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            session_token: String::new(),
            prefix: String::new(),
            public_base_url: String::new(),
            part_size: 8 << 20,
            upload_concurrency: 8,
            retention_sweep_interval: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    /// Seconds an open file's bytes may wait in memory before they are written to the
    /// kernel: what a `kill -9` can cost at any bitrate (issue 11, R-ST-4).
    pub flush_interval: f64,
    /// Threads doing the sink's file work: spool files, local stores, playlists
    /// (`sink/spool_io.rs`); 0 = as many as the cores, at least 4.
    pub io_threads: usize,
    /// Whether spool files are written around the page cache with `O_DIRECT`
    /// (`sink/spool_write.rs`, issue 17).
    pub direct_io: DirectIo,
}

/// `[spool] direct_io`: `"auto"` writes around the page cache when the files are stored
/// locally (nothing reads them back) and through it with S3 (the uploader reads each
/// spool file as it grows); `"on"` and `"off"` force it.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DirectIo {
    #[default]
    Auto,
    On,
    Off,
}

impl DirectIo {
    /// Whether spool files are written directly, given whether storage is local.
    pub fn applies(self, local_storage: bool) -> bool {
        match self {
            Self::Auto => local_storage,
            Self::On => true,
            Self::Off => false,
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./spool"),
            max_bytes: 10 << 30,
            flush_interval: 1.0,
            io_threads: 0,
            direct_io: DirectIo::Auto,
        }
    }
}

impl SpoolConfig {
    /// The spool's write threads. A flush is a page-cache copy, which more threads than
    /// cores cannot speed up; at least 4, so a write held in the kernel's dirty-page
    /// throttling does not hold up every other file.
    pub fn io_threads(&self) -> usize {
        if self.io_threads > 0 {
            return self.io_threads;
        }
        default_io_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// `flush_interval` as a duration; validation keeps it within 0.1..=10 s, and an
    /// unvalidated value out of that range is clamped into it rather than panicking.
    pub fn flush_interval(&self) -> std::time::Duration {
        let s = self.flush_interval;
        let s = if s.is_finite() {
            s.clamp(0.1, 10.0)
        } else {
            1.0
        };
        std::time::Duration::from_secs_f64(s)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordConfig {
    /// Template for streams no rule matches; -1 records nothing.
    pub default_template: i64,
    /// A file is cut at `hard_cap_factor × record_interval` even without a keyframe (R-SG-2).
    pub hard_cap_factor: f64,
    /// Time zone of the `{Start…}`/`{End…}` name fields (R-ST-3): `UTC` or `+HH:MM`.
    pub time_zone: String,
    /// Limits on templates and rules (R-TP-4).
    pub max_templates: usize,
    pub max_rules: usize,
    /// Record tasks overlapping one window on one stream (R-TK-5).
    pub max_tasks_per_stream: usize,
    /// Seconds a finished or stopped task stays readable after its `end_time`; then it is
    /// removed from memory and the state store, so tasks do not pile up forever.
    pub task_history: u64,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            default_template: 0,
            hard_cap_factor: 2.0,
            time_zone: "UTC".into(),
            max_templates: 50,
            max_rules: 50,
            max_tasks_per_stream: 10,
            task_history: 7 * 86_400,
        }
    }
}

impl Config {
    /// `[record] time_zone` in seconds east of UTC (validated at load).
    pub fn utc_offset_s(&self) -> i32 {
        record::naming::parse_offset(&self.record.time_zone).unwrap_or(0)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Media the per-stream ring keeps, in seconds (whole GOPs; R-IN-7).
    pub ring_seconds: f64,
    /// Byte bound of the per-stream ring, even inside one GOP (R-IN-7); the connection
    /// pauses its publisher while a recorder is more than half of it behind.
    pub ring_max_bytes: usize,
    /// Seconds a publisher stays paused (its socket unread, backpressure) while its
    /// recorders make no progress at all; then reading resumes and the stalled recorder
    /// loses the gap (issue 12, "Backpressure before loss").
    pub stall_timeout: u64,
    /// Seconds a track's timestamps may step forward before it counts as a new timeline
    /// (R-IN-6): ingest then rebases what follows so every file stays monotonic.
    pub max_timestamp_jump: f64,
    /// Seconds a recording's first file waits for a track that is announced (or may
    /// still come) before it starts without it (issue 12).
    pub track_wait: f64,
    /// Seconds a publishing connection lets media gather in its socket after a short
    /// read before it reads again (issue 17): one read per interval instead of one per
    /// frame. 0 = read as data arrives.
    pub read_interval: f64,
    /// Lanes of the read grid (issue 17): connections read at `read_lanes` different
    /// instants of each interval, so streams started together do not close their files,
    /// and queue their uploads, all in the same instant. 1 = one instant for all (least
    /// CPU, burstiest uploads).
    pub read_lanes: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            ring_seconds: 2.0,
            ring_max_bytes: 16 << 20,
            stall_timeout: 10,
            max_timestamp_jump: 10.0,
            track_wait: 2.0,
            read_interval: 0.1,
            read_lanes: 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. "info" or "liverec=debug"; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// A recording template (R-TP-1): which formats a stream records and how. The same shape
/// in the file and over the API (R-TP-5), where it is stored as JSON.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub id: i64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub flv: Option<FormatConfig>,
    #[serde(default)]
    pub hls: Option<FormatConfig>,
    #[serde(default)]
    pub mp4: Option<FormatConfig>,
    #[serde(default)]
    pub aac: Option<FormatConfig>,
    /// Where this template's recordings send their callbacks, instead of
    /// `[callback] url` (R-CB-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// Templates and rules made over the API, kept apart from the file's so a reload can
/// merge them again. Rules are keyed by their API id.
#[derive(Debug, Clone, Default)]
pub struct ApiItems {
    pub templates: BTreeMap<i64, Template>,
    pub rules: BTreeMap<String, Rule>,
}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub rtmp_listen: SocketAddr,
    pub api_listen: SocketAddr,
    /// `[rtmps]`: its address and the TLS configuration its files made.
    pub rtmps: Option<(
        SocketAddr,
        std::sync::Arc<tokio_rustls::rustls::ServerConfig>,
    )>,
}

impl Loaded {
    /// The file's config with the API's templates and rules added after the file's,
    /// validated as one (ids, rule keys, limits, formats: the same checks as the file's).
    pub fn merged(file: &Loaded, api: &ApiItems) -> Result<Loaded, Vec<ConfigError>> {
        let mut c = file.config.clone();
        c.templates.extend(api.templates.values().cloned());
        c.rules.extend(api.rules.values().cloned());
        // API items have no line; problems in the file's part were caught at its load.
        checked(c, |_| None)
    }

    /// What a stream no rule matches records (the default template).
    #[cfg(test)]
    pub fn plans(&self) -> (Vec<Plan>, String) {
        self.template_plans(self.config.record.default_template)
    }

    /// The rule that applies to a stream (R-TP-3): the most specific match; none = the
    /// default template. Returns the template id and a description for the log.
    pub fn template_for(&self, id: &StreamId) -> (i64, String) {
        self.config
            .rules
            .iter()
            .filter_map(|r| r.priority(id).map(|p| (p, r)))
            .min_by_key(|(p, _)| *p)
            .map(|(p, r)| {
                (
                    r.template_id,
                    format!(
                        "rule domain={} app={} stream={} (priority {p})",
                        r.domain,
                        if r.app.is_empty() { "*" } else { &r.app },
                        if r.stream.is_empty() { "*" } else { &r.stream }
                    ),
                )
            })
            .unwrap_or_else(|| {
                (
                    self.config.record.default_template,
                    "record.default_template".into(),
                )
            })
    }

    /// What a stream records: the plans of the template its rule (or the default) names.
    pub fn plans_for(&self, stream: &StreamId) -> (Vec<Plan>, String) {
        let (id, why) = self.template_for(stream);
        let (plans, name) = self.template_plans(id);
        (plans, format!("{name} by {why}"))
    }

    /// The template with this id, from the file or the API.
    pub fn template(&self, id: i64) -> Option<&Template> {
        self.config.templates.iter().find(|t| t.id == id)
    }

    /// The plans of template `id` (0 = built in, negative = record nothing).
    pub fn template_plans(&self, id: i64) -> (Vec<Plan>, String) {
        let factor = self.config.record.hard_cap_factor;
        if id < 0 {
            return (Vec::new(), "-1 (record nothing)".into());
        }
        if let Some(t) = self.template(id) {
            let plans = [
                (record::Format::Flv, &t.flv),
                (record::Format::Mp4, &t.mp4),
                (record::Format::Hls, &t.hls),
                (record::Format::Aac, &t.aac),
            ]
            .into_iter()
            .filter_map(|(format, f)| {
                f.as_ref()
                    .filter(|f| f.enable)
                    .map(|f| Plan::new(format, f, factor))
            })
            .collect();
            // An unnamed template is its id alone, not `1 ()`.
            let name = if t.name.is_empty() {
                id.to_string()
            } else {
                format!("{id} ({})", t.name)
            };
            return (plans, name);
        }
        (vec![Plan::builtin(factor)], "0 (built-in)".to_string())
    }
}

/// Loads `path`, or the embedded defaults when `path` is None.
pub fn load(path: Option<&Path>) -> Result<Loaded, Vec<ConfigError>> {
    match path {
        None => checked(Config::default(), |_| None),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                vec![ConfigError {
                    location: None,
                    message: format!("cannot read config file {}: {e}", p.display()),
                }]
            })?;
            parse(&text, Some(p))
        }
    }
}

pub fn parse(text: &str, source: Option<&Path>) -> Result<Loaded, Vec<ConfigError>> {
    let file = source
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<config>".into());
    let at = |line: Option<usize>| {
        line.map(|line| Location {
            file: file.clone(),
            line,
        })
    };
    let config: Config = toml::from_str(text).map_err(|e| {
        vec![ConfigError {
            location: at(e.span().map(|s| source::line_of(text, s.start))),
            message: e.message().to_string(),
        }]
    })?;
    let lines = source::Lines::parse(text);
    checked(config, |key| at(lines.line(key)))
}

/// Validates `config`, placing each problem with `locate`.
fn checked(
    config: Config,
    locate: impl Fn(&validate::Key) -> Option<Location>,
) -> Result<Loaded, Vec<ConfigError>> {
    let mut config = config;
    // Files the config names are read now, so a reload re-reads them and a bad one is
    // refused with its line like any other error.
    let mut file_problems = validate::load_key_files(&mut config);
    let rtmps = validate::load_tls(&config).map_err(|p| file_problems.extend(p));
    let checked = match (validate::check(&config), rtmps) {
        (Ok(listens), Ok(rtmps)) if file_problems.is_empty() => Ok((listens, rtmps)),
        (Ok(_), _) => Err(file_problems),
        (Err(mut p), _) => {
            p.extend(file_problems);
            Err(p)
        }
    };
    match checked {
        Ok(((rtmp_listen, api_listen), rtmps)) => Ok(Loaded {
            config,
            rtmp_listen,
            api_listen,
            rtmps,
        }),
        Err(problems) => Err(problems
            .into_iter()
            .map(|p| ConfigError {
                location: locate(&p.key),
                message: p.message,
            })
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use media::Millis;

    #[test]
    fn spool_io_threads_default_to_the_cores_at_least_four_and_a_setting_wins() {
        assert_eq!(default_io_threads(1), 4);
        assert_eq!(default_io_threads(2), 4);
        assert_eq!(default_io_threads(16), 16);
        let l = parse("[spool]\nio_threads = 2\n", None).unwrap();
        assert_eq!(l.config.spool.io_threads(), 2);
        assert!(load(None).unwrap().config.spool.io_threads() >= 4);
        let e = parse("[spool]\nio_threads = 5000\n", None).unwrap_err();
        assert!(
            e[0].message.contains("spool.io_threads") && e[0].message.contains("1024"),
            "{e:?}"
        );
    }

    #[test]
    fn worker_threads_default_to_half_the_cores_and_a_setting_wins() {
        assert_eq!(default_worker_threads(1), 1);
        assert_eq!(default_worker_threads(2), 1);
        assert_eq!(default_worker_threads(3), 1);
        assert_eq!(default_worker_threads(16), 8);
        let set = RuntimeConfig { worker_threads: 3 };
        assert_eq!(set.threads(), 3);
    }

    #[test]
    fn embedded_defaults_match_the_spec() {
        let l = load(None).unwrap();
        assert_eq!(l.rtmp_listen, "0.0.0.0:1935".parse().unwrap());
        assert_eq!(l.api_listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(l.config.storage.root, PathBuf::from("./recordings"));
        let (plans, _) = l.plans();
        assert_eq!(plans.len(), 1);
        let plan = &plans[0];
        assert_eq!(plan.format, record::Format::Flv);
        assert_eq!(plan.record_interval_ms, Millis::from_ms(1_800_000));
        assert_eq!(plan.hard_cap_ms, Millis::from_ms(3_600_000));
    }

    /// Issue 14, fuzzing the TOML loader: whatever bytes the file holds — the example
    /// config cut short and with bytes overwritten, or arbitrary text — loading answers
    /// a config or errors, never a panic. (A property test rather than a cargo-fuzz
    /// target: the loader lives in the daemon's binary crate, which has no library for a
    /// fuzz crate to link.)
    #[test]
    fn the_loader_never_panics_on_mangled_configs() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config as RunnerConfig, TestRunner};
        let example = include_str!("../../config.example.toml").as_bytes();
        let mut runner = TestRunner::new(RunnerConfig {
            cases: 3000,
            failure_persistence: None,
            ..RunnerConfig::default()
        });
        let mangled = (
            0..=example.len(),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        );
        runner
            .run(&mangled, |(cut, flips)| {
                let mut b = example[..cut].to_vec();
                for (i, v) in flips {
                    if !b.is_empty() {
                        let n = b.len();
                        b[i % n] = v;
                    }
                }
                let _ = parse(&String::from_utf8_lossy(&b), None);
                Ok(())
            })
            .expect("mangled example");
        runner
            .run(&"\\PC{0,400}", |text| {
                let _ = parse(&text, None);
                Ok(())
            })
            .expect("arbitrary text");
        // Tables in odd shapes, which random text rarely builds.
        for text in [
            "[callback]\nevents = [99999999999]\n",
            "[[publish_auth]]\ndomain = \"\"\ntx_secret_keys = [\"\"]\n",
            "[rtmps]\nlisten = \"x\"\ncert = \"\"\nkey = \"\"\n",
            "[[template]]\nid = -9223372036854775808\nflv = { enable = true, record_interval = 18446744073709551615 }\n",
            "[ingest]\nring_seconds = nan\ntrack_wait = inf\n",
            "[record]\nhard_cap_factor = -0.0\n",
        ] {
            let _ = parse(text, None);
        }
    }

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        let e = parse("[rtmp]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n", None).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].location.as_ref().unwrap().line, 3);
        assert!(e[0].message.contains("lisen"), "{}", e[0].message);
    }

    #[test]
    fn semantic_errors_carry_lines() {
        let text = "[rtmp]\nlisten = \"nope\"\n\n[api]\nlisten = \"0.0.0.0:8080\"\n";
        let e = parse(text, None).unwrap_err();
        let lines: Vec<usize> = e
            .iter()
            .map(|e| e.location.as_ref().unwrap().line)
            .collect();
        assert_eq!(lines, vec![2, 5]);
        assert!(e[1].message.contains("token"));
    }

    /// `[ingest] key = bad` is refused with one error naming the key, on its line.
    fn assert_ingest_value_refused_with_its_line(key: &str, bad: &str) {
        let text = format!("[ingest]\nring_seconds = 2.0\n{key} = {bad}\n");
        let e = parse(&text, None).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].location.as_ref().unwrap().line, 3);
        assert!(
            e[0].message.contains(&format!("ingest.{key}")),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn stall_timeout_is_checked_with_its_line() {
        assert_eq!(load(None).unwrap().config.ingest.stall_timeout, 10);
        for bad in ["0", "601"] {
            assert_ingest_value_refused_with_its_line("stall_timeout", bad);
        }
        let l = parse("[ingest]\nstall_timeout = 600\n", None).unwrap();
        assert_eq!(l.config.ingest.stall_timeout, 600);
    }

    #[test]
    fn read_interval_is_checked_with_its_line() {
        assert_eq!(load(None).unwrap().config.ingest.read_interval, 0.1);
        for bad in ["-0.1", "1.5", "nan"] {
            assert_ingest_value_refused_with_its_line("read_interval", bad);
        }
        let l = parse("[ingest]\nread_interval = 0\n", None).unwrap();
        assert_eq!(l.config.ingest.read_interval, 0.0);
    }

    #[test]
    fn read_lanes_is_checked_with_its_line() {
        assert_eq!(load(None).unwrap().config.ingest.read_lanes, 4);
        for bad in ["0", "101"] {
            assert_ingest_value_refused_with_its_line("read_lanes", bad);
        }
        let l = parse("[ingest]\nread_lanes = 1\n", None).unwrap();
        assert_eq!(l.config.ingest.read_lanes, 1);
    }

    #[test]
    fn direct_io_takes_auto_on_off_and_auto_means_local_storage_only() {
        assert_eq!(load(None).unwrap().config.spool.direct_io, DirectIo::Auto);
        for (text, want) in [
            ("auto", DirectIo::Auto),
            ("on", DirectIo::On),
            ("off", DirectIo::Off),
        ] {
            let l = parse(&format!("[spool]\ndirect_io = \"{text}\"\n"), None).unwrap();
            assert_eq!(l.config.spool.direct_io, want);
        }
        let e = parse(
            "[spool]\nmax_bytes = 1000000000\ndirect_io = \"yes\"\n",
            None,
        )
        .unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].location.as_ref().unwrap().line, 3, "{e:?}");
        assert!(e[0].message.contains("auto"), "{}", e[0].message);
        // Local storage reads nothing back; the S3 uploader reads each spool file.
        assert!(DirectIo::Auto.applies(true) && !DirectIo::Auto.applies(false));
        assert!(DirectIo::On.applies(false) && !DirectIo::Off.applies(true));
    }

    #[test]
    fn storage_errors_name_their_line() {
        let text = "[storage]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:9000\"\nprefix = \"a/../b\"\npart_size = 1024\n[record]\ntime_zone = \"Europe/Paris\"\n";
        let e = parse(text, None).unwrap_err();
        let found: Vec<(usize, &str)> = e
            .iter()
            .map(|e| (e.location.as_ref().unwrap().line, e.message.as_str()))
            .collect();
        let has =
            |line: usize, word: &str| found.iter().any(|(l, m)| *l == line && m.contains(word));
        assert!(has(2, "needs storage.bucket"), "{found:?}");
        assert!(has(3, "allow_http"), "{found:?}");
        assert!(has(4, "prefix"), "{found:?}");
        assert!(has(5, "part_size"), "{found:?}");
        assert!(has(7, "time_zone"), "{found:?}");
        let ok = "[storage]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\nprefix = \"/rec/\"\n[record]\ntime_zone = \"+08:00\"\n";
        let l = parse(ok, None).unwrap();
        assert_eq!(l.config.utc_offset_s(), 8 * 3600);
    }

    #[test]
    fn rules_apply_by_priority_at_publish_time() {
        // Templates: 1..=4 record FLV with interval = their id; 9 records nothing.
        let mut text = String::from("[record]\ndefault_template = 0\n");
        for id in 1..=4 {
            text += &format!("[[template]]\nid = {id}\nname = \"t{id}\"\nflv = {{ enable = true, record_interval = {id} }}\n");
        }
        text += "[[template]]\nid = 9\nname = \"off\"\nflv = { enable = false }\n";
        for (d, a, st, t) in [
            ("d", "live", "cam", 1),
            ("d", "", "cam", 2),
            ("d", "live", "", 3),
            ("d", "", "", 4),
            ("d", "", "quiet", 9),
            ("e", "live", "", 9),
        ] {
            text += &format!("[[rule]]\ndomain = \"{d}\"\n");
            if !a.is_empty() {
                text += &format!("app = \"{a}\"\n");
            }
            if !st.is_empty() {
                text += &format!("stream = \"{st}\"\n");
            }
            text += &format!("template_id = {t}\n");
        }
        let l = parse(&text, None).unwrap();
        let interval = |d: &str, a: &str, s: &str| -> Option<i64> {
            let (plans, _) = l.plans_for(&StreamId::new(d, a, s));
            plans.first().map(|p| p.record_interval_ms.as_ms() / 1000)
        };
        // (domain, app, stream) -> FLV interval (= template id), None = not recorded.
        let table: &[(&str, &str, &str, Option<i64>)] = &[
            ("d", "live", "cam", Some(1)),  // 1: domain+app+stream beats everything
            ("d", "other", "cam", Some(2)), // 2: domain+stream beats domain+app
            ("d", "live", "x", Some(3)),    // 3: domain+app
            ("d", "other", "x", Some(4)),   // 4: domain only
            ("d", "live", "quiet", None),   // 2 (an exclusion template) beats 3
            ("e", "live", "x", None),       // exclusion template: nothing enabled
            ("e", "vod", "x", Some(1800)),  // no rule: default template 0 (built in)
            ("z", "live", "cam", Some(1800)),
        ];
        for &(d, a, s, want) in table {
            assert_eq!(interval(d, a, s), want, "{d}/{a}/{s}");
        }
        // Record nothing by default when configured so.
        let text2 = text.replace("default_template = 0", "default_template = -1");
        let l2 = parse(&text2, None).unwrap();
        assert!(l2
            .plans_for(&StreamId::new("z", "live", "cam"))
            .0
            .is_empty());
    }

    #[test]
    fn spool_flush_interval_is_checked_with_its_line() {
        let l = parse("[spool]\nflush_interval = 0.25\n", None).unwrap();
        assert_eq!(
            l.config.spool.flush_interval(),
            std::time::Duration::from_millis(250)
        );
        assert_eq!(
            load(None).unwrap().config.spool.flush_interval(),
            std::time::Duration::from_secs(1)
        );
        for bad in ["0.05", "10.5", "0", "-1", "nan"] {
            let text = format!("[spool]\nmax_bytes = 1000000\nflush_interval = {bad}\n");
            let e = parse(&text, None).unwrap_err();
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert_eq!(e[0].location.as_ref().map(|l| l.line), Some(3), "{bad}");
            assert!(
                e[0].message.contains("spool.flush_interval") && e[0].message.contains("0.1..=10"),
                "{}",
                e[0].message
            );
        }
    }

    #[test]
    fn rule_errors() {
        let t = "[[template]]\nid = 1\nflv = { enable = true }\n";
        let dup = format!("{t}[[rule]]\ndomain = \"d\"\napp = \"a\"\ntemplate_id = 1\n[[rule]]\ndomain = \"d\"\napp = \"a\"\ntemplate_id = 0\n");
        let e = parse(&dup, None).unwrap_err();
        assert!(
            e.iter().any(|e| e.message.contains("already exists")),
            "{e:?}"
        );
        let unknown = format!("{t}[[rule]]\ndomain = \"d\"\ntemplate_id = 7\n");
        let e = parse(&unknown, None).unwrap_err();
        assert!(e[0].message.contains("names no template"), "{e:?}");
        let bad = format!("{t}[[rule]]\ndomain = \"d/x\"\ntemplate_id = 1\n");
        assert!(parse(&bad, None).is_err());
        let mut many = format!("[record]\nmax_rules = 2\n{t}");
        for i in 0..3 {
            many += &format!("[[rule]]\ndomain = \"d{i}\"\ntemplate_id = 1\n");
        }
        let e = parse(&many, None).unwrap_err();
        assert!(
            e[0].message.contains("at most record.max_rules = 2"),
            "{e:?}"
        );
        assert_eq!(e[0].location.as_ref().map(|l| l.line), Some(12));
    }

    #[test]
    fn template_selects_flv_interval() {
        let text = "[record]\ndefault_template = 7\n[[template]]\nid = 7\nflv = { enable = true, record_interval = 5 }\n";
        let l = parse(text, None).unwrap();
        assert_eq!(l.plans().0[0].record_interval_ms, Millis::from_ms(5000));
        let none = parse("[record]\ndefault_template = -1\n", None).unwrap();
        assert!(none.plans().0.is_empty());
        let both = parse("[record]\ndefault_template = 3\n[[template]]\nid = 3\nflv = { enable = true, record_interval = 5 }\naac = { enable = true, record_interval = 7 }\n", None).unwrap();
        let formats: Vec<_> = both
            .plans()
            .0
            .iter()
            .map(|p| (p.format, p.record_interval_ms.as_ms()))
            .collect();
        assert_eq!(
            formats,
            vec![(record::Format::Flv, 5000), (record::Format::Aac, 7000)]
        );
        // Splicing windows up to 30 minutes (R-SP-1).
        parse(
            "[[template]]\nid = 4\nhls = { enable = true, continue_timeout = 30 }\nflv = { enable = true, continue_timeout = 1800 }\n",
            None,
        )
        .unwrap();
        let e = parse(
            "[[template]]\nid = 4\nhls = { enable = true, continue_timeout = 1801 }\n",
            None,
        )
        .unwrap_err();
        assert_eq!(e[0].location.as_ref().unwrap().line, 3);
        assert!(
            e[0].message.contains("continue_timeout"),
            "{}",
            e[0].message
        );
        let e = parse(
            "[[template]]\nid = 5\nhls = { enable = true, segment_duration = 0.1 }\n",
            None,
        )
        .unwrap_err();
        assert!(
            e[0].message.contains("segment_duration"),
            "{}",
            e[0].message
        );
        let hls = parse("[record]\ndefault_template = 6\n[[template]]\nid = 6\nhls = { enable = true, segment_duration = 4 }\n", None).unwrap();
        assert_eq!(hls.plans().0[0].format, record::Format::Hls);
        assert_eq!(hls.plans().0[0].segment_ms, Millis::from_ms(4000));
        let e = parse(
            "[[template]]\nid = 2\nflv = { enable = true, record_interval = 0 }\n",
            None,
        )
        .unwrap_err();
        assert_eq!(e[0].location.as_ref().unwrap().line, 3);
        let e = parse("[record]\ndefault_template = 9\n", None).unwrap_err();
        assert!(e[0].message.contains("names no template"));
    }

    #[test]
    fn api_items_are_checked_with_the_file_and_have_no_line() {
        let file = parse("[[template]]\nid = 1\nflv = { enable = true }\n", None).unwrap();
        let mut api = ApiItems::default();
        api.rules.insert(
            "d~~".into(),
            Rule {
                domain: "d".into(),
                app: String::new(),
                stream: String::new(),
                template_id: 7,
            },
        );
        let e = Loaded::merged(&file, &api).unwrap_err();
        assert!(e[0].message.contains("names no template"), "{e:?}");
        assert!(e[0].location.is_none(), "{e:?}");
        api.templates.insert(
            7,
            Template {
                id: 7,
                name: "api".into(),
                flv: None,
                hls: None,
                mp4: None,
                aac: None,
                callback_url: None,
            },
        );
        let merged = Loaded::merged(&file, &api).unwrap();
        assert_eq!(merged.template_for(&StreamId::new("d", "a", "s")).0, 7);
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../config.example.toml");
        parse(text, Some(Path::new("config.example.toml"))).unwrap();
    }
}

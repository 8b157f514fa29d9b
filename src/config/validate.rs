//! Checks a config model as a whole (R-OP-1): values in range, names valid, ids unique,
//! references resolved, limits kept (R-TP-4). Each problem names the key it is about, so
//! loading can point at its line; the same checks run on the file alone and on the file
//! merged with the API's templates and rules.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use super::Config;
use crate::model::validate_name;

/// One step of a key path: a table key or an array index (`template[2].hls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg {
    Name(&'static str),
    Index(usize),
}

/// The path of the key a problem is about, e.g. `rtmp.listen` or `rule[3].template_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(pub Vec<Seg>);

impl Key {
    /// A dotted path of table keys: `Key::at("storage.part_size")`.
    fn at(path: &'static str) -> Key {
        Key(path.split('.').map(Seg::Name).collect())
    }

    /// An element of an array of tables, optionally one of its keys.
    fn item(array: &'static str, index: usize, key: Option<&'static str>) -> Key {
        let mut v = vec![Seg::Name(array), Seg::Index(index)];
        v.extend(key.map(Seg::Name));
        Key(v)
    }
}

#[derive(Debug, Clone)]
pub struct Problem {
    pub key: Key,
    pub message: String,
}

/// The listen addresses (parsed once here) or every problem found.
pub fn check(config: &Config) -> Result<(SocketAddr, SocketAddr), Vec<Problem>> {
    let mut problems = Vec::new();
    let mut err = |key: Key, message: String| problems.push(Problem { key, message });

    let mut addr = |s: &str, key: &'static str| {
        s.parse::<SocketAddr>().map_err(|e| {
            err(
                Key::at(key),
                format!("{key} = {s:?} is not an address:port ({e})"),
            )
        })
    };
    let rtmp_listen = addr(&config.rtmp.listen, "rtmp.listen");
    let api_listen = addr(&config.api.listen, "api.listen");
    if let Ok(a) = &api_listen {
        if !a.ip().is_loopback() && config.api.token.is_empty() {
            err(
                Key::at("api.listen"),
                format!("api.listen = {a} is not loopback, so api.token must be set (R-OP-4)"),
            );
        }
    }
    check_rtmp(config, &mut err);
    check_storage(config, &mut err);
    check_spool(config, &mut err);
    check_record(config, &mut err);
    check_callback(config, &mut err);
    check_cluster(config, &mut err);
    check_publish_auth(config, &mut err);
    let template_ids = check_templates(config, &mut err);
    check_rules(config, &template_ids, &mut err);
    if !problems.is_empty() {
        return Err(problems);
    }
    match (rtmp_listen, api_listen) {
        (Ok(r), Ok(a)) => Ok((r, a)),
        // A failed parse pushed a problem above; kept total for the type.
        _ => Err(vec![Problem {
            key: Key::at("rtmp.listen"),
            message: "invalid listen address".into(),
        }]),
    }
}

type Err<'a> = dyn FnMut(Key, String) + 'a;

fn check_rtmp(config: &Config, err: &mut Err<'_>) {
    let r = &config.rtmp;
    if validate_name(&r.default_domain).is_err() {
        err(
            Key::at("rtmp.default_domain"),
            format!(
                "rtmp.default_domain = {:?} must be 1-128 bytes of [A-Za-z0-9._-]",
                r.default_domain
            ),
        );
    }
    for (i, d) in r.domains.iter().enumerate() {
        if validate_name(d).is_err() {
            err(
                Key(vec![Seg::Name("rtmp"), Seg::Name("domains"), Seg::Index(i)]),
                format!("rtmp.domains entry {d:?} is not a valid domain name"),
            );
        }
    }
    if !(4096..=(16 << 20)).contains(&r.max_message_bytes) {
        err(
            Key::at("rtmp.max_message_bytes"),
            format!(
                "rtmp.max_message_bytes = {} must be 4096..=16777216 (RTMP lengths are 24-bit)",
                r.max_message_bytes
            ),
        );
    }
    if !(128..=65536).contains(&r.chunk_size) {
        err(
            Key::at("rtmp.chunk_size"),
            format!("rtmp.chunk_size = {} must be 128..=65536", r.chunk_size),
        );
    }
    for (key, v) in [
        ("rtmp.handshake_timeout", r.handshake_timeout),
        ("rtmp.idle_timeout", r.idle_timeout),
    ] {
        if v == 0 {
            err(Key::at(key), format!("{key} must be at least 1 second"));
        }
    }
}

fn check_cluster(config: &Config, err: &mut Err<'_>) {
    let Some(c) = &config.cluster else { return };
    // Leases and task ids rely on the store's conditional writes (If-None-Match,
    // If-Match), which only the S3 backend offers to several machines.
    if config.storage.kind != "s3" {
        err(
            Key::at("cluster"),
            "[cluster] needs storage.kind = \"s3\": the nodes share one bucket (its conditional writes hold the stream leases)".into(),
        );
    }
    if !c.node_id.is_empty() && crate::model::validate_name(&c.node_id).is_err() {
        err(
            Key::at("cluster.node_id"),
            format!(
                "cluster.node_id = {:?} must be 1-128 bytes of [A-Za-z0-9._-] (it names objects in the bucket)",
                c.node_id
            ),
        );
    }
    if c.sync_interval == 0 || c.sync_interval > 300 {
        err(
            Key::at("cluster.sync_interval"),
            format!(
                "cluster.sync_interval = {} must be 1-300 seconds",
                c.sync_interval
            ),
        );
    }
    // Renewed every third of it: below 3 s a renewal would be due more than once a second.
    if c.lease_ttl < 3 || c.lease_ttl > 600 {
        err(
            Key::at("cluster.lease_ttl"),
            format!("cluster.lease_ttl = {} must be 3-600 seconds", c.lease_ttl),
        );
    }
    if c.orphan_after < c.lease_ttl {
        err(
            Key::at("cluster.orphan_after"),
            format!(
                "cluster.orphan_after = {} must be at least cluster.lease_ttl ({})",
                c.orphan_after, c.lease_ttl
            ),
        );
    }
}

fn check_storage(config: &Config, err: &mut Err<'_>) {
    let st = &config.storage;
    match st.kind.as_str() {
        "local" => {}
        "s3" => {
            if st.bucket.is_empty() {
                err(
                    Key::at("storage.kind"),
                    "storage.kind = \"s3\" needs storage.bucket".into(),
                );
            }
            let e = &st.endpoint;
            if e.starts_with("http://") && !st.allow_http {
                err(
                    Key::at("storage.endpoint"),
                    format!("storage.endpoint = {e:?} is plain HTTP: set storage.allow_http = true to allow it"),
                );
            } else if !e.is_empty() && !e.starts_with("http://") && !e.starts_with("https://") {
                err(
                    Key::at("storage.endpoint"),
                    format!("storage.endpoint = {e:?} must start with http:// or https://"),
                );
            }
        }
        other => err(
            Key::at("storage.kind"),
            format!("storage.kind = {other:?}: expected \"local\" or \"s3\""),
        ),
    }
    let prefix = st.prefix.trim_matches('/');
    if !prefix.is_empty() && object_store::path::Path::parse(prefix).is_err() {
        err(
            Key::at("storage.prefix"),
            format!("storage.prefix = {prefix:?} is not a valid key prefix (no empty, '.' or '..' segments)"),
        );
    }
    // S3 refuses parts under 5 MiB (except the last) and allows at most 10 000 parts.
    if !((5 << 20)..=(5u64 << 30)).contains(&st.part_size) {
        err(
            Key::at("storage.part_size"),
            format!(
                "storage.part_size = {} must be 5 MiB..=5 GiB (S3 limits)",
                st.part_size
            ),
        );
    }
    if st.retention_sweep_interval == 0 {
        err(
            Key::at("storage.retention_sweep_interval"),
            "storage.retention_sweep_interval must be at least 1 second".into(),
        );
    }
    if !(1..=256).contains(&st.upload_concurrency) {
        err(
            Key::at("storage.upload_concurrency"),
            format!(
                "storage.upload_concurrency = {} must be 1..=256",
                st.upload_concurrency
            ),
        );
    }
}

fn check_spool(config: &Config, err: &mut Err<'_>) {
    // Below 0.1 s the writes per stream grow for little gain; above 10 s a crash loses
    // more than "about a second" was meant to allow (issue 11).
    let f = config.spool.flush_interval;
    if !(f.is_finite() && (0.1..=10.0).contains(&f)) {
        err(
            Key::at("spool.flush_interval"),
            format!("spool.flush_interval = {f} must be 0.1..=10 seconds"),
        );
    }
    let t = config.spool.io_threads;
    if t > 1024 {
        err(
            Key::at("spool.io_threads"),
            format!("spool.io_threads = {t} must be 0 (as many as the cores, at least 4) to 1024"),
        );
    }
}

fn check_record(config: &Config, err: &mut Err<'_>) {
    let rc = &config.record;
    if rc.task_history == 0 {
        err(
            Key::at("record.task_history"),
            "record.task_history must be at least 1 second".into(),
        );
    }
    if let Err(e) = record::naming::parse_offset(&rc.time_zone) {
        err(
            Key::at("record.time_zone"),
            format!("record.time_zone = {e}"),
        );
    }
    let f = rc.hard_cap_factor;
    if !(f.is_finite() && f >= 1.0) {
        err(
            Key::at("record.hard_cap_factor"),
            format!("record.hard_cap_factor = {f} must be >= 1.0"),
        );
    }
    let r = config.ingest.ring_seconds;
    if !(r.is_finite() && (0.0..=600.0).contains(&r)) {
        err(
            Key::at("ingest.ring_seconds"),
            format!("ingest.ring_seconds = {r} must be 0..=600"),
        );
    }
    let s = config.ingest.stall_timeout;
    if !(1..=600).contains(&s) {
        err(
            Key::at("ingest.stall_timeout"),
            format!("ingest.stall_timeout = {s} must be 1..=600 (seconds)"),
        );
    }
    let j = config.ingest.max_timestamp_jump;
    if !(j.is_finite() && (1.0..=86_400.0).contains(&j)) {
        err(
            Key::at("ingest.max_timestamp_jump"),
            format!("ingest.max_timestamp_jump = {j} must be 1..=86400 (seconds)"),
        );
    }
    let w = config.ingest.track_wait;
    if !(w.is_finite() && (0.0..=10.0).contains(&w)) {
        err(
            Key::at("ingest.track_wait"),
            format!("ingest.track_wait = {w} must be 0..=10 (seconds)"),
        );
    }
    let i = config.ingest.read_interval;
    if !(i.is_finite() && (0.0..=1.0).contains(&i)) {
        err(
            Key::at("ingest.read_interval"),
            format!("ingest.read_interval = {i} must be 0..=1 (seconds)"),
        );
    }
    let l = config.ingest.read_lanes;
    if !(1..=100).contains(&l) {
        err(
            Key::at("ingest.read_lanes"),
            format!("ingest.read_lanes = {l} must be 1..=100"),
        );
    }
}

/// Checks every template; returns the ids declared.
/// An http(s) URL with a host, or why not.
fn callback_url_problem(u: &str) -> Option<String> {
    match reqwest::Url::parse(u) {
        Err(e) => Some(format!("is not a URL ({e})")),
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            Some("must be an http:// or https:// URL".into())
        }
        Ok(url) if url.host_str().is_none_or(str::is_empty) => Some("has no host".into()),
        Ok(_) => None,
    }
}

const MAX_KEY_FILE_BYTES: u64 = 16 << 20;

/// Reads each `[[publish_auth]]` entry's `stream_keys_file` into its `file_keys`: one key
/// per line, blank lines and `#` comments skipped. A file that cannot be read is a
/// problem of the config (a reload keeps the running one).
pub fn load_key_files(config: &mut Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (i, a) in config.publish_auth.iter_mut().enumerate() {
        let Some(path) = &a.stream_keys_file else {
            continue;
        };
        // Bounded: a key file is lines of keys; a config naming /dev/zero or a huge file
        // gets an error, not a hung load.
        let read = std::fs::File::open(path).and_then(|f| {
            use std::io::Read;
            let mut text = String::new();
            f.take(MAX_KEY_FILE_BYTES + 1).read_to_string(&mut text)?;
            if text.len() as u64 > MAX_KEY_FILE_BYTES {
                return Err(std::io::Error::other(format!(
                    "larger than {MAX_KEY_FILE_BYTES} bytes"
                )));
            }
            Ok(text)
        });
        match read {
            Ok(text) => {
                a.file_keys = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string)
                    .collect();
            }
            Err(e) => problems.push(Problem {
                key: Key::item("publish_auth", i, Some("stream_keys_file")),
                message: format!(
                    "publish_auth stream_keys_file {} cannot be read: {e}",
                    path.display()
                ),
            }),
        }
    }
    problems
}

/// `[rtmps]`: its listen address and the TLS configuration of its certificate and key
/// (read now, so `check-config` and a reload catch a bad file).
#[allow(clippy::type_complexity)]
pub fn load_tls(
    config: &Config,
) -> Result<
    Option<(
        std::net::SocketAddr,
        std::sync::Arc<tokio_rustls::rustls::ServerConfig>,
    )>,
    Vec<Problem>,
> {
    let Some(r) = &config.rtmps else {
        return Ok(None);
    };
    let mut problems = Vec::new();
    let listen = r.listen.parse::<std::net::SocketAddr>().map_err(|e| {
        problems.push(Problem {
            key: Key::at("rtmps.listen"),
            message: format!("rtmps.listen = {:?} is not an address:port ({e})", r.listen),
        })
    });
    let tls = crate::ingest::tls::server_config(&r.cert, &r.key).map_err(|message| {
        problems.push(Problem {
            key: Key::at("rtmps.cert"),
            message,
        })
    });
    match (listen, tls) {
        (Ok(l), Ok(t)) => Ok(Some((l, t))),
        _ => Err(problems),
    }
}

fn check_publish_auth(config: &Config, err: &mut Err<'_>) {
    let mut seen = HashSet::new();
    for (i, a) in config.publish_auth.iter().enumerate() {
        let key = |k: Option<&'static str>| Key::item("publish_auth", i, k);
        if validate_name(&a.domain).is_err() {
            err(
                key(Some("domain")),
                format!(
                    "publish_auth domain {:?} is not a valid domain name",
                    a.domain
                ),
            );
        }
        if !a.app.is_empty() && validate_name(&a.app).is_err() {
            err(
                key(Some("app")),
                format!("publish_auth app {:?} is not a valid app name", a.app),
            );
        }
        if !seen.insert((a.domain.to_ascii_lowercase(), a.app.clone())) {
            err(
                key(Some("domain")),
                format!(
                    "publish_auth for domain {:?} app {:?} is declared twice",
                    a.domain, a.app
                ),
            );
        }
        if a.tx_secret_keys.is_empty()
            && a.stream_keys.is_empty()
            && a.stream_keys_file.is_none()
            && a.on_publish.is_empty()
        {
            err(
                key(None),
                format!(
                    "publish_auth for domain {:?} has no method: set tx_secret_keys, stream_keys, stream_keys_file or on_publish (without an entry anyone may publish)",
                    a.domain
                ),
            );
        }
        for (name, keys) in [
            ("tx_secret_keys", &a.tx_secret_keys),
            ("stream_keys", &a.stream_keys),
        ] {
            if keys.iter().any(String::is_empty) {
                err(
                    key(Some(name)),
                    format!("publish_auth {name} must not contain an empty key"),
                );
            }
        }
        for (name, u) in [
            ("on_publish", &a.on_publish),
            ("on_unpublish", &a.on_unpublish),
        ] {
            if let Some(why) = callback_url_problem(u).filter(|_| !u.is_empty()) {
                err(
                    key(Some(name)),
                    format!("publish_auth {name} = {u:?} {why}"),
                );
            }
        }
        if !(1..=60).contains(&a.on_publish_timeout) {
            err(
                key(Some("on_publish_timeout")),
                format!(
                    "publish_auth on_publish_timeout = {} must be 1..=60 seconds",
                    a.on_publish_timeout
                ),
            );
        }
    }
}

fn check_callback(config: &Config, err: &mut Err<'_>) {
    let c = &config.callback;
    if !c.url.is_empty() {
        if let Some(why) = callback_url_problem(&c.url) {
            err(
                Key::at("callback.url"),
                format!("callback.url = {:?} {why}", c.url),
            );
        }
    }
    if !c.secret.is_empty() {
        if let Err(e) = crate::callback::sign::secret_key(&c.secret) {
            // The secret itself stays out of the message.
            err(Key::at("callback.secret"), format!("callback.secret {e}"));
        }
    }
    for (key, v, range) in [
        ("callback.timeout", c.timeout, 1..=300),
        ("callback.sign_ttl", c.sign_ttl, 1..=86_400 * 365),
        ("callback.max_age", c.max_age, 1..=86_400 * 30),
    ] {
        if !range.contains(&v) {
            err(
                Key::at(key),
                format!(
                    "{key} = {v} must be {}..={} seconds",
                    range.start(),
                    range.end()
                ),
            );
        }
    }
    for (i, e) in c.events.iter().enumerate() {
        if ![100, 332].contains(e) {
            err(
                Key(vec![
                    Seg::Name("callback"),
                    Seg::Name("events"),
                    Seg::Index(i),
                ]),
                format!("callback.events entry {e} is not an event type (100 file, 332 status)"),
            );
        }
    }
}

fn check_templates(config: &Config, err: &mut Err<'_>) -> HashSet<i64> {
    let mut seen = HashSet::new();
    for (i, t) in config.templates.iter().enumerate() {
        let id = t.id;
        let key = |k: Option<&'static str>| Key::item("template", i, k);
        if id <= 0 {
            err(
                key(Some("id")),
                format!("template id {id}: ids from 1 up are yours, 0 is the built-in default"),
            );
        }
        if !seen.insert(id) {
            err(
                key(Some("id")),
                format!("template id {id} is declared twice"),
            );
        }
        if let Some(u) = &t.callback_url {
            if let Some(why) = callback_url_problem(u).filter(|_| !u.is_empty()) {
                err(
                    key(Some("callback_url")),
                    format!("template {id}: callback_url = {u:?} {why}"),
                );
            }
        }
        if let Some(h) = &t.hls {
            if let Some(sd) = h.segment_duration {
                if !(sd.is_finite() && (1.0..=60.0).contains(&sd)) {
                    err(
                        key(Some("hls")),
                        format!(
                            "template {id}: hls segment_duration = {sd} must be 1..=60 seconds"
                        ),
                    );
                }
            }
        }
        for (name, f) in [
            ("flv", &t.flv),
            ("hls", &t.hls),
            ("mp4", &t.mp4),
            ("aac", &t.aac),
        ] {
            let Some(fc) = f else { continue };
            if !(1..=86_400).contains(&fc.record_interval) {
                err(
                    key(Some(name)),
                    format!(
                        "template {id}: record_interval = {} must be 1..=86400 seconds (R-TP-1)",
                        fc.record_interval
                    ),
                );
            }
            if let Some(t) = fc.continue_timeout.filter(|t| *t > 1800) {
                err(
                    key(Some(name)),
                    format!(
                        "template {id}: continue_timeout = {t} must be 0..=1800 seconds (R-SP-1)"
                    ),
                );
            }
            if let Some(p) = &fc.file_name {
                if let Err(e) = record::naming::check_pattern(p) {
                    err(
                        key(Some(name)),
                        format!("template {id}: file_name {p:?}: {e}"),
                    );
                }
            }
        }
    }
    let rc = &config.record;
    let id = rc.default_template;
    if id != 0 && id != -1 && !seen.contains(&id) {
        err(
            Key::at("record.default_template"),
            format!("record.default_template = {id} names no template (0 = built-in, -1 = record nothing)"),
        );
    }
    if config.templates.len() > rc.max_templates {
        err(
            Key::item("template", rc.max_templates, None),
            format!(
                "{} templates: at most record.max_templates = {} (R-TP-4)",
                config.templates.len(),
                rc.max_templates
            ),
        );
    }
    seen
}

fn check_rules(config: &Config, template_ids: &HashSet<i64>, err: &mut Err<'_>) {
    let rc = &config.record;
    if config.rules.len() > rc.max_rules {
        err(
            Key::item("rule", rc.max_rules, None),
            format!(
                "{} rules: at most record.max_rules = {} (R-TP-4)",
                config.rules.len(),
                rc.max_rules
            ),
        );
    }
    let mut keys = HashMap::new();
    for (i, rule) in config.rules.iter().enumerate() {
        let tid = rule.template_id;
        if tid != 0 && !template_ids.contains(&tid) {
            err(
                Key::item("rule", i, Some("template_id")),
                format!("rule template_id = {tid} names no template (0 = built-in)"),
            );
        }
        for (what, v) in [
            ("domain", &rule.domain),
            ("app", &rule.app),
            ("stream", &rule.stream),
        ] {
            let required = what == "domain";
            if (required || !v.is_empty()) && validate_name(v).is_err() {
                err(
                    Key::item("rule", i, None),
                    format!(
                        "rule {what} = {v:?} is not a valid name (1-128 bytes of [A-Za-z0-9._-])"
                    ),
                );
            }
        }
        let key = (
            rule.domain.as_str(),
            rule.app.as_str(),
            rule.stream.as_str(),
        );
        if let Some(first) = keys.insert(key, i) {
            err(
                Key::item("rule", i, None),
                format!(
                    "a rule for domain={} app={:?} stream={:?} already exists (rule {}): one template per key (R-TP-3)",
                    rule.domain,
                    rule.app,
                    rule.stream,
                    first + 1
                ),
            );
        }
    }
}

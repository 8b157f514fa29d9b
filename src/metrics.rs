//! `/metrics` (R-OP-3): the series names and help texts in one place, recorded through the
//! `metrics` facade and rendered by `metrics-exporter-prometheus` (its HTTP listener is
//! left out: the API serves `/metrics`). Subsystems call the small functions below, one
//! line per event; values other subsystems own (spool, queue, tasks…) are set as gauges
//! just before each render rather than kept in step on every change.
//!
//! The daemon installs one process-wide recorder ([`install`]); without one (unit tests
//! of other modules) every call here is a no-op.

use std::time::Instant;

use ::metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

const SPOOL_BYTES: &str = "liverec_spool_bytes";
const SPOOL_MAX_BYTES: &str = "liverec_spool_max_bytes";
const UPLOAD_QUEUE: &str = "liverec_upload_queue";
const REFUSED_SPOOL_FULL: &str = "liverec_publish_refused_spool_full_total";
const STREAMS: &str = "liverec_streams";
const CONNECTIONS_TOTAL: &str = "liverec_connections_total";
const CONNECTIONS: &str = "liverec_connections";
const BYTES_IN: &str = "liverec_bytes_in_total";
const SOCKET_READS: &str = "liverec_ingest_socket_reads_total";
const RECORDINGS_OPEN: &str = "liverec_recordings_open";
const FILES_FINALIZED: &str = "liverec_files_finalized_total";
const FILES_FAILED: &str = "liverec_files_failed_total";
const SPOOL_WRITE_ERRORS: &str = "liverec_spool_write_errors_total";
const TIMESTAMP_JUMPS: &str = "liverec_timestamp_discontinuities_total";
const INDEX_UNPUBLISHED: &str = "liverec_recordings_index_unpublished";
const RECORD_TASKS: &str = "liverec_record_tasks";
const UPLOAD_LATENCY: &str = "liverec_upload_latency_seconds";
const FINALIZE: &str = "liverec_finalize_seconds";
const INGEST_STALLS: &str = "liverec_ingest_stalls_total";
const INGEST_PAUSES: &str = "liverec_ingest_pauses_total";
const RECORDER_LAGS: &str = "liverec_recorder_lags_total";
const PUBLISH_AUTH_REFUSED: &str = "liverec_publish_auth_refused_total";
const CALLBACKS_SENT: &str = "liverec_callbacks_sent_total";
const CALLBACKS_RETRIED: &str = "liverec_callbacks_retried_total";
const CALLBACKS_FAILED: &str = "liverec_callbacks_failed_total";
const CALLBACKS_PENDING: &str = "liverec_callbacks_pending";
const CALLBACKS_FAILED_KEPT: &str = "liverec_callbacks_failed";
const CALLBACK_LATENCY: &str = "liverec_callback_delivery_seconds";

/// Close → stored: milliseconds for the local backend, seconds for S3, minutes when the
/// store was down (past the last bucket such files are only in `+Inf`).
const UPLOAD_LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Flush, patch and hand-off at close: milliseconds normally, seconds on a slow disk.
const FINALIZE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A recorder with this daemon's histogram buckets; without them histograms would be
/// rendered as summaries, which Prometheus cannot aggregate across instances.
pub fn recorder() -> Result<PrometheusRecorder, BuildError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(UPLOAD_LATENCY.into()), UPLOAD_LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(FINALIZE.into()), FINALIZE_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(CALLBACK_LATENCY.into()),
            UPLOAD_LATENCY_BUCKETS,
        )?
        .build_recorder())
}

/// Installs the process-wide recorder (once per process: a second call fails) and
/// returns the handle `/metrics` renders from.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let rec = recorder()?;
    let handle = rec.handle();
    ::metrics::set_global_recorder(rec)?;
    describe();
    Ok(handle)
}

/// Drains the histograms' samples into their buckets once a minute, so a daemon that is
/// never scraped does not keep a sample per stored file (the exporter only does this at
/// render time otherwise).
pub async fn upkeep(handle: PrometheusHandle, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Help texts, and every unlabelled series registered so it renders (as 0) before its
/// first event: scrapers and tests see a counter that has not moved yet.
pub fn describe() {
    for (name, help) in [
        (
            REFUSED_SPOOL_FULL,
            "Publishes refused because the spool was full.",
        ),
        (CONNECTIONS_TOTAL, "RTMP connections accepted."),
        (BYTES_IN, "Bytes read from RTMP connections."),
        (
            SOCKET_READS,
            "Socket reads of RTMP connections ([ingest] read_interval gathers a publisher's frames into fewer).",
        ),
        (FILES_FINALIZED, "Files finalized and handed to storage."),
        (FILES_FAILED, "Files whose finalization failed."),
        (
            SPOOL_WRITE_ERRORS,
            "Spool writes that failed (ENOSPC, EIO, EFBIG): each ended its file early.",
        ),
        (
            INGEST_PAUSES,
            "Times a publisher's socket was left unread because a recorder of its stream was behind (backpressure).",
        ),
        (
            INGEST_STALLS,
            "Publishers paused for recorders that made no progress for [ingest] stall_timeout: reading resumed and the stalled recordings lost the gap.",
        ),
        (
            RECORDER_LAGS,
            "Times a recording fell behind the ring and lost media (after a stall, or a keyframe-less stream over ring_max_bytes): its file ended at the gap.",
        ),
        (
            CALLBACKS_SENT,
            "Callback events an endpoint took (2xx).",
        ),
        (
            CALLBACKS_RETRIED,
            "Callback attempts that failed (non-2xx, timeout, connection error) and were scheduled again.",
        ),
        (
            CALLBACKS_FAILED,
            "Callback events given up after [callback] max_age: kept as failed, listed by GET /v1/callbacks?status=failed.",
        ),
        (
            TIMESTAMP_JUMPS,
            "Encoder timestamp jumps (back, or forward past ingest.max_timestamp_jump) rebased by ingest.",
        ),
    ] {
        describe_counter!(name, help);
        counter!(name).absolute(0);
    }
    for (name, help) in [
        (
            SPOOL_BYTES,
            "Bytes in the spool (open files and files waiting for storage).",
        ),
        (SPOOL_MAX_BYTES, "The spool quota."),
        (
            UPLOAD_QUEUE,
            "Files and playlists waiting for their upload.",
        ),
        (STREAMS, "Streams being published."),
        (CONNECTIONS, "RTMP connections open."),
        (
            RECORDINGS_OPEN,
            "Files being recorded (an HLS recording counts once).",
        ),
        (
            INDEX_UNPUBLISHED,
            "Recordings index changes not yet in the store's catalog.",
        ),
        (RECORD_TASKS, "Record tasks by status."),
        (CALLBACKS_PENDING, "Callback events not yet delivered."),
        (
            CALLBACKS_FAILED_KEPT,
            "Callback events given up and kept for a retry over the API.",
        ),
    ] {
        describe_gauge!(name, help);
    }
    for name in [CONNECTIONS, RECORDINGS_OPEN] {
        gauge!(name).increment(0.0);
    }
    describe_histogram!(
        UPLOAD_LATENCY,
        Unit::Seconds,
        "From a file's close until the store has confirmed it (HLS: each segment and the final playlist; recovered files: from the restart)."
    );
    describe_counter!(
        PUBLISH_AUTH_REFUSED,
        "Publishes refused by [[publish_auth]], by reason (auth_missing, auth_wrong, auth_expired, hook_denied, hook_unreachable)."
    );
    describe_histogram!(
        CALLBACK_LATENCY,
        Unit::Seconds,
        "From an event's creation until an endpoint took it, retries included."
    );
    describe_histogram!(
        FINALIZE,
        Unit::Seconds,
        "Time spent finalizing a file at its close (flush, patches, hand-off to storage)."
    );
}

pub fn connection_opened() {
    counter!(CONNECTIONS_TOTAL).increment(1);
    gauge!(CONNECTIONS).increment(1.0);
}

pub fn connection_closed() {
    gauge!(CONNECTIONS).decrement(1.0);
}

pub fn bytes_in(n: usize) {
    counter!(BYTES_IN).increment(n as u64);
    counter!(SOCKET_READS).increment(1);
}

pub fn ingest_pause() {
    counter!(INGEST_PAUSES).increment(1);
}

pub fn ingest_stall() {
    counter!(INGEST_STALLS).increment(1);
}

pub fn recorder_lagged() {
    counter!(RECORDER_LAGS).increment(1);
}

pub fn callback_sent(since_created: std::time::Duration) {
    counter!(CALLBACKS_SENT).increment(1);
    histogram!(CALLBACK_LATENCY).record(since_created);
}

pub fn callback_retried() {
    counter!(CALLBACKS_RETRIED).increment(1);
}

pub fn callback_failed() {
    counter!(CALLBACKS_FAILED).increment(1);
}

/// A publish refused by `[[publish_auth]]` (R-SEC-1), by reason.
pub fn publish_auth_refused(reason: &'static str) {
    counter!(PUBLISH_AUTH_REFUSED, "reason" => reason).increment(1);
}

pub fn publish_refused_spool_full() {
    counter!(REFUSED_SPOOL_FULL).increment(1);
}

pub fn file_opened() {
    gauge!(RECORDINGS_OPEN).increment(1.0);
}

pub fn file_closed() {
    gauge!(RECORDINGS_OPEN).decrement(1.0);
}

pub fn file_finalized() {
    counter!(FILES_FINALIZED).increment(1);
}

pub fn file_failed() {
    counter!(FILES_FAILED).increment(1);
}

pub fn timestamp_discontinuity() {
    counter!(TIMESTAMP_JUMPS).increment(1);
}

pub fn spool_write_error() {
    counter!(SPOOL_WRITE_ERRORS).increment(1);
}

/// A file closed at `closed` is finalized (`format` as in the recordings index).
pub fn finalize_time(format: &str, closed: Instant) {
    histogram!(FINALIZE, "format" => label(format)).record(closed.elapsed());
}

/// The store confirmed a file closed at `closed`.
pub fn upload_latency(backend: &'static str, closed: Instant) {
    histogram!(UPLOAD_LATENCY, "backend" => backend).record(closed.elapsed());
}

/// A label value for the exporter, which escapes `"` and newlines but takes a `\` that
/// precedes `\` or `"` as an escape already made; doubling backslashes first makes every
/// value come out as itself.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
}

/// Values owned by other subsystems, read when `/metrics` is rendered.
pub struct Gauges {
    pub spool_bytes: u64,
    pub spool_max_bytes: u64,
    pub upload_queue: u64,
    pub streams: u64,
    pub index_unpublished: u64,
    pub callbacks_pending: u64,
    pub callbacks_failed: u64,
    pub tasks: std::collections::BTreeMap<crate::model::TaskStatus, usize>,
}

/// Prometheus text exposition (R-OP-3) of everything recorded, with `g` set first.
pub fn render(handle: &PrometheusHandle, g: &Gauges) -> String {
    for (name, v) in [
        (SPOOL_BYTES, g.spool_bytes),
        (SPOOL_MAX_BYTES, g.spool_max_bytes),
        (UPLOAD_QUEUE, g.upload_queue),
        (STREAMS, g.streams),
        (INDEX_UNPUBLISHED, g.index_unpublished),
        (CALLBACKS_PENDING, g.callbacks_pending),
        (CALLBACKS_FAILED_KEPT, g.callbacks_failed),
    ] {
        gauge!(name).set(v as f64);
    }
    for (status, n) in &g.tasks {
        gauge!(RECORD_TASKS, "status" => status.as_str()).set(*n as f64);
    }
    handle.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskStatus;
    use std::time::Duration;

    fn gauges() -> Gauges {
        Gauges {
            spool_bytes: 3,
            spool_max_bytes: 1 << 40,
            upload_queue: 0,
            streams: 1,
            index_unpublished: 0,
            callbacks_pending: 0,
            callbacks_failed: 0,
            tasks: [(TaskStatus::Scheduled, 10), (TaskStatus::Recording, 0)].into(),
        }
    }

    /// Each test has its own recorder: the process-wide one is the daemon's alone.
    fn with_recorder(f: impl FnOnce()) -> String {
        let rec = recorder().expect("buckets are valid");
        let handle = rec.handle();
        ::metrics::with_local_recorder(&rec, || {
            describe();
            f();
            render(&handle, &gauges())
        })
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_series_renders_with_its_type_before_any_event() {
        let text = with_recorder(|| {});
        for (name, kind) in [
            (SPOOL_BYTES, "gauge"),
            (SPOOL_MAX_BYTES, "gauge"),
            (UPLOAD_QUEUE, "gauge"),
            (REFUSED_SPOOL_FULL, "counter"),
            (STREAMS, "gauge"),
            (CONNECTIONS_TOTAL, "counter"),
            (CONNECTIONS, "gauge"),
            (BYTES_IN, "counter"),
            (SOCKET_READS, "counter"),
            (RECORDINGS_OPEN, "gauge"),
            (FILES_FINALIZED, "counter"),
            (FILES_FAILED, "counter"),
            (INDEX_UNPUBLISHED, "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
            assert!(value(&text, name).is_some(), "{name}: {text}");
        }
        assert!(
            text.contains("# TYPE liverec_record_tasks gauge\n"),
            "{text}"
        );
        assert!(text.contains("liverec_record_tasks{status=\"scheduled\"} 10\n"));
        assert!(text.contains("liverec_record_tasks{status=\"recording\"} 0\n"));
        assert_eq!(value(&text, SPOOL_MAX_BYTES), Some((1u64 << 40) as f64));
    }

    #[test]
    fn events_move_counters_and_gauges() {
        let text = with_recorder(|| {
            connection_opened();
            connection_opened();
            connection_closed();
            bytes_in(1000);
            bytes_in(24);
            file_opened();
            file_closed();
            file_finalized();
            file_failed();
            publish_refused_spool_full();
        });
        assert_eq!(value(&text, CONNECTIONS_TOTAL), Some(2.0), "{text}");
        assert_eq!(value(&text, CONNECTIONS), Some(1.0), "{text}");
        assert_eq!(value(&text, BYTES_IN), Some(1024.0), "{text}");
        assert_eq!(value(&text, RECORDINGS_OPEN), Some(0.0), "{text}");
        assert_eq!(value(&text, FILES_FINALIZED), Some(1.0), "{text}");
        assert_eq!(value(&text, FILES_FAILED), Some(1.0), "{text}");
        assert_eq!(value(&text, REFUSED_SPOOL_FULL), Some(1.0), "{text}");
    }

    #[test]
    fn latencies_render_as_histograms_with_buckets() {
        let text = with_recorder(|| {
            let closed = Instant::now() - Duration::from_millis(40);
            upload_latency("s3", closed);
            upload_latency("s3", Instant::now() - Duration::from_secs(700));
            finalize_time("flv", Instant::now());
        });
        assert!(
            text.contains("# TYPE liverec_upload_latency_seconds histogram\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE liverec_finalize_seconds histogram\n"));
        let b = |s: &str| value(&text, s);
        assert_eq!(
            b("liverec_upload_latency_seconds_bucket{backend=\"s3\",le=\"0.025\"}"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            b("liverec_upload_latency_seconds_bucket{backend=\"s3\",le=\"0.05\"}"),
            Some(1.0)
        );
        assert_eq!(
            b("liverec_upload_latency_seconds_bucket{backend=\"s3\",le=\"600\"}"),
            Some(1.0)
        );
        assert_eq!(
            b("liverec_upload_latency_seconds_bucket{backend=\"s3\",le=\"+Inf\"}"),
            Some(2.0)
        );
        assert_eq!(
            b("liverec_upload_latency_seconds_count{backend=\"s3\"}"),
            Some(2.0)
        );
        assert_eq!(
            b("liverec_finalize_seconds_bucket{format=\"flv\",le=\"+Inf\"}"),
            Some(1.0),
            "{text}"
        );
        assert!(!text.contains("quantile="), "{text}");
    }

    /// Reads one exposition label value back (`\\`, `\"`, `\n` escapes); None when the
    /// text is not valid exposition (a raw newline, a bare `"`, an unknown escape).
    fn parse_label(s: &str) -> Option<(String, &str)> {
        let mut out = String::new();
        let mut chars = s.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Some((out, &s[i + 1..])),
                '\\' => match chars.next()?.1 {
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    'n' => out.push('\n'),
                    _ => return None,
                },
                '\n' => return None,
                c => out.push(c),
            }
        }
        None
    }

    /// No series carries a user-controlled label today (stream names are not labels);
    /// `format` is the closest (it comes from the config), so escaping is checked on it
    /// with the characters a stream or app name could bring.
    #[test]
    fn label_values_are_escaped_and_read_back_unchanged() {
        let nasty = ["a\"b", "c\\d", "e\nf", "\\\"", "\\\\n\\", "x\\\ny\"\\"];
        let text = with_recorder(|| {
            for v in nasty {
                finalize_time(v, Instant::now());
            }
        });
        let mut seen = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("liverec_finalize_seconds_count{format=\"") else {
                continue;
            };
            let (v, tail) = parse_label(rest).unwrap_or_else(|| panic!("invalid: {line}"));
            assert_eq!(tail, "} 1", "{line}");
            seen.push(v);
        }
        seen.sort();
        let mut want: Vec<String> = nasty.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(seen, want, "{text}");
    }
}

//! Counters and gauges for `/metrics` (R-OP-3), in one place: the series names, their
//! help texts, and the process-wide counters every subsystem bumps.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for `/metrics` (R-OP-3).
pub struct Stats {
    pub refused_spool_full: AtomicU64,
    /// RTMP connections accepted, and open now.
    pub connections_total: AtomicU64,
    pub connections_open: AtomicU64,
    /// Bytes read from RTMP sockets.
    pub bytes_in: AtomicU64,
    /// Files (an HLS recording counts as its playlist) open now, finalized, failed.
    pub files_open: AtomicU64,
    pub files_finalized: AtomicU64,
    pub files_failed: AtomicU64,
}

impl Stats {
    /// One more on a counter or gauge.
    pub fn up(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// One less on a gauge (never below zero).
    pub fn down(c: &AtomicU64) {
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// The process-wide counters (one daemon per process).
pub static STATS: Stats = Stats {
    refused_spool_full: AtomicU64::new(0),
    connections_total: AtomicU64::new(0),
    connections_open: AtomicU64::new(0),
    bytes_in: AtomicU64::new(0),
    files_open: AtomicU64::new(0),
    files_finalized: AtomicU64::new(0),
    files_failed: AtomicU64::new(0),
};

/// Values owned by other subsystems, read when `/metrics` is rendered.
pub struct Gauges {
    pub spool_bytes: u64,
    pub spool_max_bytes: u64,
    pub upload_queue: u64,
    pub streams: u64,
    pub index_unpublished: u64,
    pub tasks: std::collections::BTreeMap<crate::model::TaskStatus, usize>,
}

/// Prometheus text exposition (R-OP-3): plain counters and gauges, written by hand because
/// a dozen `name value` lines do not justify an exporter crate; one comes with histograms.
/// Callback failures are added with callbacks (R-CB).
pub fn render(g: &Gauges) -> String {
    let st = &STATS;
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut out = String::new();
    for (name, kind, help, v) in [
        (
            "liverec_spool_bytes",
            "gauge",
            "Bytes in the spool (open files and files waiting for storage).",
            g.spool_bytes,
        ),
        (
            "liverec_spool_max_bytes",
            "gauge",
            "The spool quota.",
            g.spool_max_bytes,
        ),
        (
            "liverec_upload_queue",
            "gauge",
            "Files and playlists waiting for their upload.",
            g.upload_queue,
        ),
        (
            "liverec_publish_refused_spool_full_total",
            "counter",
            "Publishes refused because the spool was full.",
            n(&st.refused_spool_full),
        ),
        (
            "liverec_streams",
            "gauge",
            "Streams being published.",
            g.streams,
        ),
        (
            "liverec_connections_total",
            "counter",
            "RTMP connections accepted.",
            n(&st.connections_total),
        ),
        (
            "liverec_connections",
            "gauge",
            "RTMP connections open.",
            n(&st.connections_open),
        ),
        (
            "liverec_bytes_in_total",
            "counter",
            "Bytes read from RTMP connections.",
            n(&st.bytes_in),
        ),
        (
            "liverec_recordings_open",
            "gauge",
            "Files being recorded (an HLS recording counts once).",
            n(&st.files_open),
        ),
        (
            "liverec_files_finalized_total",
            "counter",
            "Files finalized and handed to storage.",
            n(&st.files_finalized),
        ),
        (
            "liverec_files_failed_total",
            "counter",
            "Files whose finalization failed.",
            n(&st.files_failed),
        ),
        (
            "liverec_recordings_index_unpublished",
            "gauge",
            "Recordings index changes not yet in the store's catalog.",
            g.index_unpublished,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    }
    out.push_str(
        "# HELP liverec_record_tasks Record tasks by status.\n# TYPE liverec_record_tasks gauge\n",
    );
    for (status, n) in &g.tasks {
        out.push_str(&format!(
            "liverec_record_tasks{{status=\"{status}\"}} {n}\n"
        ));
    }
    out
}

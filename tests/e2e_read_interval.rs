//! Issue 17: `[ingest] read_interval` gathers a publisher's frames into one socket read
//! per interval (the largest CPU cost was a wake-up per frame), and loses nothing: the
//! same real-time ffmpeg push into a daemon reading at once and one reading every 250 ms
//! records every packet of the input, in real time, with far fewer reads.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_follows_input, metric, ordered, Daemon};
use testkit::require_tool;

/// Pushes the 20 s fixture in real time, one packet per write (`-flush_packets 1`, as
/// an encoder sends its frames); returns how long ffmpeg took.
fn push(d: &Daemon) -> Duration {
    let started = Instant::now();
    let status = Command::new(require_tool("ffmpeg"))
        .args([
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-re",
            "-i",
        ])
        .arg(testkit::fixture("avc_aac_2s.flv"))
        .args(["-c", "copy", "-flush_packets", "1", "-f", "flv"])
        .arg(d.url("live", "cam"))
        .stdin(Stdio::null())
        .status()
        .expect("spawn ffmpeg");
    assert!(status.success(), "ffmpeg failed: {status}");
    started.elapsed()
}

struct Run {
    reads: u64,
    took: Duration,
}

fn record(read_interval: f64) -> Run {
    let d = Daemon::start(&format!("[ingest]\nread_interval = {read_interval}\n"));
    let took = push(&d);
    let flv = ordered(d.wait_files(
        "localhost",
        "live",
        "cam",
        "flv",
        1,
        Duration::from_secs(20),
    ));
    // Every packet, in order, with the input's bytes: a hold loses nothing.
    assert_follows_input(&flv, &testkit::fixture("avc_aac_2s.flv"), true, 1.0);
    let (_, text) = d.api_get("/metrics");
    Run {
        reads: metric(&text, "liverec_ingest_socket_reads_total"),
        took,
    }
}

#[test]
fn reads_are_gathered_per_interval_and_every_frame_is_recorded() {
    let at_once = std::thread::spawn(|| record(0.0));
    let gathered = record(0.25);
    let at_once = at_once.join().expect("the read-at-once run");
    eprintln!(
        "socket reads for a 20 s push: read_interval 0 → {} in {:.1?}, 0.25 → {} in {:.1?}",
        at_once.reads, at_once.took, gathered.reads, gathered.took
    );
    // 20 s at 250 ms is 80 slots (plus the handshake, the commands and the odd read
    // after a large one); reading at once takes roughly one read per packet (1 539).
    assert!(
        gathered.reads <= 200,
        "read_interval 0.25 made {} reads",
        gathered.reads
    );
    assert!(
        at_once.reads >= 3 * gathered.reads,
        "read_interval 0 made {} reads, 0.25 {}",
        at_once.reads,
        gathered.reads
    );
    // Not throttled: the publisher kept real time (the fixture is 20.07 s).
    assert!(
        gathered.took < Duration::from_secs(24),
        "the push took {:?}",
        gathered.took
    );
}

//! Load generator: publishes N RTMP streams of one FLV fixture from one process and
//! prints one JSON line of totals.
//!
//! ```text
//! liverec-load --url rtmp://127.0.0.1:1935/live --fixture fixtures/avc_aac_2s.flv -n 100 --duration 60
//! ```
//!
//! Streams are named `{stream-prefix}{first + i}` under the URL's app. Each loops the file
//! with continuous timestamps until `--duration` seconds have passed (paced at real time,
//! or as fast as possible with `--max`). One tokio runtime with `--threads` workers
//! (default 1) keeps the generator's own CPU small; its CPU seconds (user + system, all
//! threads, from /proc/self/stat) are part of the report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use liverec_testkit::probe::flv_tags;
use liverec_testkit::{publish_many_prefixed, PublishOptions};

#[derive(Parser, Debug)]
#[command(name = "liverec-load", about = "Publish N RTMP streams of an FLV file")]
struct Args {
    /// rtmp://host[:port]/app[?query]
    #[arg(long)]
    url: String,
    /// FLV file to replay
    #[arg(long)]
    fixture: std::path::PathBuf,
    /// Number of concurrent streams
    #[arg(short = 'n', default_value_t = 1)]
    n: usize,
    /// Seconds each stream publishes, looping the file (0: no limit, use --loops)
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// With --duration 0: extra loops of the file (total = loops + 1)
    #[arg(long, default_value_t = 0)]
    loops: u32,
    /// No pacing: send as fast as possible
    #[arg(long)]
    max: bool,
    /// Outgoing RTMP chunk size
    #[arg(long, default_value_t = 4096)]
    chunk_size: u32,
    /// Stream name prefix (name = prefix + index)
    #[arg(long, default_value = "s")]
    stream_prefix: String,
    /// Index of the first stream
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Each stream starts after a random delay in [0, stagger) seconds (0 with --max)
    #[arg(long, default_value_t = 0.5)]
    stagger: f64,
    /// Use the complex (digest) handshake
    #[arg(long)]
    complex_handshake: bool,
    /// tokio worker threads
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// User + system CPU seconds of this process (all threads). /proc reports clock ticks
/// of USER_HZ, which Linux fixes at 100 for user space.
fn own_cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let tags = Arc::new(flv_tags(&a.fixture));
    let opts = PublishOptions {
        chunk_size: a.chunk_size,
        realtime: !a.max,
        complex_handshake: a.complex_handshake,
        duration: (a.duration > 0.0).then(|| Duration::from_secs_f64(a.duration)),
        loops: a.loops,
        start_jitter: if a.max {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(a.stagger.max(0.0))
        },
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let t0 = Instant::now();
    let results = rt.block_on(publish_many_prefixed(
        &a.url,
        &a.stream_prefix,
        a.first,
        a.n,
        tags,
        &opts,
    ));
    let elapsed = t0.elapsed().as_secs_f64();
    let mut failed = serde_json::Map::new();
    let (mut bytes, mut msgs, mut media) = (0u64, 0u64, 0u64);
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(s) => {
                bytes += s.bytes_sent;
                msgs += s.messages_sent;
                media += s.media_messages;
            }
            Err(e) => {
                failed.insert(
                    format!("{}{}", a.stream_prefix, a.first + i),
                    e.to_string().into(),
                );
            }
        }
    }
    let ok = a.n - failed.len();
    let report = serde_json::json!({
        "streams": a.n,
        "ok": ok,
        "failed": failed,
        "bytes_sent": bytes,
        "messages_sent": msgs,
        "media_messages": media,
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "cpu_s": (own_cpu_seconds() * 1000.0).round() / 1000.0,
    });
    println!("{report}");
    if ok == a.n {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

//! Issue 17: `[ingest] read_interval` gathers a publisher's frames into one socket read
//! per interval (the largest CPU cost was a wake-up per frame), and loses nothing: the
//! same real-time ffmpeg push into a daemon reading at once and one reading every 250 ms
//! records every packet of the input, in real time, with far fewer reads.
//!
//! A publishing plain-TCP connection also raises its socket's receive low-water mark so
//! frames between slots wake nothing (`src/ingest/slot_read.rs`); the second test checks
//! that a connection that stops publishing reads its next commands at once again.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use amf0::Value;
use common::{assert_follows_input, metric, ordered, rt, Daemon};
use flv::{FileTag, TagType};
use testkit::chunk::msg_type;
use testkit::conn::csid;
use testkit::{fixture_tags, flv_summary, require_tool, RawConn};

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

/// Sends the audio/video tags on message stream `sid`, paced at real time (so the
/// connection reads them on its slots, with the low-water mark raised).
async fn send_realtime(c: &mut RawConn, sid: u32, tags: &[FileTag]) {
    let started = tokio::time::Instant::now();
    for t in tags {
        let (cs, ty) = match t.tag_type {
            TagType::Audio => (csid::AUDIO, msg_type::AUDIO),
            TagType::Video => (csid::VIDEO, msg_type::VIDEO),
            _ => continue,
        };
        tokio::time::sleep_until(started + Duration::from_millis(u64::from(t.timestamp))).await;
        c.send_message(cs, ty, sid, t.timestamp, &t.body)
            .await
            .expect("sending media");
    }
}

/// A connection publishes 3 s, unpublishes (deleteStream) and asks for a new stream.
/// Those commands are a few hundred bytes, far below the low-water mark the publish
/// raised: unless the mark is set back when publishing ends, the runtime is never told
/// they arrived and createStream goes unanswered until the idle timeout (30 s; the
/// testkit waits 10 s for the answer).
#[test]
fn a_connection_that_stops_publishing_answers_its_next_commands_at_once() {
    let d = Daemon::start("[ingest]\nread_interval = 0.1\n");
    let all = fixture_tags("avc_aac_1s.flv");
    let head: Vec<FileTag> = all.iter().filter(|t| t.timestamp < 3000).cloned().collect();
    let addr = d.rtmp;
    rt().block_on(async {
        let mut c = RawConn::connect(addr).await.expect("TCP connect");
        c.handshake().await.expect("handshake");
        c.connect_app("live", &format!("rtmp://{addr}/live"))
            .await
            .expect("connect");
        let sid = c.create_stream().await.expect("createStream");
        assert_eq!(
            c.publish(sid, "cam").await.expect("publish"),
            "NetStream.Publish.Start"
        );
        // The daemon raises the mark at its next read slot: media sent after that (3 s
        // of this fixture is ~140 KB, below the mark) signals nothing, so the runtime's
        // readiness for the socket stays as its last own read left it, "not readable".
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_realtime(&mut c, sid, &head).await;
        c.command(
            "deleteStream",
            9.0,
            &[Value::Null, Value::Number(f64::from(sid))],
        )
        .await
        .expect("deleteStream");
        // Until the daemon has answered and gone quiet, so createStream arrives alone, to
        // a connection that has stopped publishing (sent together, one slot read would
        // take both).
        while c.read_message(Duration::from_millis(300)).await.is_some() {}
        c.create_stream()
            .await
            .unwrap_or_else(|e| panic!("createStream after the unpublish: {e}\n{}", d.log()));
    });
    // Every frame sent, in order, with the fixture's bytes.
    let want: Vec<_> = flv_summary(&testkit::fixture("avc_aac_1s.flv"))
        .tags
        .iter()
        .filter(|t| t.is_frame() && t.timestamp < 3000)
        .filter_map(|t| Some((t.track()?, t.sha256)))
        .collect();
    let files = d.wait_files(
        "localhost",
        "live",
        "cam",
        "flv",
        1,
        Duration::from_secs(20),
    );
    let got: Vec<_> = files
        .iter()
        .flat_map(|f| flv_summary(f).frame_hashes())
        .collect();
    assert!(
        got == want,
        "{} frames recorded of the {} sent",
        got.len(),
        want.len()
    );
}

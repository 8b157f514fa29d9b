//! Behaviour of the packet ring through its public API.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;

use bytes::Bytes;
use liverec_ring::{ring, Item, Reader, RingConfig, Writer};
use media::{AudioCodec, Codec, MediaEvent, Millis, Packet, TrackConfig, VideoCodec, WallMillis};

const H264: Codec = Codec::Video(VideoCodec::H264);
const AAC: Codec = Codec::Audio(AudioCodec::Aac);

fn video(dts: i64, key: bool, size: usize) -> MediaEvent {
    let flv = Bytes::from(vec![if key { 0x17 } else { 0x27 }; size]);
    MediaEvent::Packet(Packet {
        codec: H264,
        dts: Millis::from_ms(dts),
        cts: 0,
        key,
        data: flv.slice(size.min(5)..),
        flv,
    })
}

fn audio(dts: i64) -> MediaEvent {
    let flv = Bytes::from_static(&[0xaf, 0x01, 0x21, 0x10, 0x04]);
    MediaEvent::Packet(Packet {
        codec: AAC,
        dts: Millis::from_ms(dts),
        cts: 0,
        key: true,
        data: flv.slice(2..),
        flv,
    })
}

fn config(codec: Codec, tag: u8) -> MediaEvent {
    let record = Bytes::from(vec![tag; 4]);
    MediaEvent::Config(TrackConfig {
        codec,
        flv: record.clone(),
        record,
        dts: Millis::ZERO,
    })
}

fn meta(tag: u8) -> MediaEvent {
    MediaEvent::Metadata(Bytes::from(vec![tag; 3]))
}

/// The arrival of every event these tests push, unless a test is about arrivals.
const AT: WallMillis = WallMillis::from_unix_ms(1_700_000_000_000);

fn ev(e: MediaEvent) -> Item {
    Item::Event(e, AT)
}

fn drain(r: &mut Reader) -> Vec<Item> {
    std::iter::from_fn(|| r.try_next()).collect()
}

fn dts_of(item: &Item) -> Option<i64> {
    match item {
        Item::Event(e, _) => e.dts().map(Millis::as_ms),
        Item::Lagged { .. } => None,
    }
}

fn is_key(item: &Item) -> bool {
    matches!(item, Item::Event(MediaEvent::Packet(p), _) if p.is_video_key())
}

/// Video frames every 40 ms from `from` to `to` inclusive, a keyframe every `gop` ms.
fn push_video(w: &mut Writer, from: i64, to: i64, gop: i64, size: usize) {
    for t in (from..=to).step_by(40) {
        w.push(video(t, t % gop == 0, size), AT);
    }
}

fn start(w: &mut Writer) {
    w.push(meta(1), AT);
    w.push(config(H264, 1), AT);
    w.push(config(AAC, 1), AT);
}

fn preamble(tag_meta: u8, tag_v: u8, tag_a: u8) -> Vec<Item> {
    vec![
        ev(meta(tag_meta)),
        ev(config(H264, tag_v)),
        ev(config(AAC, tag_a)),
    ]
}

#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A minimal executor: poll the future, park the thread until woken.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

fn big() -> RingConfig {
    RingConfig {
        max_duration_ms: Millis::from_ms(60_000),
        max_bytes: usize::MAX,
    }
}

#[test]
fn joins_at_newest_keyframe_with_configs_and_metadata_first() {
    let (mut w, h) = ring(big());
    start(&mut w);
    w.push(video(0, true, 10), AT);
    w.push(audio(10), AT);
    w.push(video(40, false, 10), AT);
    w.push(video(2000, true, 10), AT);
    w.push(audio(1990), AT); // audio slightly behind video
    w.push(video(2040, false, 10), AT);

    let mut expected = preamble(1, 1, 1);
    expected.extend([
        ev(video(2000, true, 10)),
        ev(audio(1990)),
        ev(video(2040, false, 10)),
    ]);
    assert_eq!(drain(&mut h.subscribe()), expected);
    assert_eq!(drain(&mut w.subscribe()), expected);
}

#[test]
fn reader_before_first_keyframe_waits_for_it() {
    let (mut w, _h) = ring(big());
    start(&mut w);
    let mut r = w.subscribe();
    assert_eq!(r.try_next(), None);
    w.push(video(0, false, 10), AT); // not a join point
    w.push(audio(5), AT); // audio is no join point once the stream has video
    assert_eq!(r.try_next(), None);
    assert_eq!(
        w.stats().events,
        0,
        "nothing before the first GOP is readable"
    );
    w.push(video(40, true, 10), AT);
    w.push(audio(45), AT);
    let mut expected = preamble(1, 1, 1);
    expected.extend([ev(video(40, true, 10)), ev(audio(45))]);
    assert_eq!(drain(&mut r), expected);
}

#[test]
fn audio_only_stream_joins_at_the_next_audio_frame() {
    let (mut w, _h) = ring(big());
    w.push(meta(1), AT);
    w.push(config(AAC, 7), AT);
    let mut early = w.subscribe();
    assert_eq!(early.try_next(), None);
    w.push(audio(0), AT);
    assert_eq!(
        drain(&mut early),
        vec![ev(meta(1)), ev(config(AAC, 7)), ev(audio(0))]
    );
    w.push(audio(23), AT);
    // A later reader starts at the newest audio frame: there is no keyframe to wait for.
    let mut late = w.subscribe();
    assert_eq!(
        drain(&mut late),
        vec![ev(meta(1)), ev(config(AAC, 7)), ev(audio(23))]
    );
    w.push(audio(46), AT);
    assert_eq!(drain(&mut late), vec![ev(audio(46))]);
    assert_eq!(drain(&mut early), vec![ev(audio(23)), ev(audio(46))]);
}

#[test]
fn video_appearing_late_switches_join_points_to_keyframes() {
    let (mut w, h) = ring(big());
    w.push(config(AAC, 1), AT);
    w.push(audio(0), AT);
    let mut reading = h.subscribe();
    w.push(audio(23), AT);
    w.push(config(H264, 1), AT);
    w.push(audio(46), AT);
    // The stream has video now: audio frames are no join points any more.
    let mut waiting = h.subscribe();
    assert_eq!(waiting.try_next(), None);
    w.push(video(50, false, 10), AT);
    assert_eq!(waiting.try_next(), None);
    w.push(video(90, true, 10), AT);
    w.push(audio(69), AT);
    assert_eq!(
        drain(&mut waiting),
        vec![
            ev(config(H264, 1)),
            ev(config(AAC, 1)),
            ev(video(90, true, 10)),
            ev(audio(69)),
        ]
    );
    assert_eq!(
        drain(&mut reading),
        vec![
            ev(config(AAC, 1)),
            ev(audio(0)),
            ev(audio(23)),
            ev(config(H264, 1)),
            ev(audio(46)),
            ev(video(50, false, 10)),
            ev(video(90, true, 10)),
            ev(audio(69)),
        ]
    );
    let mut later = h.subscribe();
    assert_eq!(dts_of(&drain(&mut later)[2]), Some(90));
}

/// A reader that subscribed while the stream was still audio, and had not read anything
/// when the video's sequence header arrived (a relay's burst), still starts at the audio
/// it subscribed to: its recorder waits for the video itself (issue 12, track_wait).
#[test]
fn a_reader_waiting_before_video_appeared_still_starts_at_the_audio() {
    let (mut w, h) = ring(big());
    let mut early = h.subscribe();
    w.push(config(AAC, 1), AT);
    w.push(audio(0), AT);
    w.push(audio(23), AT);
    w.push(config(H264, 1), AT);
    w.push(video(0, true, 10), AT);
    let got = drain(&mut early);
    assert_eq!(
        got,
        vec![
            ev(config(AAC, 1)),
            ev(audio(0)),
            ev(audio(23)),
            ev(config(H264, 1)),
            ev(video(0, true, 10)),
        ]
    );
    // A reader arriving now starts at the keyframe, as before.
    let mut late = h.subscribe();
    assert_eq!(dts_of(&drain(&mut late)[2]), Some(0));
}

/// The recording of a new publish subscribes from the stream's start: a relay's first
/// second of audio and the video's sequence header may all have been pushed (one socket
/// read with the publish itself) before the supervisor got to subscribe, and it must
/// still start at that audio, as a reader waiting from the start would.
#[test]
fn a_reader_from_the_start_gets_the_audio_that_came_before_the_video() {
    let (mut w, h) = ring(big());
    w.push(config(AAC, 1), AT);
    w.push(audio(0), AT);
    w.push(audio(23), AT);
    w.push(config(H264, 1), AT);
    w.push(video(0, true, 10), AT);
    w.push(audio(46), AT);
    let whole = vec![
        ev(config(AAC, 1)),
        ev(audio(0)),
        ev(audio(23)),
        ev(config(H264, 1)),
        ev(video(0, true, 10)),
        ev(audio(46)),
    ];
    assert_eq!(drain(&mut h.subscribe_from_start()), whole);
    assert_eq!(drain(&mut w.subscribe_from_start()), whole);
    // The oldest keyframe is where any other reader starts: the audio before it is
    // what the old way of starting a publish's recording lost.
    let oldest = drain(&mut h.subscribe_preroll(Millis::MAX));
    assert_eq!(dts_of(&oldest[2]), Some(0));
    assert!(is_key(&oldest[2]), "{oldest:?}");
    assert_eq!(oldest.len(), 4, "{oldest:?}");
    // Before anything is pushed it waits, like any reader of an empty ring, and then
    // reads from the first event on.
    let (mut w2, h2) = ring(big());
    let mut early = h2.subscribe_from_start();
    assert!(drain(&mut early).is_empty());
    w2.push(config(AAC, 1), AT);
    w2.push(audio(0), AT);
    assert_eq!(drain(&mut early), vec![ev(config(AAC, 1)), ev(audio(0))]);
}

/// Once the ring evicted the stream's start, a reader "from the start" begins at the
/// oldest keyframe held and is told nothing was lost: it never had what went.
#[test]
fn a_reader_from_the_start_after_eviction_starts_at_the_oldest_keyframe() {
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(4000),
        max_bytes: usize::MAX,
    });
    start(&mut w);
    push_video(&mut w, 0, 20_960, 2000, 100);
    let from_start = drain(&mut h.subscribe_from_start());
    assert_eq!(from_start, drain(&mut h.subscribe_preroll(Millis::MAX)));
    assert_eq!(&from_start[..3], &preamble(1, 1, 1)[..]);
    assert_eq!(dts_of(&from_start[3]), Some(18_000));
    assert!(!from_start.iter().any(|i| matches!(i, Item::Lagged { .. })));
}

#[test]
fn audio_only_eviction_groups_audio_in_about_one_second() {
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(3000),
        max_bytes: usize::MAX,
    });
    w.push(config(AAC, 1), AT);
    for t in (0..=10_000).step_by(20) {
        w.push(audio(t), AT);
    }
    let s = h.stats();
    // Groups start at 0, 1000, ... 10000; at 10000 the ring spans (10000-7000] .. 10000.
    assert_eq!(s.gops, 4, "{s:?}");
    assert_eq!(s.duration_ms.as_ms(), 3000);
    let items = drain(&mut h.subscribe_preroll(Millis::from_ms(100_000)));
    assert_eq!(items[0], ev(config(AAC, 1)));
    assert_eq!(dts_of(&items[1]), Some(7000));
}

#[test]
fn eviction_by_duration_keeps_whole_gops() {
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(4000),
        max_bytes: usize::MAX,
    });
    start(&mut w);
    push_video(&mut w, 0, 20_960, 2000, 100);
    let s = h.stats();
    // 16000..20960 spans 4960 > 4000 ms, so only the GOPs at 18000 and 20000 stay.
    assert_eq!(s.gops, 2);
    assert_eq!(s.duration_ms.as_ms(), 2960);
    assert_eq!(s.events, 75);
    assert_eq!(s.bytes, 75 * 100);
    assert_eq!(s.pushed, 525); // 0..=20960 step 40; configs before the first GOP are not stored
    let items = drain(&mut h.subscribe_preroll(Millis::from_ms(i64::MAX)));
    assert!(is_key(&items[3]));
    assert_eq!(dts_of(&items[3]), Some(18_000));
    assert_eq!(items.len(), 3 + 75);
}

#[test]
fn newest_gop_is_never_dropped_even_when_longer_than_the_cap() {
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(1000),
        max_bytes: usize::MAX,
    });
    start(&mut w);
    push_video(&mut w, 0, 3960, 2000, 100);
    let s = h.stats();
    assert_eq!(s.gops, 1);
    assert_eq!(s.duration_ms.as_ms(), 1960);
    assert_eq!(s.events, 50);
    let items = drain(&mut h.subscribe());
    assert_eq!(dts_of(&items[3]), Some(2000));
}

#[test]
fn eviction_by_bytes_keeps_whole_gops() {
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(60_000),
        max_bytes: 120_000,
    });
    start(&mut w);
    push_video(&mut w, 0, 20_960, 2000, 1000);
    let s = h.stats();
    // One full GOP (50 kB) + the newest (25 kB); one more would be 125 kB > 120 kB.
    assert_eq!(s.gops, 2);
    assert_eq!(s.bytes, 75_000);
    assert_eq!(s.events, 75);
    assert_eq!(s.duration_ms.as_ms(), 2960);
}

#[test]
fn a_gop_larger_than_the_byte_cap_is_trimmed_to_the_cap() {
    // Issue 12 (R-IN-7): the byte bound holds inside one GOP.
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(60_000),
        max_bytes: 10_000,
    });
    start(&mut w);
    push_video(&mut w, 0, 3960, 2000, 1000);
    let s = h.stats();
    // The second GOP (2000..3960) alone is 25 kB: its oldest frames went too.
    assert_eq!((s.gops, s.events, s.bytes), (1, 10, 10_000));
    assert_eq!(s.duration_ms.as_ms(), 3960 - 3600);
    w.push(video(4000, true, 1000), AT);
    let s = h.stats();
    // Two GOPs over the bound, nobody reading the older one: it goes whole.
    assert_eq!((s.gops, s.events, s.bytes), (1, 1, 1000));
}

/// A video packet of `size` bytes of a stream whose keyframes stopped: one keyframe at 0,
/// then inter frames only.
fn push_keyless(w: &mut Writer, from: i64, to: i64, size: usize) {
    for t in (from..=to).step_by(40) {
        w.push(video(t, t == 0, size), AT);
    }
}

#[test]
fn keyframe_then_inter_frames_only_stays_within_the_byte_bound() {
    let max = 100_000;
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(4000),
        max_bytes: max,
    });
    start(&mut w);
    let mut peak = 0;
    for t in (0..=60_000).step_by(40) {
        w.push(video(t, t == 0, 2000), AT);
        peak = peak.max(h.stats().bytes);
    }
    // Before issue 12 this held all 60 s (3 MB): the newest GOP was never cut.
    assert!(peak <= max + 2000, "peak {peak}");
    let s = h.stats();
    assert_eq!((s.gops, s.events, s.bytes), (1, 50, 100_000));
    assert_eq!(s.pushed, 1501);
}

#[test]
fn reader_keeping_up_inside_one_gop_loses_nothing() {
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(4000),
        max_bytes: 10_000,
    });
    start(&mut w);
    w.push(video(0, true, 1000), AT);
    let mut r = h.subscribe();
    let mut items = drain(&mut r);
    for t in (40..=20_000).step_by(40) {
        w.push(video(t, false, 1000), AT);
        items.extend(drain(&mut r));
    }
    assert_eq!(&items[..3], &preamble(1, 1, 1)[..]);
    let dts: Vec<_> = items[3..].iter().map(|i| dts_of(i).unwrap()).collect();
    assert_eq!(dts, (0..=20_000).step_by(40).collect::<Vec<_>>());
    assert!(h.stats().bytes <= 10_000);
}

#[test]
fn reader_behind_inside_one_gop_lags_then_rejoins_at_the_next_keyframe() {
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(4000),
        max_bytes: 10_000,
    });
    start(&mut w);
    w.push(video(0, true, 1000), AT);
    let mut r = h.subscribe();
    let first = drain(&mut r); // preamble and the keyframe: seq 0 read, cursor at 1
    assert_eq!(first.len(), 4);
    push_keyless(&mut w, 40, 4000, 1000); // seq 1..=100; 10 held: 91..=100
    assert_eq!(r.try_next(), Some(Item::Lagged { skipped: 90 }));
    // No join point is held (the GOP lost its keyframe): it waits, and reading on from
    // the middle of a GOP would give undecodable frames.
    assert_eq!(r.try_next(), None);
    assert!(!r.is_finished());
    push_keyless(&mut w, 4040, 6000, 1000); // seq 101..=150
    w.push(config(H264, 2), AT); // seq 151
    w.push(video(6080, true, 1000), AT); // seq 152
                                         // Everything from seq 91 to the keyframe was skipped too, and it is told so.
    assert_eq!(r.try_next(), Some(Item::Lagged { skipped: 152 - 91 }));
    let rest = drain(&mut r);
    assert_eq!(&rest[..3], &preamble(1, 2, 1)[..]);
    assert!(is_key(&rest[3]));
    assert_eq!(dts_of(&rest[3]), Some(6080));
    assert_eq!(rest.len(), 4);
}

#[test]
fn lagged_reader_waiting_at_the_end_of_the_stream_is_told_what_it_lost() {
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(4000),
        max_bytes: 10_000,
    });
    start(&mut w);
    w.push(video(0, true, 1000), AT);
    let mut r = h.subscribe();
    drain(&mut r);
    push_keyless(&mut w, 40, 4000, 1000);
    assert_eq!(r.try_next(), Some(Item::Lagged { skipped: 90 }));
    w.close();
    // 91..=100 were held but never delivered (no join point among them).
    assert_eq!(r.try_next(), Some(Item::Lagged { skipped: 10 }));
    assert_eq!(r.try_next(), None);
    assert!(r.is_finished());
}

#[test]
fn new_subscriber_after_in_gop_eviction_waits_for_the_next_keyframe() {
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(4000),
        max_bytes: 10_000,
    });
    start(&mut w);
    push_keyless(&mut w, 0, 4000, 1000);
    let mut r = h.subscribe();
    let mut pre = h.subscribe_preroll(Millis::from_ms(4000));
    assert_eq!(r.try_next(), None);
    assert_eq!(pre.try_next(), None);
    w.push(meta(2), AT);
    w.push(video(4040, false, 1000), AT);
    w.push(video(4080, true, 1000), AT);
    for reader in [&mut r, &mut pre] {
        let items = drain(reader);
        // The configs and metadata of the trimmed head are still known (the preamble).
        assert_eq!(&items[..3], &preamble(2, 1, 1)[..]);
        assert_eq!(dts_of(&items[3]), Some(4080));
        assert!(is_key(&items[3]));
        assert_eq!(items.len(), 4);
    }
}

fn audio_sized(dts: i64, size: usize) -> MediaEvent {
    let mut v = vec![0x01; size];
    v[0] = 0xaf;
    let flv = Bytes::from(v);
    MediaEvent::Packet(Packet {
        codec: AAC,
        dts: Millis::from_ms(dts),
        cts: 0,
        key: true,
        data: flv.slice(2..),
        flv,
    })
}

#[test]
fn audio_only_stream_stays_within_the_byte_bound_inside_a_group() {
    // ~1 s audio groups of 1 kB frames every 23 ms are ~43 kB: larger than the bound.
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(4000),
        max_bytes: 5000,
    });
    w.push(config(AAC, 1), AT);
    let mut r = h.subscribe();
    let mut got = 0;
    let mut peak = 0;
    for i in 0..2000 {
        w.push(audio_sized(i * 23, 1000), AT);
        peak = peak.max(h.stats().bytes);
        got += drain(&mut r)
            .iter()
            .filter(|i| matches!(i, Item::Event(MediaEvent::Packet(_), _)))
            .count();
    }
    assert!(peak <= 5000 + 1000, "peak {peak}");
    assert_eq!(got, 2000);
    // Audio join points survive trimming: a new reader starts at once.
    let items = drain(&mut h.subscribe());
    assert_eq!(items[0], ev(config(AAC, 1)));
    assert_eq!(dts_of(&items[1]), Some(1999 * 23));
}

#[test]
fn backlog_is_the_slowest_active_readers_unread_bytes() {
    let (mut w, h) = ring(big());
    start(&mut w);
    assert_eq!(w.backlog_bytes(), 0);
    // A reader waiting for its first keyframe is behind nothing.
    let mut waiting = h.subscribe();
    w.push(video(0, false, 100), AT);
    assert_eq!(w.backlog_bytes(), 0);
    w.push(video(40, true, 1000), AT);
    w.push(video(80, false, 100), AT);
    // The waiting reader will join at the keyframe: 1100 bytes from there, before it
    // has looked (its task has not run yet) and after.
    assert_eq!(w.backlog_bytes(), 1100);
    waiting.try_next().unwrap();
    assert_eq!(w.backlog_bytes(), 1100);
    let mut fast = h.subscribe();
    drain(&mut fast);
    assert_eq!(w.backlog_bytes(), 1100);
    drain(&mut waiting);
    assert_eq!(w.backlog_bytes(), 0);
    w.push(video(120, false, 300), AT);
    w.push(video(160, false, 200), AT);
    assert_eq!(w.backlog_bytes(), 500);
    drain(&mut fast);
    assert_eq!(w.backlog_bytes(), 500);
    drop(waiting);
    assert_eq!(w.backlog_bytes(), 0);
}

#[test]
fn backlog_of_a_reader_past_the_byte_bound_is_zero() {
    // It has lost its gap already: waiting for it would save nothing, and a writer
    // that resumed after a stall must not pause for it again.
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(4000),
        max_bytes: 10_000,
    });
    start(&mut w);
    w.push(video(0, true, 1000), AT);
    let mut r = h.subscribe();
    for _ in 0..3 {
        r.try_next().unwrap(); // the preamble: the cursor stays at the keyframe
    }
    push_keyless(&mut w, 40, 320, 1000);
    assert_eq!(w.backlog_bytes(), 9000);
    push_keyless(&mut w, 360, 4000, 1000);
    assert_eq!(w.backlog_bytes(), 0);
    assert_eq!(r.try_next(), Some(Item::Lagged { skipped: 91 }));
}

#[test]
fn poll_progress_wakes_the_writer_when_a_reader_moves_or_leaves() {
    let (mut w, h) = ring(big());
    start(&mut w);
    push_video(&mut w, 0, 400, 2000, 10);
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(Arc::clone(&counter));
    let mut cx = Context::from_waker(&waker);
    let mut r = h.subscribe();
    for _ in 0..3 {
        r.try_next().unwrap(); // the preamble does not move the cursor
    }
    // Subscribing is not progress.
    let p0 = w.progress();
    assert!(w.poll_progress(&mut cx).is_pending());
    r.try_next().unwrap();
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    assert!(w.progress() > p0);
    assert!(w.poll_progress(&mut cx).is_ready());
    assert!(w.poll_progress(&mut cx).is_pending());
    // Reading nothing new is not progress.
    drain(&mut r);
    assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    assert!(w.poll_progress(&mut cx).is_ready());
    assert!(w.poll_progress(&mut cx).is_pending());
    assert_eq!(r.try_next(), None);
    assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    drop(r);
    assert_eq!(counter.0.load(Ordering::SeqCst), 3);
    assert!(w.poll_progress(&mut cx).is_ready());
    // Not registered: readers do not wake the writer.
    let mut r2 = h.subscribe();
    r2.try_next().unwrap();
    assert_eq!(counter.0.load(Ordering::SeqCst), 3);
}

#[test]
fn poll_backlog_below_wakes_only_when_the_backlog_reaches_the_limit() {
    let (mut w, h) = ring(big());
    start(&mut w);
    w.push(video(0, true, 100), AT);
    let mut r = h.subscribe();
    push_video(&mut w, 40, 3960, 4000, 100); // 100 frames, 10 kB
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(Arc::clone(&counter));
    let mut cx = Context::from_waker(&waker);
    assert_eq!(w.backlog_bytes(), 10_000);
    assert!(w.poll_backlog_below(2000, &mut cx).is_pending());
    for _ in 0..3 + 80 {
        r.try_next().unwrap();
    }
    // 80 frames read: 2000 bytes left, woken once, on the frame that got it there.
    assert_eq!(w.backlog_bytes(), 2000);
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    assert!(w.poll_backlog_below(2000, &mut cx).is_ready());
    drain(&mut r);
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);

    // A writer that gave up waiting (its stall timer) is not woken any more.
    push_video(&mut w, 4000, 7960, 4000, 100);
    assert!(w.poll_backlog_below(2000, &mut cx).is_pending());
    w.stop_waiting();
    drain(&mut r);
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
}

#[test]
fn threaded_writer_waiting_for_a_slow_reader_loses_nothing() {
    // What the ingest task does (issue 12, backpressure before loss): above half the byte
    // bound it stops and waits until the slowest reader is down to a quarter. A reader
    // far slower than the writer then loses nothing, and the ring stays bounded.
    const MAX: usize = 4000;
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(200),
        max_bytes: MAX,
    });
    let mut r = h.subscribe();
    let reader = thread::spawn(move || {
        let mut expected = 0;
        assert_eq!(block_on(r.next()), Some(ev(config(H264, 1))));
        while let Some(item) = block_on(r.next()) {
            assert_eq!(dts_of(&item), Some(expected), "{item:?}");
            if expected % 500 == 0 {
                thread::sleep(std::time::Duration::from_millis(1));
            }
            expected += 1;
        }
        expected
    });
    let mut peak_backlog = 0;
    let mut pauses = 0;
    w.push(config(H264, 1), AT);
    for i in 0..20_000 {
        if w.backlog_bytes() > MAX / 2 {
            pauses += 1;
            block_on(w.backlog_below(MAX / 4));
        }
        w.push(video(i, i % 50 == 0, 8), AT);
        peak_backlog = peak_backlog.max(w.backlog_bytes());
        assert!(h.stats().bytes <= MAX);
    }
    w.close();
    assert_eq!(reader.join().unwrap(), 20_000);
    assert!(pauses > 0, "the test must exercise the pause");
    assert!(peak_backlog <= MAX / 2 + 8, "{peak_backlog}");
}

#[test]
fn slow_reader_lags_by_exact_count_and_resumes_at_oldest_gop_with_configs() {
    // The byte bound is what makes a reader lag (the duration bound spares unread GOPs):
    // 1000 bytes = two 2 s GOPs of 50 ten-byte frames.
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(4000),
        max_bytes: 1000,
    });
    start(&mut w);
    w.push(video(0, true, 10), AT);
    let mut slow = h.subscribe();
    let mut fast = h.subscribe();
    let mut fast_items = Vec::new();
    for _ in 0..3 {
        slow.try_next().unwrap(); // preamble
    }
    for t in (40..=20_960).step_by(40) {
        w.push(video(t, t % 2000 == 0, 10), AT);
        fast_items.extend(drain(&mut fast));
        if t < 400 {
            // The slow reader reads up to dts 320 (seq 8), then stalls.
            assert!(slow.try_next().is_some());
        }
    }
    // Cursor at seq 9 (dts 360); oldest held GOP starts at 18000 = seq 450.
    assert_eq!(slow.try_next(), Some(Item::Lagged { skipped: 441 }));
    let rest = drain(&mut slow);
    assert_eq!(&rest[..3], &preamble(1, 1, 1)[..]);
    assert!(is_key(&rest[3]));
    assert_eq!(dts_of(&rest[3]), Some(18_000));
    assert_eq!(rest.len(), 3 + 75);

    // The fast reader on the same ring saw every event, in order, once.
    assert_eq!(&fast_items[..3], &preamble(1, 1, 1)[..]);
    let dts: Vec<_> = fast_items[3..].iter().map(|i| dts_of(i).unwrap()).collect();
    assert_eq!(dts, (0..=20_960).step_by(40).collect::<Vec<_>>());
}

#[test]
fn config_change_mid_stream() {
    let (mut w, h) = ring(big());
    start(&mut w);
    w.push(video(0, true, 10), AT);
    let mut reading = h.subscribe();
    assert_eq!(drain(&mut reading).len(), 4);
    w.push(video(40, false, 10), AT);
    w.push(config(H264, 2), AT);
    w.push(meta(2), AT);
    // Joined after the change but before the next keyframe: starts at 0 with the old
    // configs and sees the change in order.
    let mut between = h.subscribe();
    w.push(video(2000, true, 10), AT);
    let mut after = h.subscribe();
    w.push(video(2040, false, 10), AT);

    assert_eq!(
        drain(&mut reading),
        vec![
            ev(video(40, false, 10)),
            ev(config(H264, 2)),
            ev(meta(2)),
            ev(video(2000, true, 10)),
            ev(video(2040, false, 10)),
        ]
    );
    let mut expected = preamble(1, 1, 1);
    expected.extend([
        ev(video(0, true, 10)),
        ev(video(40, false, 10)),
        ev(config(H264, 2)),
        ev(meta(2)),
        ev(video(2000, true, 10)),
        ev(video(2040, false, 10)),
    ]);
    assert_eq!(drain(&mut between), expected);
    let mut expected = preamble(2, 2, 1);
    expected.extend([ev(video(2000, true, 10)), ev(video(2040, false, 10))]);
    assert_eq!(drain(&mut after), expected);
}

/// Arrival stamps travel with the events (issue 10): a reader gets each event with the
/// wall time it was pushed with, replayed configs and metadata with their own, so a
/// pre-roll reader sees when its first keyframe really arrived.
#[test]
fn events_carry_their_arrival_including_preamble_and_preroll() {
    let wall = |ms: i64| WallMillis::from_unix_ms(1_700_000_000_000 + ms);
    let (mut w, h) = ring(big());
    w.push(meta(1), wall(-30));
    w.push(config(H264, 1), wall(-20));
    w.push(config(AAC, 1), wall(-10));
    // Media arrives in real time, 40 ms apart, a keyframe every 2 s.
    for t in (0..=6000).step_by(40) {
        w.push_deferred(video(t, t % 2000 == 0, 10), wall(t));
    }
    w.wake_readers();
    let items = drain(&mut h.subscribe_preroll(Millis::from_ms(4000)));
    assert_eq!(
        &items[..3],
        &[
            Item::Event(meta(1), wall(-30)),
            Item::Event(config(H264, 1), wall(-20)),
            Item::Event(config(AAC, 1), wall(-10)),
        ]
    );
    // Joined 4 s back at the keyframe at 2000, which arrived then, not now.
    assert_eq!(items[3], Item::Event(video(2000, true, 10), wall(2000)));
    for item in &items[3..] {
        let Item::Event(e, at) = item else {
            panic!("{item:?}")
        };
        assert_eq!(
            Some(at.as_unix_ms() - wall(0).as_unix_ms()),
            e.dts().map(Millis::as_ms)
        );
    }
    // A config change mid-stream keeps its own arrival in later preambles.
    w.push(config(H264, 2), wall(6010));
    w.push(video(6040, true, 10), wall(6040));
    let items = drain(&mut h.subscribe());
    assert_eq!(items[1], Item::Event(config(H264, 2), wall(6010)));
    assert_eq!(items[3], Item::Event(video(6040, true, 10), wall(6040)));
}

#[test]
fn preroll_starts_at_the_keyframe_four_to_six_seconds_back() {
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(10_000),
        max_bytes: usize::MAX,
    });
    start(&mut w);
    push_video(&mut w, 0, 21_960, 2000, 10);
    let s = h.stats();
    assert!(
        s.duration_ms.as_ms() > 8000 && s.duration_ms.as_ms() <= 10_000,
        "{s:?}"
    );
    let first_dts = |r: &mut Reader| {
        let items = drain(r);
        assert_eq!(&items[..3], &preamble(1, 1, 1)[..]);
        assert!(is_key(&items[3]));
        dts_of(&items[3]).unwrap()
    };
    let t = first_dts(&mut h.subscribe_preroll(Millis::from_ms(4000)));
    assert!((21_960 - 6000..=21_960 - 4000).contains(&t), "{t}");
    assert_eq!(t, 16_000);
    // Deeper than the ring: the oldest held GOP. No pre-roll: the newest.
    assert_eq!(
        first_dts(&mut h.subscribe_preroll(Millis::from_ms(60_000))),
        12_000
    );
    assert_eq!(
        first_dts(&mut w.subscribe_preroll(Millis::from_ms(0))),
        20_000
    );
}

#[test]
fn since_starts_at_the_first_keyframe_at_or_after_the_moment() {
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(10_000),
        max_bytes: usize::MAX,
    });
    start(&mut w);
    push_video(&mut w, 0, 21_960, 2000, 10);
    let first_dts = |r: &mut Reader| {
        let items = drain(r);
        assert!(is_key(&items[3]));
        dts_of(&items[3]).unwrap()
    };
    // 5 s ago = 16 960: the first keyframe after it is 18 000 (pre-roll would take 16 000).
    assert_eq!(
        first_dts(&mut h.subscribe_since(Millis::from_ms(5000))),
        18_000
    );
    assert_eq!(
        first_dts(&mut h.subscribe_since(Millis::from_ms(3960))),
        18_000
    );
    // Nothing held that late: wait for the next keyframe to arrive.
    let mut r = h.subscribe_since(Millis::from_ms(500));
    assert!(drain(&mut r).is_empty());
    w.push(video(22_000, true, 10), AT);
    let items = drain(&mut r);
    assert_eq!(dts_of(&items[3]), Some(22_000));
}

#[test]
fn close_lets_readers_drain_then_ends() {
    let (mut w, h) = ring(big());
    start(&mut w);
    w.push(video(0, true, 10), AT);
    let mut r = h.subscribe();
    w.push(video(40, false, 10), AT);
    w.close();
    assert!(!r.is_finished());
    let waker = Waker::from(Arc::new(CountingWaker::default()));
    let mut cx = Context::from_waker(&waker);
    let mut got = Vec::new();
    while let Poll::Ready(Some(item)) = r.poll_next(&mut cx) {
        got.push(item);
    }
    assert_eq!(got.len(), 5);
    assert_eq!(r.poll_next(&mut cx), Poll::Ready(None));
    assert_eq!(r.try_next(), None);
    assert!(r.is_finished());
    assert!(h.stats().closed);

    // Dropping the writer closes too, and a waiting reader then ends.
    let (mut w, h) = ring(big());
    start(&mut w);
    let mut waiting = h.subscribe();
    drop(w);
    assert_eq!(block_on(waiting.next()), None);
}

#[test]
fn poll_next_wakes_once_per_push_and_on_close() {
    let (mut w, h) = ring(big());
    start(&mut w);
    w.push(video(0, true, 10), AT);
    let mut r = h.subscribe();
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(Arc::clone(&counter));
    let mut cx = Context::from_waker(&waker);
    let wakes = || counter.0.load(Ordering::SeqCst);

    for _ in 0..4 {
        assert!(matches!(r.poll_next(&mut cx), Poll::Ready(Some(_))));
    }
    assert_eq!(r.poll_next(&mut cx), Poll::Pending);
    assert_eq!(r.poll_next(&mut cx), Poll::Pending); // registers once, not twice
    assert_eq!(wakes(), 0);
    w.push(video(40, false, 10), AT);
    assert_eq!(wakes(), 1);
    w.push(video(80, false, 10), AT); // not re-registered: not woken again
    assert_eq!(wakes(), 1);
    assert!(matches!(r.poll_next(&mut cx), Poll::Ready(Some(_))));
    assert!(matches!(r.poll_next(&mut cx), Poll::Ready(Some(_))));
    assert_eq!(r.poll_next(&mut cx), Poll::Pending);
    w.close();
    assert_eq!(wakes(), 2);
    assert_eq!(r.poll_next(&mut cx), Poll::Ready(None));

    // A waiting reader (no keyframe yet) is woken by the push that brings one.
    let (mut w, h) = ring(big());
    let mut r = h.subscribe();
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(Arc::clone(&counter));
    let mut cx = Context::from_waker(&waker);
    assert_eq!(r.poll_next(&mut cx), Poll::Pending);
    w.push(video(0, true, 10), AT);
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    assert_eq!(
        r.poll_next(&mut cx),
        Poll::Ready(Some(ev(video(0, true, 10))))
    );
}

#[test]
fn stats_count_readers() {
    let (w, h) = ring(RingConfig::default());
    assert_eq!(RingConfig::default().max_duration_ms.as_ms(), 4000);
    assert_eq!(RingConfig::default().max_bytes, 16 << 20);
    let a = w.subscribe();
    let b = h.subscribe_preroll(Millis::from_ms(1000));
    assert_eq!(h.stats().readers, 2);
    drop(a);
    assert_eq!(w.stats().readers, 1);
    drop(b);
    assert_eq!(h.stats().readers, 0);
}

#[test]
fn waiting_reader_whose_first_keyframe_was_evicted_lags() {
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(4000),
        max_bytes: 1000,
    });
    start(&mut w);
    let mut r = h.subscribe();
    push_video(&mut w, 0, 8960, 2000, 10);
    // Held: GOPs 6000 and 8000 (seq 150..). It was owed everything from seq 0.
    assert_eq!(r.try_next(), Some(Item::Lagged { skipped: 150 }));
    let rest = drain(&mut r);
    assert_eq!(&rest[..3], &preamble(1, 1, 1)[..]);
    assert_eq!(dts_of(&rest[3]), Some(6000));
}

const N: i64 = 100_000;

/// Event `i` is a video packet with dts `i`; a keyframe every 50.
fn mt_writer(mut w: Writer) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        w.push(config(H264, 1), AT);
        for i in 0..N {
            w.push(video(i, i % 50 == 0, 8), AT);
        }
        w.close();
    })
}

#[test]
fn threaded_fast_readers_see_every_event_once_in_order() {
    let (w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(2 * N),
        max_bytes: usize::MAX,
    });
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let mut r = h.subscribe();
            thread::spawn(move || {
                let mut next = 0;
                assert_eq!(block_on(r.next()), Some(ev(config(H264, 1))));
                while let Some(item) = block_on(r.next()) {
                    assert_eq!(dts_of(&item), Some(next));
                    next += 1;
                }
                next
            })
        })
        .collect();
    mt_writer(w).join().unwrap();
    for r in readers {
        assert_eq!(r.join().unwrap(), N);
    }
}

#[test]
fn threaded_lagging_readers_account_for_every_event() {
    // A ring of ~200 events: readers lag often, and must account exactly for what they lost.
    let (w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(200),
        max_bytes: 1600,
    });
    let readers: Vec<_> = (0..3)
        .map(|n| {
            let mut r = h.subscribe();
            thread::spawn(move || {
                let mut expected = 0;
                let mut lags = 0;
                let mut after_lag = false;
                loop {
                    let item = if n == 0 {
                        block_on(r.next())
                    } else {
                        // Poll without waiting, with a pause now and then: a slow reader.
                        match r.try_next() {
                            Some(item) => Some(item),
                            None if r.is_finished() => None,
                            None => {
                                thread::yield_now();
                                continue;
                            }
                        }
                    };
                    let Some(item) = item else { break };
                    if n == 2 && expected % 97 == 0 {
                        thread::sleep(std::time::Duration::from_micros(200));
                    }
                    match item {
                        Item::Lagged { skipped } => {
                            expected += skipped as i64;
                            lags += 1;
                            after_lag = true;
                        }
                        Item::Event(MediaEvent::Config(_), _) => {
                            assert!(after_lag || expected == 0);
                        }
                        Item::Event(e, _) => {
                            assert_eq!(e.dts().map(Millis::as_ms), Some(expected));
                            if after_lag {
                                assert_eq!(expected % 50, 0, "resumes at a keyframe");
                                after_lag = false;
                            }
                            expected += 1;
                        }
                    }
                }
                (expected, lags)
            })
        })
        .collect();
    mt_writer(w).join().unwrap();
    let mut total_lags = 0;
    for r in readers {
        let (seen, lags) = r.join().unwrap();
        assert_eq!(seen, N);
        total_lags += lags;
    }
    assert!(total_lags > 0, "the test must exercise lagging");
}

#[test]
fn duration_bound_spares_what_a_reader_has_not_read_but_bytes_do_not() {
    // A publisher pushing faster than real time: 20 s arrive before the reader runs. The
    // duration bound (4 s) must not cost the reader its frames; the byte bound still holds.
    let (mut w, h) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(4000),
        max_bytes: 100_000,
    });
    start(&mut w);
    w.push(video(0, true, 10), AT);
    let mut r = h.subscribe();
    push_video(&mut w, 40, 20_000, 2000, 10);
    let items = drain(&mut r);
    assert!(!items.iter().any(|i| matches!(i, Item::Lagged { .. })));
    let dts: Vec<_> = items[3..].iter().map(|i| dts_of(i).unwrap()).collect();
    assert_eq!(dts, (0..=20_000).step_by(40).collect::<Vec<_>>());
    // Once read, the history is trimmed back to the duration bound on the next push.
    w.push(video(20_040, false, 10), AT);
    assert!(h.stats().duration_ms.as_ms() <= 4000, "{:?}", h.stats());

    // Without readers, the duration bound applies at once.
    let (mut w2, h2) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(4000),
        max_bytes: 100_000,
    });
    start(&mut w2);
    push_video(&mut w2, 0, 20_000, 2000, 10);
    assert!(h2.stats().duration_ms.as_ms() <= 4000);

    // A reader that is behind by more than the byte bound lags.
    let (mut w3, h3) = ring(RingConfig {
        max_duration_ms: Millis::from_ms(4000),
        max_bytes: 2000,
    });
    start(&mut w3);
    w3.push(video(0, true, 10), AT);
    let mut slow = h3.subscribe();
    push_video(&mut w3, 40, 20_000, 2000, 10);
    let items = drain(&mut slow);
    assert!(items.iter().any(|i| matches!(i, Item::Lagged { .. })));
}

#[test]
fn deferred_pushes_wake_once_at_wake_readers() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let (mut w, h) = ring(big());
    start(&mut w);
    w.push(video(0, true, 10), AT);
    let mut r = h.subscribe();
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let waker = Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    while let Poll::Ready(Some(_)) = r.poll_next(&mut cx) {}
    for t in 1..=10 {
        w.push_deferred(video(t * 40, false, 10), AT);
    }
    assert_eq!(
        count.0.load(Ordering::SeqCst),
        0,
        "no wake before wake_readers"
    );
    w.wake_readers();
    assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake for the batch");
    let mut n = 0;
    while let Poll::Ready(Some(_)) = r.poll_next(&mut cx) {
        n += 1;
    }
    assert_eq!(n, 10, "every deferred event is readable");
}

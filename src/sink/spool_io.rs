//! The threads the sink does its file work on (`[spool] io_threads`, issue 17): spool
//! files created, written, patched and cut back, finished files moved into a local store,
//! playlists and manifests written.
//!
//! A flush is a page-cache copy: CPU work that cannot go faster on more threads than
//! there are cores. On tokio's shared blocking pool (up to 512 threads) the ~330 flushes
//! and ~60 file moves and playlist writes a second at 100 hd streams each found a parked
//! thread of their own to wake — the process had 76 threads — so every one cost a futex
//! wake, a context switch and a cold cache on each side. A pool of a few threads takes
//! the next queued job without sleeping. At 100 hd streams (FLV + HLS, 2 cores, 4 threads):
//! 10 threads in the process, context switches 5 390 → 3 274 per 5 s, CPU 6.46 → 6.12
//! CPU-s (medians of 3 alternating runs), RSS per stream −2.5 % (benches/README.md,
//! issue 17 step 3).
//!
//! The pool is the blocking pool of a runtime of its own that is never driven: tokio's
//! blocking pool already queues, sizes and retires threads well, and a runtime is the
//! only way to have one with its own limit. Only plain `std::fs` work runs here (no
//! timers or sockets, which would need the never-driven runtime's driver). Crash
//! recovery at start and the S3 uploader's reads stay on the shared pool.

use std::sync::Arc;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinError;

/// A cheap handle to the spool's threads; the threads stop when the last handle goes.
#[derive(Clone)]
pub struct SpoolIo {
    handle: Handle,
    _owner: Arc<Owner>,
}

struct Owner(Option<Runtime>);

impl Drop for Owner {
    fn drop(&mut self) {
        // A runtime dropped inside async code panics; this one has no tasks to wait for
        // (a write in progress finishes on its own thread, its result unread).
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl SpoolIo {
    /// At most `threads` (at least 1) run spool work at once; more wait in a queue.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let rt = Builder::new_current_thread()
            .max_blocking_threads(threads.max(1))
            .thread_name("liverec-spool")
            .build()?;
        Ok(Self {
            handle: rt.handle().clone(),
            _owner: Arc::new(Owner(Some(rt))),
        })
    }

    /// Runs `f` on a spool thread; an `Err` only if `f` panicked.
    pub async fn run<T, F>(&self, f: F) -> Result<T, JoinError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.handle.spawn_blocking(f).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_runs_on_at_most_the_configured_threads_and_all_of_it_completes() {
        let io = SpoolIo::new(2).expect("pool");
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..12)
            .map(|i| {
                let (io, running, most) = (io.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    io.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                        (i, std::thread::current().name().map(str::to_string))
                    })
                    .await
                })
            })
            .collect();
        for (i, job) in jobs.into_iter().enumerate() {
            let (got, name) = job.await.expect("task").expect("job");
            assert_eq!(got, i);
            assert_eq!(name.as_deref(), Some("liverec-spool"));
        }
        assert_eq!(most.load(Ordering::SeqCst), 2, "two threads, twelve jobs");
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_pool_goes_on() {
        let io = SpoolIo::new(1).expect("pool");
        assert!(io.run(|| panic!("a bug in a write")).await.is_err());
        assert_eq!(io.run(|| 7).await.expect("next job"), 7);
        // Dropped inside async code without a panic.
        drop(io);
    }
}

//! The thread that loads key stores, builds indexes and frees the old ones,
//! at a lower CPU priority than the request workers.
//!
//! A million-key load is about two seconds of one core's work. On the
//! blocking pool it ran at the workers' priority, so on a busy machine it
//! took its share of the CPU from requests (PERFORMANCE.md: p99 +19 % with
//! a core to spare, nearly x2 on the worker's own core). Here it runs on one
//! thread of its own whose nice value is raised once at start: the scheduler
//! then runs it when the workers leave time, and still gives it about a
//! tenth of a core they fully use, so a reload (and the revocations it
//! carries) is late under saturation, never starved. `SCHED_IDLE` would
//! protect requests further but could postpone a revocation for as long as
//! the machine stays busy. The priority cannot be handed back once lowered,
//! so this cannot be the blocking pool's threads. The `unsafe` here and in
//! `trim` are the crate's only: FFI calls that take no pointer.
//!
//! Freeing an index of a million keys takes tens of milliseconds; whoever
//! drops the last reference pays it, which may be a request worker that held
//! a snapshot across the swap (or the database follower's task). `retire`
//! sends the old index here instead and frees it once it is the last
//! reference.
//!
//! One thread for the whole process: its jobs (file watchers' looks, index
//! builds, usage writes) run one after the other, each short but a full
//! load. Without the thread (it could not be started) they run on the
//! blocking pool as before.

use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The nice value of the loader thread: weight 110 against a worker's 1024
/// (about 10 % of a core both want).
const NICE: i32 = 10;
/// How long a retired index waits for its last reader before the loader
/// leaves it to that reader.
const RETIRE_WAIT: Duration = Duration::from_secs(5);

type Job = Box<dyn FnOnce() + Send>;

/// The job queue, started on first use.
fn queue() -> Option<&'static mpsc::Sender<Job>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let started = std::thread::Builder::new()
                .name("keygate-load".into())
                .spawn(move || {
                    lower_priority();
                    while let Ok(job) = rx.recv() {
                        // A panicking job drops its result sender: the caller
                        // sees it as failed; the thread goes on.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            match started {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the loader thread; loads run on the blocking pool");
                    None
                }
            }
        })
        .as_ref()
}

/// The job did not finish: it panicked.
#[derive(Debug)]
pub struct Lost;

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the load job panicked")
    }
}

/// Runs `f` on the loader thread and waits for its result.
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Lost> {
    let Some(queue) = queue() else {
        return tokio::task::spawn_blocking(f).await.map_err(|_| Lost);
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    if let Err(mpsc::SendError(job)) = queue.send(job) {
        // The thread is gone (it cannot exit while the queue lives, but
        // a job still runs somewhere rather than nowhere).
        tokio::task::spawn_blocking(job);
    }
    rx.await.map_err(|_| Lost)
}

/// Frees `old` on the loader thread once no reader holds it any more (or
/// leaves it to its last reader after `RETIRE_WAIT`), then runs `then`.
pub fn retire<T: Send + Sync + 'static>(old: Arc<T>, then: impl FnOnce() + Send + 'static) {
    let job: Job = Box::new(move || {
        free_when_alone(old, RETIRE_WAIT);
        then();
    });
    match queue() {
        Some(q) => {
            // The thread is gone: the job (and the index) is dropped here.
            let _ = q.send(job);
        }
        None => drop(job),
    }
}

/// Drops `old` here if it is, or within `wait` becomes, the last reference.
/// True when it was freed here.
fn free_when_alone<T>(mut old: Arc<T>, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        match Arc::try_unwrap(old) {
            Ok(value) => {
                drop(value);
                return true;
            }
            Err(still_shared) => old = still_shared,
        }
        if Instant::now() >= deadline {
            return false;
        }
        // Readers hold a snapshot for one decision (well under a
        // millisecond); a longer hold is an admin listing.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Raises this thread's nice value (Linux: nice is per thread). Lowering
/// one's own priority needs no privilege; if it fails anyway, the loader
/// runs at normal priority, as the blocking pool did.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: gettid and setpriority take and return integers only; they
    // touch no memory of ours.
    let result = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE)
    };
    if result != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the loader thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_low_priority_thread_and_a_panic_is_an_error() {
        let (name, nice) = run(|| {
            let name = std::thread::current().name().map(str::to_owned);
            #[cfg(target_os = "linux")]
            let nice = current_nice();
            #[cfg(not(target_os = "linux"))]
            let nice = 0;
            (name, nice)
        })
        .await
        .unwrap();
        assert_eq!(name.as_deref(), Some("keygate-load"));
        #[cfg(target_os = "linux")]
        assert_eq!(nice, NICE);
        assert!(run(|| -> u8 { panic!("boom") }).await.is_err());
        // The thread survives a panicking job.
        assert_eq!(run(|| 7).await.unwrap(), 7);
    }

    #[test]
    fn an_old_index_is_freed_by_the_retirer_once_its_last_reader_lets_go() {
        let old = Arc::new(vec![0u8; 16]);
        let reader = old.clone();
        let freed = std::thread::spawn(move || free_when_alone(old, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        drop(reader);
        assert!(freed.join().unwrap(), "the retirer must free it");
        let held = Arc::new(1u8);
        let _reader = held.clone();
        assert!(!free_when_alone(held, Duration::from_millis(5)));
    }

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn current_nice() -> i32 {
        // SAFETY: integers in, an integer out.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }
}

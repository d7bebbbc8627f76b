//! The thread that loads key stores, builds indexes and frees the old ones,
//! at a lower CPU priority than the request workers.
//!
//! A million-key load is about two seconds of one core's work. On the
//! blocking pool it ran at the workers' priority, so on a busy machine it
//! took its share of the CPU from requests (PERFORMANCE.md: p99 +19 % with
//! a core to spare, nearly x2 on the worker's own core). Here it runs on one
//! thread of its own whose nice value is raised by 10 at start: the scheduler
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
//! One thread for the whole process: its jobs (the file store watcher's
//! looks, index builds, usage writes, retired indexes) run one after the
//! other, each short but a full load; so the shutdown's usage write comes
//! after whatever was queued before it. (The certificate watcher stays on
//! the blocking pool.) Without the thread (it could not be started) jobs
//! run on the blocking pool as before.

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
    let (tx, rx) = tokio::sync::oneshot::channel();
    submit(Box::new(move || {
        let _ = tx.send(f());
    }));
    rx.await.map_err(|_| Lost)
}

/// Queues `job` for the loader thread; without one, runs it on the blocking
/// pool (or here, outside a runtime): late rather than never.
fn submit(job: Job) {
    let refused = match queue() {
        Some(q) => q.send(job).err().map(|mpsc::SendError(job)| job),
        None => Some(job),
    };
    if let Some(job) = refused {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(job)),
            Err(_) => job(),
        }
    }
}

/// Frees `old` on the loader thread once no reader holds it any more (or
/// leaves it to its last reader after `RETIRE_WAIT`), then runs `then`.
/// While a reader holds it the job goes back to the end of the queue, so
/// the jobs behind it are not held up.
pub fn retire<T: Send + Sync + 'static>(old: Arc<T>, then: impl FnOnce() + Send + 'static) {
    submit(retire_job(
        old,
        Instant::now() + RETIRE_WAIT,
        Box::new(then),
    ));
}

fn retire_job<T: Send + Sync + 'static>(
    old: Arc<T>,
    deadline: Instant,
    then: Box<dyn FnOnce() + Send>,
) -> Job {
    Box::new(move || match Arc::try_unwrap(old) {
        Ok(value) => {
            drop(value);
            then();
        }
        Err(old) if Instant::now() < deadline => {
            // Requests hold a snapshot for one decision (well under a
            // millisecond); a longer hold is a database change being
            // applied to it.
            std::thread::sleep(Duration::from_millis(1));
            submit(retire_job(old, deadline, then));
        }
        Err(old) => {
            drop(old);
            then();
        }
    })
}

/// Adds `NICE` to this thread's nice value (Linux: nice is per thread), at
/// most 19. Lowering one's own priority needs no privilege; if it fails
/// anyway, the loader runs at the workers' priority, as the blocking pool did.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: gettid, getpriority and setpriority take and return integers
    // only; they touch no memory of ours. (getpriority's -1 is also a valid
    // value; asking about one's own thread cannot fail.)
    let result = unsafe {
        let tid = libc::gettid() as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + NICE).min(19))
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
        #[cfg(target_os = "linux")]
        let ours = current_nice();
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
        assert_eq!(nice, (ours + NICE).min(19), "ten lower than the process");
        let _ = nice;
        assert!(run(|| -> u8 { panic!("boom") }).await.is_err());
        // The thread survives a panicking job.
        assert_eq!(run(|| 7).await.unwrap(), 7);
    }

    /// Says on which thread it was dropped.
    struct Probe(std::sync::mpsc::Sender<Option<String>>);

    impl Drop for Probe {
        fn drop(&mut self) {
            let _ = self
                .0
                .send(std::thread::current().name().map(str::to_owned));
        }
    }

    #[test]
    fn a_retired_index_is_freed_on_the_loader_once_its_last_reader_lets_go() {
        let (dropped, on) = std::sync::mpsc::channel();
        let (then_ran, ran) = std::sync::mpsc::channel();
        let old = Arc::new(Probe(dropped));
        let reader = old.clone();
        retire(old, move || {
            let _ = then_ran.send(());
        });
        assert!(
            ran.recv_timeout(Duration::from_millis(100)).is_err(),
            "it waits for the reader"
        );
        // Other jobs are not held up meanwhile.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(run(|| 5)).unwrap(), 5);
        drop(reader);
        ran.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(on.recv().unwrap().as_deref(), Some("keygate-load"));
    }

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn current_nice() -> i32 {
        // SAFETY: integers in, an integer out.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }
}

//! What a connection's supervisor waits on besides the connection: the
//! drain signal and the timer of its next timeout check. Both are polled
//! only after one of them woke the task, not on each of the task's polls.
//!
//! A task has one waker, so a future polled with it cannot tell who woke it.
//! Polled side by side (as `select!` does), the watchers cost every wake-up
//! of the connection (each read, each upstream answer) a lock in the drain
//! signal's `Notify`, a poll of the timer and `select!`'s own dispatch. Here
//! they get a waker of their own, which records that one of them fired and
//! then wakes the task, as `FuturesUnordered` does for its futures. Counted
//! by callgrind, that took 470 instructions off a refusal (one wake-up) and
//! 660 off a forwarded GET (PERFORMANCE.md, session 10).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// What a watcher saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Watched {
    /// The first watcher (the drain signal) is ready.
    First,
    /// The second (the timer) is ready.
    Second,
}

/// The watchers' waker and what it knows.
pub struct Watchers {
    flag: Arc<Flag>,
    waker: Waker,
    /// The task's waker the flag wakes, as last handed to it.
    task: Option<Waker>,
}

struct Flag {
    /// A watcher's waker was used since the watchers were last polled.
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl Watchers {
    pub fn new() -> Self {
        let flag = Arc::new(Flag {
            fired: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Watchers {
            waker: Waker::from(flag.clone()),
            flag,
            task: None,
        }
    }

    /// Polls `first`, then `second`, with the watchers' waker, if either
    /// may have become ready since they were last polled: one of them woke
    /// the task, the task's waker changed, or `arm` was called (new
    /// watchers, which must be polled once to register). `Pending` costs an
    /// atomic swap otherwise.
    pub fn poll<A, B>(
        &mut self,
        cx: &mut Context<'_>,
        first: Pin<&mut A>,
        second: Pin<&mut B>,
    ) -> Poll<Watched>
    where
        A: Future,
        B: Future,
    {
        let moved = self.task.as_ref().is_none_or(|t| !t.will_wake(cx.waker()));
        if moved {
            let task = cx.waker().clone();
            *self
                .flag
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(task.clone());
            self.task = Some(task);
        }
        // Cleared before polling: a watcher that fires during the polls
        // below wakes the task again and is seen on its next poll.
        if !self.flag.fired.swap(false, Ordering::AcqRel) && !moved {
            return Poll::Pending;
        }
        let mut watchers = Context::from_waker(&self.waker);
        if first.poll(&mut watchers).is_ready() {
            return Poll::Ready(Watched::First);
        }
        if second.poll(&mut watchers).is_ready() {
            return Poll::Ready(Watched::Second);
        }
        Poll::Pending
    }

    /// New watchers follow: the next `poll` polls them.
    pub fn arm(&mut self) {
        self.flag.fired.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, and wakes the last
    /// waker it was polled with when `fire` is called.
    #[derive(Default)]
    struct Probe {
        polls: AtomicUsize,
        ready: AtomicBool,
        waker: Mutex<Option<Waker>>,
    }

    impl Probe {
        fn fire(&self) {
            self.ready.store(true, Ordering::Release);
            if let Some(w) = self
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                w.wake();
            }
        }
    }

    struct Polled<'a>(&'a Probe);

    impl Future for Polled<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.0.polls.fetch_add(1, Ordering::Relaxed);
            if self.0.ready.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            *self.0.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn polls(a: &Probe, b: &Probe) -> (usize, usize) {
        (
            a.polls.load(Ordering::Relaxed),
            b.polls.load(Ordering::Relaxed),
        )
    }

    /// Counts the task's wake-ups.
    #[derive(Default)]
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn watchers_are_polled_once_then_only_after_they_fire() {
        let (a, b) = (Probe::default(), Probe::default());
        let task = Arc::new(Task::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut w = Watchers::new();
        let (mut fa, mut fb) = (Polled(&a), Polled(&b));
        let mut poll = |w: &mut Watchers| w.poll(&mut cx, Pin::new(&mut fa), Pin::new(&mut fb));

        assert_eq!(poll(&mut w), Poll::Pending);
        assert_eq!(polls(&a, &b), (1, 1));
        // Woken by the connection, not a watcher: neither is polled.
        for _ in 0..5 {
            assert_eq!(poll(&mut w), Poll::Pending);
        }
        assert_eq!(polls(&a, &b), (1, 1));

        // The second fires: the task is woken, and both are looked at.
        b.fire();
        assert_eq!(task.0.load(Ordering::Relaxed), 1);
        assert_eq!(poll(&mut w), Poll::Ready(Watched::Second));
        assert_eq!(polls(&a, &b), (2, 2));

        // New watchers: armed, they are polled at once.
        b.ready.store(false, Ordering::Release);
        w.arm();
        assert_eq!(poll(&mut w), Poll::Pending);
        assert_eq!(polls(&a, &b), (3, 3));
        a.fire();
        assert_eq!(task.0.load(Ordering::Relaxed), 2);
        assert_eq!(poll(&mut w), Poll::Ready(Watched::First));
    }

    #[test]
    fn a_new_task_waker_has_the_watchers_polled_and_is_the_one_woken() {
        let a = Probe::default();
        let b = Probe::default();
        let (first, second) = (Arc::new(Task::default()), Arc::new(Task::default()));
        let mut w = Watchers::new();
        let (mut fa, mut fb) = (Polled(&a), Polled(&b));
        for task in [&first, &second] {
            let waker = Waker::from(Arc::clone(task));
            let mut cx = Context::from_waker(&waker);
            assert!(
                w.poll(&mut cx, Pin::new(&mut fa), Pin::new(&mut fb))
                    .is_pending()
            );
        }
        assert_eq!(a.polls.load(Ordering::Relaxed), 2);
        a.fire();
        assert_eq!(first.0.load(Ordering::Relaxed), 0);
        assert_eq!(second.0.load(Ordering::Relaxed), 1);
    }
}

//! Per-connection activity, shared by the connection's I/O wrapper, its
//! requests and its supervisor, which turns it into the two client timeouts:
//!
//! - `header_read_timeout`: from accept, or from the first byte of a new
//!   request on a kept-alive connection, until the request head is complete;
//! - `idle_timeout`: a kept-alive connection with no request in progress and
//!   no byte of a new one; and, while a response is being sent, a client
//!   that accepts no byte of it for that long (it stopped reading).
//!
//! A timer armed whenever the server waits for a head (as hyper's was) would
//! cut every idle kept-alive connection at `header_read_timeout`; hence this.
//!
//! Nothing here wakes the supervisor: it polls at its deadlines (see
//! `Deadline::check_at`), so the request path pays a few relaxed atomic
//! operations and no task wake-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Shared state of one client connection.
#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds since `accepted` when the connection last became idle.
    idle_since_ms: AtomicU64,
    /// Milliseconds since `accepted`, plus one, of the first byte read since
    /// it became idle; 0 when none.
    first_read_ms: AtomicU64,
    h2: AtomicBool,
    /// Milliseconds since `accepted`, plus one, since when writes to the
    /// client have been blocked (its receive window full); 0 when not.
    write_blocked_ms: AtomicU64,
}

/// Which limit applies next, and when it runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Requests in progress: no client timeout applies.
    None,
    HeaderRead(Instant),
    Idle(Instant),
    /// A response is waiting for a client that reads nothing.
    SendStalled(Instant),
}

impl Deadline {
    /// True when the limit has run out at `now`.
    pub fn expired(self, now: Instant) -> bool {
        match self {
            Deadline::None => false,
            Deadline::HeaderRead(t) | Deadline::Idle(t) | Deadline::SendStalled(t) => t <= now,
        }
    }

    /// When the supervisor should look again. Nothing wakes it when a
    /// request ends or a new head starts, so while busy or idle it looks every
    /// half `header_read`: a stalled head is cut within 1.5 × the timeout.
    pub fn check_at(self, now: Instant, header_read: Duration, idle: Duration) -> Instant {
        match self {
            // Busy: a stalled send may start at any moment.
            Deadline::None => now + header_read.min(idle) / 2,
            // Also for the first head: once it arrives, the request may stall
            // its send, and nothing wakes the supervisor then.
            Deadline::HeaderRead(t) => t.min(now + header_read.min(idle) / 2),
            Deadline::Idle(t) | Deadline::SendStalled(t) => t.min(now + header_read / 2),
        }
    }
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            first_read_ms: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            write_blocked_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Called by the I/O wrapper after every successful read.
    pub fn on_read(&self) {
        if self.first_read_ms.load(Ordering::Relaxed) == 0 {
            self.first_read_ms
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// Called by the I/O wrapper when a write to the client would block.
    pub fn on_write_blocked(&self) {
        if self.write_blocked_ms.load(Ordering::Relaxed) == 0 {
            self.write_blocked_ms
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// Called by the I/O wrapper when a write to the client made progress.
    pub fn on_write_progress(&self) {
        if self.write_blocked_ms.load(Ordering::Relaxed) != 0 {
            self.write_blocked_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Marks a request as started; the returned guard marks it done when the
    /// response body has been sent (or dropped).
    pub fn begin(self: &Arc<Self>, h2: bool) -> InFlight {
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// The limit in force now.
    pub fn deadline(&self, header_read: Duration, idle: Duration) -> Deadline {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return match self.write_blocked_ms.load(Ordering::Relaxed) {
                0 => Deadline::None,
                ms => Deadline::SendStalled(self.accepted + Duration::from_millis(ms - 1) + idle),
            };
        }
        if self.requests.load(Ordering::Relaxed) == 0 {
            return Deadline::HeaderRead(self.accepted + header_read);
        }
        let idle_since =
            self.accepted + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        if self.h2.load(Ordering::Relaxed) {
            // HTTP/2 pings and settings are not request heads.
            return Deadline::Idle(idle_since + idle);
        }
        match self.first_read_ms.load(Ordering::Relaxed) {
            0 => Deadline::Idle(idle_since + idle),
            ms => Deadline::HeaderRead(self.accepted + Duration::from_millis(ms - 1) + header_read),
        }
    }
}

/// A request in progress on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.idle_since_ms.store(a.now_ms(), Ordering::Relaxed);
            a.first_read_ms.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(10);
    const I: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn first_request_is_bounded_by_the_header_timeout_from_accept() {
        let a = Activity::new();
        assert_eq!(a.deadline(H, I), Deadline::HeaderRead(a.accepted + H));
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_requests_suspend_timeouts() {
        let a = Activity::new();
        let guard = a.begin(false);
        assert_eq!(a.deadline(H, I), Deadline::None);
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(guard);
        assert_eq!(
            a.deadline(H, I),
            Deadline::Idle(a.accepted + Duration::from_secs(100) + I)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn first_byte_of_a_new_request_starts_the_header_timeout() {
        let a = Activity::new();
        drop(a.begin(false));
        tokio::time::advance(Duration::from_secs(30)).await;
        a.on_read();
        tokio::time::advance(Duration::from_secs(1)).await;
        a.on_read();
        assert_eq!(
            a.deadline(H, I),
            Deadline::HeaderRead(a.accepted + Duration::from_secs(30) + H)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_gets_the_idle_timeout() {
        let a = Activity::new();
        let _busy = a.begin(false);
        tokio::time::advance(Duration::from_secs(5)).await;
        a.on_write_blocked();
        tokio::time::advance(Duration::from_secs(1)).await;
        a.on_write_blocked();
        let stalled = Deadline::SendStalled(a.accepted + Duration::from_secs(5) + I);
        assert_eq!(a.deadline(H, I), stalled);
        a.on_write_progress();
        assert_eq!(a.deadline(H, I), Deadline::None);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_reads_do_not_start_a_header_timeout() {
        let a = Activity::new();
        drop(a.begin(true));
        a.on_read();
        assert_eq!(a.deadline(H, I), Deadline::Idle(a.accepted + I));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_checked_often_enough_to_catch_a_stalled_head() {
        let now = Instant::now();
        let idle = Deadline::Idle(now + I);
        assert_eq!(idle.check_at(now, H, I), now + H / 2);
        assert_eq!(Deadline::None.check_at(now, H, I), now + H / 2);
        assert!(Deadline::HeaderRead(now).expired(now));
        assert!(!Deadline::None.expired(now + I));
    }
}

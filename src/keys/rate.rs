//! Rate limits: the `N/s|min|h` spelling a key or the config carries, the
//! GCRA arithmetic that decides one request, and the lock-free cell that
//! holds one bucket's state. Pure: the caller passes the time.
//!
//! GCRA (the generic cell rate algorithm, as in governor and redis-cell)
//! keeps one number per bucket, the theoretical arrival time (TAT): the
//! time at which the bucket would be full again. A limit of N per period
//! spaces requests `T = period / N` apart and lets N through at once; a
//! request at `now` is allowed when `max(TAT, now) + T - now <= N * T`,
//! and then moves TAT there. One atomic word, one compare-and-swap.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The unit a limit counts per.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Per {
    Second,
    Minute,
    Hour,
}

impl Per {
    pub const fn seconds(self) -> u64 {
        match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
        }
    }

    const fn suffix(self) -> &'static str {
        match self {
            Per::Second => "s",
            Per::Minute => "min",
            Per::Hour => "h",
        }
    }
}

/// `N` requests per second, minute or hour; the bucket holds `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub count: u32,
    pub per: Per,
}

/// The largest N accepted: a million per second is beyond any one key's
/// sensible rate, and keeps every product below in range.
pub const MAX_COUNT: u32 = 1_000_000;

impl RateLimit {
    pub fn period(self) -> Duration {
        Duration::from_secs(self.per.seconds())
    }

    /// GCRA's spacing `T` between requests, in nanoseconds (at least 1).
    pub fn emission_ns(self) -> u64 {
        (self.per.seconds() * 1_000_000_000 / u64::from(self.count)).max(1)
    }

    /// How far ahead of now TAT may be after an allowed request: N * T.
    pub fn tolerance_ns(self) -> u64 {
        self.emission_ns() * u64::from(self.count)
    }
}

impl FromStr for RateLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("rate limit {s:?} must be N/s, N/min or N/h, such as \"100/min\"");
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let per = match unit {
            "s" => Per::Second,
            "min" => Per::Minute,
            "h" => Per::Hour,
            _ => return Err(bad()),
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let count: u32 = n
            .parse()
            .ok()
            .filter(|c| (1..=MAX_COUNT).contains(c))
            .ok_or_else(|| format!("rate limit {s:?}: N must be 1 to {MAX_COUNT}"))?;
        Ok(RateLimit { count, per })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per.suffix())
    }
}

/// One request's verdict from a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gcra {
    /// Allowed: requests still allowed right after this one, and nanoseconds
    /// until the bucket is full again.
    Allowed { remaining: u64, full_in_ns: u64 },
    /// Refused: nanoseconds until one request would be allowed.
    Limited { wait_ns: u64 },
}

/// Decides a request at `now` on a bucket whose TAT is `tat` (all in
/// nanoseconds on one clock): the verdict and, when allowed, the new TAT.
pub fn gcra(tat: u64, now: u64, limit: RateLimit) -> (Gcra, Option<u64>) {
    let t = limit.emission_ns();
    let tolerance = limit.tolerance_ns();
    let new_tat = tat.max(now).saturating_add(t);
    let ahead = new_tat - now;
    if ahead > tolerance {
        return (
            Gcra::Limited {
                wait_ns: ahead - tolerance,
            },
            None,
        );
    }
    let verdict = Gcra::Allowed {
        remaining: (tolerance - ahead) / t,
        full_in_ns: ahead,
    };
    (verdict, Some(new_tat))
}

/// One bucket, shared by every request that counts against it. `pending`
/// and `active` serve the fleet sync (`crate::limits::shared`): requests
/// consumed here and not yet reported, and whether the sync tracks this
/// cell.
#[derive(Debug, Default)]
pub struct RateCell {
    tat: AtomicU64,
    pending: AtomicU64,
    active: AtomicBool,
    /// The limit last checked against (its `T`), for the sync to pass on.
    emission_ns: AtomicU64,
}

impl RateCell {
    /// Checks and, when allowed, consumes one request: a compare-and-swap
    /// loop on one word, no lock.
    pub fn check(&self, now: u64, limit: RateLimit) -> Gcra {
        let t = limit.emission_ns();
        if self.emission_ns.load(Ordering::Relaxed) != t {
            // The limit changed (a store reload): what the old limit had
            // consumed counts at most as a full bucket of the new one, or
            // raising 10/h to 100/s would still wait out the hour.
            self.emission_ns.store(t, Ordering::Relaxed);
            self.tat
                .fetch_min(now.saturating_add(limit.tolerance_ns()), Ordering::Relaxed);
        }
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let (verdict, new_tat) = gcra(tat, now, limit);
            let Some(new_tat) = new_tat else {
                return verdict;
            };
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return verdict,
                Err(seen) => tat = seen,
            }
        }
    }

    /// Gives back one request consumed by `check` (another limit on the
    /// same request refused it).
    pub fn refund(&self, limit: RateLimit) {
        let t = limit.emission_ns();
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.saturating_sub(t))
            });
    }

    /// Counts one consumed request for the fleet sync. Returns true when
    /// the cell was not tracked yet: the caller registers it.
    pub fn note_consumed(&self, limit: RateLimit) -> bool {
        let t = limit.emission_ns();
        if self.emission_ns.load(Ordering::Relaxed) != t {
            self.emission_ns.store(t, Ordering::Relaxed);
        }
        // SeqCst pairs with `deactivate`: either this sees `active` false
        // (and registers the cell), or the sync sees the pending count.
        self.pending.fetch_add(1, Ordering::SeqCst);
        !self.active.load(Ordering::SeqCst) && !self.active.swap(true, Ordering::SeqCst)
    }

    /// Takes the requests consumed since the last call (the sync reports them).
    pub fn take_pending(&self) -> u64 {
        self.pending.swap(0, Ordering::SeqCst)
    }

    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::SeqCst)
    }

    pub fn emission(&self) -> u64 {
        self.emission_ns.load(Ordering::Relaxed)
    }

    pub fn tat(&self) -> u64 {
        self.tat.load(Ordering::Relaxed)
    }

    /// Moves TAT to at least `tat` (what the fleet has consumed, learnt
    /// from the sync); never back.
    pub fn raise_tat(&self, tat: u64) {
        self.tat.fetch_max(tat, Ordering::Relaxed);
    }

    /// True when the bucket is full at `now` and nothing waits to be
    /// reported: the sync may stop tracking it.
    pub fn is_idle(&self, now: u64) -> bool {
        self.pending() == 0 && self.tat() <= now
    }

    /// The sync stops tracking the cell. Returns false when the caller must
    /// keep it: a request came in meanwhile and did not register it again.
    pub fn deactivate(&self) -> bool {
        self.active.store(false, Ordering::SeqCst);
        if self.pending() == 0 {
            return true;
        }
        // True: that request registered the cell itself; drop this copy.
        self.active.swap(true, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    fn lim(s: &str) -> RateLimit {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn spelling_round_trips_and_bad_spellings_say_why() {
        for s in ["1/s", "100/min", "1000000/h", "5/s"] {
            assert_eq!(lim(s).to_string(), s);
        }
        for (s, why) in [
            ("10", "must be N/s"),
            ("10/sec", "must be N/s"),
            ("10/m", "must be N/s"),
            ("/s", "must be N/s"),
            ("-1/s", "must be N/s"),
            ("+1/s", "must be N/s"),
            (" 1/s", "must be N/s"),
            ("0/s", "1 to 1000000"),
            ("1000001/s", "1 to 1000000"),
            ("99999999999999999999/s", "1 to 1000000"),
        ] {
            let e = s.parse::<RateLimit>().err().unwrap_or_default();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn a_full_bucket_lets_n_through_at_once_then_one_per_t() {
        let l = lim("3/s");
        let cell = RateCell::default();
        let now = 10 * S;
        let mut remaining = vec![];
        for _ in 0..3 {
            match cell.check(now, l) {
                Gcra::Allowed { remaining: r, .. } => remaining.push(r),
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(remaining, vec![2, 1, 0]);
        let Gcra::Limited { wait_ns } = cell.check(now, l) else {
            panic!("the fourth request at once must be refused")
        };
        assert_eq!(wait_ns, l.emission_ns());
        // One T later, exactly one more.
        assert!(matches!(
            cell.check(now + wait_ns, l),
            Gcra::Allowed { remaining: 0, .. }
        ));
        assert!(matches!(cell.check(now + wait_ns, l), Gcra::Limited { .. }));
        // A refund gives that one back.
        cell.refund(l);
        assert!(matches!(cell.check(now + wait_ns, l), Gcra::Allowed { .. }));
    }

    #[test]
    fn a_new_limit_takes_effect_at_once() {
        let hourly = lim("10/h");
        let cell = RateCell::default();
        let now = 10 * S;
        while matches!(cell.check(now, hourly), Gcra::Allowed { .. }) {}
        // Spent for an hour at 10/h; at 100/s, one request per 10 ms.
        let fast = lim("100/s");
        assert!(matches!(cell.check(now, fast), Gcra::Limited { .. }));
        assert!(matches!(
            cell.check(now + fast.emission_ns(), fast),
            Gcra::Allowed { .. }
        ));
    }

    #[test]
    fn fleet_consumption_only_moves_the_bucket_forward() {
        let l = lim("10/s");
        let cell = RateCell::default();
        cell.raise_tat(5 * S + 10 * l.emission_ns());
        // The fleet used the whole bucket: nothing at 5 s.
        assert!(matches!(cell.check(5 * S, l), Gcra::Limited { .. }));
        cell.raise_tat(S);
        assert!(matches!(cell.check(5 * S, l), Gcra::Limited { .. }));
    }

    #[test]
    fn tracking_registers_a_cell_once_and_lets_idle_ones_go() {
        let l = lim("10/s");
        let cell = RateCell::default();
        assert!(cell.note_consumed(l));
        assert!(!cell.note_consumed(l));
        assert_eq!(cell.take_pending(), 2);
        assert_eq!(cell.emission(), l.emission_ns());
        // Idle (bucket full, nothing pending): let go; the next request
        // registers it again.
        assert!(cell.is_idle(0));
        assert!(cell.deactivate());
        assert!(cell.note_consumed(l));
        assert!(!cell.is_idle(0));
        // A request after the decision to let go: kept.
        assert!(!cell.deactivate());
        assert!(!cell.note_consumed(l));
    }

    proptest! {
        /// Over any sequence of requests at any times, a bucket never lets
        /// through more than N + (elapsed / T), and refuses only when that
        /// many were already let through in the window the TAT spans.
        #[test]
        fn never_more_than_the_limit(
            count in 1u32..50,
            per in prop_oneof![Just(Per::Second), Just(Per::Minute)],
            gaps in proptest::collection::vec(0u64..200_000_000, 1..300),
        ) {
            let l = RateLimit { count, per };
            let cell = RateCell::default();
            let start = 1_000 * S;
            let mut now = start;
            let mut allowed = 0u64;
            for gap in gaps {
                now += gap;
                match cell.check(now, l) {
                    Gcra::Allowed { remaining, full_in_ns } => {
                        allowed += 1;
                        prop_assert!(remaining < u64::from(count));
                        prop_assert!(full_in_ns <= l.tolerance_ns());
                    }
                    Gcra::Limited { wait_ns } => {
                        prop_assert!(wait_ns > 0 && wait_ns <= l.emission_ns());
                        // Refused only when the bucket is really empty.
                        prop_assert!(cell.tat() + l.emission_ns() > now + l.tolerance_ns());
                    }
                }
                let bound = u64::from(count) + (now - start) / l.emission_ns();
                prop_assert!(allowed <= bound, "{allowed} > {bound}");
            }
        }
    }
}

//! `Stall`: a silence timer for a body being relayed, armed only when a read
//! would block and disarmed by the next byte. A body that streams without
//! pause costs no timer at all; one that goes quiet for `limit` is cut. Used
//! for the upstream's response body (`upstream.read_timeout`) and for the
//! client's request body (`server.body_timeout`).

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

pub struct Stall {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Stall {
    pub fn new(limit: Duration) -> Self {
        Stall {
            limit,
            timer: None,
            armed: false,
        }
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// The body produced something (or ended): the silence is over.
    pub fn progressed(&mut self) {
        self.armed = false;
    }

    /// The body has nothing now: starts the silence timer if it is not
    /// running, and returns true once the silence has lasted `limit` (the
    /// timer is registered with `cx` until then).
    pub fn waiting(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            self.armed = true;
            let now = Instant::now();
            // An absurd limit saturates instead of overflowing.
            let deadline = now
                .checked_add(self.limit)
                .unwrap_or(now + Duration::from_secs(86_400 * 365));
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }
}

//! Kept-alive connections to the one upstream, over hyper's
//! `client::conn::http1`: no per-request task, no hashing of a pool key, one
//! short uncontended lock to take or return a connection.
//!
//! hyper-util's general client pools per host and, after each response
//! whose connection is not yet ready, spawns a task to wait for it. A
//! sidecar has one upstream, so the pool is a LIFO stack: the connection
//! used last is the one most likely still open and warm in the caches.
//!
//! A connection goes back on the stack when its exchange is whole: the
//! request body fully handed over and the response body read to its end
//! (`Lease::release`). One cut short (an error, a timeout, a client gone,
//! an upgrade) is dropped with its lease, and hyper closes it. Taking one
//! waits for hyper to say it is ready (the connection task may not have
//! turned the page yet) or closed (the upstream said `Connection: close`,
//! or went away while idle), and a closed one is thrown away.
//!
//! An HTTP/2 upstream (`upstream.protocol = "http2"`, gRPC's) shares one
//! connection between all requests, as streams: its lease holds a clone of
//! the sender and its release does nothing. A closed one is replaced by
//! the next request that finds it so.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use tokio::time::Instant;

use super::body::BodyError;
use super::upstream::SentBody;

/// Opens a connection to the upstream (TCP, and TLS for `https://`),
/// within `connect_timeout`, and starts HTTP/1.1 or HTTP/2 on it.
pub type Connect = Box<
    dyn Fn()
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Sender, BodyError>> + Send>>
        + Send
        + Sync,
>;

/// A connection's sending half.
pub enum Sender {
    H1(http1::SendRequest<SentBody>),
    H2(http2::SendRequest<SentBody>),
}

type TrySend = Result<Response<Incoming>, TrySendError<Request<SentBody>>>;

impl Sender {
    /// Sends a request; a request the connection never wrote comes back in
    /// the error, to be sent on another.
    pub fn try_send(
        &mut self,
        req: Request<SentBody>,
    ) -> impl std::future::Future<Output = TrySend> + Send + 'static {
        use futures_util::future::Either;
        match self {
            Sender::H1(s) => Either::Left(s.try_send_request(req)),
            Sender::H2(s) => Either::Right(s.try_send_request(req)),
        }
    }
}

/// A kept-alive connection that can tell it has been closed.
pub trait Reusable: Send + 'static {
    fn is_closed(&self) -> bool;
}

impl Reusable for http1::SendRequest<SentBody> {
    fn is_closed(&self) -> bool {
        http1::SendRequest::is_closed(self)
    }
}

struct Idle<T> {
    conn: T,
    since: Instant,
}

/// Idle connections, the last returned on top; shared by hyper's HTTP/1.1
/// connections here and keygate's own (`h1`).
pub struct Stack<T> {
    idle: Mutex<Vec<Idle<T>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

pub struct Pool {
    stack: Arc<Stack<http1::SendRequest<SentBody>>>,
    /// HTTP/2: the one connection every request shares (`None` for an
    /// HTTP/1.1 upstream, which never takes this lock).
    shared: Option<Mutex<Option<http2::SendRequest<SentBody>>>>,
    connect: Connect,
}

/// A connection taken from the pool for one exchange.
pub struct Lease {
    sender: Option<Sender>,
    stack: Weak<Stack<http1::SendRequest<SentBody>>>,
}

/// No connection could be had (the reason is logged at debug level).
#[derive(Debug)]
pub struct ConnectFailed;

impl Pool {
    /// `http2`: the upstream speaks HTTP/2 and `connect` opens shared
    /// connections (`Sender::H2`).
    pub fn new(connect: Connect, max_idle: usize, idle_timeout: Duration, http2: bool) -> Pool {
        let stack = Stack::new(max_idle, idle_timeout);
        Pool {
            stack,
            shared: http2.then(|| Mutex::new(None)),
            connect,
        }
    }

    /// The most recently returned connection that is still open, or a new
    /// one. `now` is the caller's clock reading (one fewer per request); it
    /// is read again after a wait for a connection that turned out closed.
    pub async fn checkout(&self, mut now: Instant) -> Result<Lease, ConnectFailed> {
        let shared = self.shared.as_ref().and_then(|m| {
            let guard = m.lock().unwrap_or_else(|e| e.into_inner());
            guard.as_ref().filter(|s| !s.is_closed()).cloned()
        });
        if let Some(mut h2) = shared {
            // Waits for a free stream; an error means the connection ended.
            if h2.ready().await.is_ok() {
                return Ok(self.lease(Sender::H2(h2)));
            }
        }
        while let Some(mut sender) = self.stack.pop(now) {
            // Ready at once, or in the time the connection task takes to
            // finish the previous exchange; an error means it is closed.
            if sender.ready().await.is_ok() {
                return Ok(self.lease(Sender::H1(sender)));
            }
            now = Instant::now();
        }
        self.fresh().await
    }

    /// A new connection, never a pooled one: for a request that a pooled
    /// connection closed under before it was written.
    pub async fn fresh(&self) -> Result<Lease, ConnectFailed> {
        let sender = (self.connect)().await.map_err(|e| {
            tracing::debug!(error = %e, "no connection to the upstream");
            ConnectFailed
        })?;
        if let (Sender::H2(h2), Some(m)) = (&sender, &self.shared) {
            *m.lock().unwrap_or_else(|e| e.into_inner()) = Some(h2.clone());
        }
        Ok(self.lease(sender))
    }

    fn lease(&self, sender: Sender) -> Lease {
        Lease {
            sender: Some(sender),
            stack: Arc::downgrade(&self.stack),
        }
    }

    /// Connections waiting in the pool now.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.stack.len()
    }
}

impl<T: Reusable> Stack<T> {
    /// Idle connections past `idle_timeout` are closed even when no request
    /// comes to find them: a sweeper runs until the stack is dropped.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Arc<Self> {
        let stack = Arc::new(Stack {
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&stack);
            let every = idle_timeout.max(Duration::from_millis(100));
            rt.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(stack) => stack.sweep(Instant::now()),
                        None => return,
                    }
                }
            });
        }
        stack
    }

    /// The most recently returned connection idle for at most
    /// `idle_timeout` at `now` (older ones are dropped on the way).
    pub fn pop(&self, now: Instant) -> Option<T> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if now.saturating_duration_since(idle.since) <= self.idle_timeout {
                return Some(idle.conn);
            }
        }
    }

    /// Keeps `conn` for the next exchange, unless the stack is full.
    /// Whether it is still open is asked when it is taken, just before use,
    /// the moment that matters (both engines do, at `pop`): asking here as
    /// well cost a readiness poll per request, about 150 instructions.
    pub fn push(&self, conn: T) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Connections waiting now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    fn sweep(&self, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Oldest first: the stack's bottom.
        let fresh_from = idle
            .iter()
            .position(|c| now.duration_since(c.since) <= self.idle_timeout && !c.conn.is_closed())
            .unwrap_or(idle.len());
        idle.drain(..fresh_from);
    }
}

impl Lease {
    pub fn sender(&mut self) -> Option<&mut Sender> {
        self.sender.as_mut()
    }

    /// The exchange is whole: the connection can carry the next one (an
    /// HTTP/2 connection never left the pool).
    pub fn release(mut self) {
        let (Some(Sender::H1(sender)), Some(stack)) = (self.sender.take(), self.stack.upgrade())
        else {
            return;
        };
        stack.push(sender);
    }

    /// A lease with nothing to give back: the exchange's connection went
    /// with its response body (`h1`).
    pub fn none() -> Lease {
        Lease {
            sender: None,
            stack: Weak::new(),
        }
    }
}

#[cfg(test)]
mod tests;

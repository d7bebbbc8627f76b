//! keygate: an authenticating reverse proxy for API keys.
//!
//! A request's life: `server` accepts a connection (TLS optional, HTTP/1.1 or
//! HTTP/2) and hands each request to `proxy`, which loads the current key
//! index snapshot once, asks `policy::decide` what to do, and either answers
//! itself (a JSON rejection, a CORS preflight) or forwards the request to the
//! upstream with identity headers, streaming both bodies. `reload` watches the
//! key store and swaps in a new index atomically; `metrics` counts every
//! decision and serves the ops listener.
//!
//! Module map:
//! - `keys`: tokens, hashes, records, the key set, store files, the index (pure, but `store`'s I/O)
//! - `config`: config file shapes and validation (pure, but `Config::load`)
//! - `policy`: the decision table as one pure function
//! - `proxy`: the hyper service: decide, reject or forward; header rewriting
//! - `server`: listeners, TLS, connection limits and timeouts, graceful shutdown
//! - `reload`: store and certificate watching, one reload entry point
//! - `metrics`: every metric name, the registry, the ops listener
//! - `cli`: the `keygate` command line

pub mod cli;
pub mod config;
pub mod keys;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod store;

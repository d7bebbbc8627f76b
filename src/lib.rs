//! keygate: an authenticating reverse proxy for API keys.
//!
//! A request's life: `server` accepts a connection (TLS optional, HTTP/1.1 or
//! HTTP/2) and hands each request to `proxy`, which loads the current key
//! index snapshot once, asks `policy::decide` what to do, and either answers
//! itself (`proxy::respond`: a JSON rejection, a CORS preflight, a failure)
//! or forwards the request to the upstream with identity headers, streaming
//! both bodies. `reload` follows the key store (`store`: a file or
//! PostgreSQL) and publishes a new index atomically; `metrics` counts every
//! decision and serves the ops listener.
//!
//! Module map (README's "Architecture" has who may use whom, checked by
//! `tests/architecture.rs`):
//! - `keys`: tokens, hashes, records, the key set, the store file format, the index (pure)
//! - `config`: config file shapes and validation (pure: the CLI reads the file)
//! - `policy`: the decision table as one pure function
//! - `limits`: rate limits (row 7): lock-free buckets, the fleet sync through Redis
//! - `metrics`: every metric name, the registry, the ops listener
//! - `store`: the file store and the PostgreSQL store, behind `Store`
//! - `reload`: one publish path for both stores; certificate watching
//! - `proxy`: one request: decide, answer or forward; header rewriting
//! - `server`: listeners, TLS, connection limits and timeouts, graceful shutdown
//! - `admin`: the admin API and web console (admin tokens, sessions, audit)
//! - `cli`: the `keygate` command line

pub mod admin;
pub mod cli;
pub mod config;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod store;

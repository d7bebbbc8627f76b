//! Test harness: a real upstream (in-process hyper server), the real
//! `keygate` binary on ephemeral ports, key fixtures and small clients, so
//! that a test reads upstream → gateway → client in a few lines.

#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod client;
pub mod gateway;
pub mod pg;
pub mod redis;
pub mod upstream;
pub mod webdriver;

pub use client::*;
pub use gateway::*;
pub use upstream::*;

/// Asserts a command exited 0, showing its stderr if not.
pub fn assert_succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

//! systemd's readiness protocol (sd_notify(3)): a datagram of `KEY=value`
//! lines to the socket named by `$NOTIFY_SOCKET`, when systemd set one
//! (`Type=notify`). keygate says `READY=1` once its key index is loaded and
//! it serves, and `STOPPING=1` when it starts draining. A few lines over a
//! Unix datagram socket, rather than a crate.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// True when systemd asked to be notified.
pub fn wanted() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
}

/// Sends `state` to `$NOTIFY_SOCKET`, if set; a failure is logged, never
/// fatal (systemd then times the start out by itself).
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()) else {
        return;
    };
    if let Err(e) = send(&socket, state) {
        tracing::warn!(error = %e, socket = ?socket, "cannot notify systemd");
    }
}

fn send(socket: &OsStr, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    match socket.as_bytes().strip_prefix(b"@") {
        // An abstract socket (systemd's default is a path under /run).
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), socket)?;
        }
    }
    Ok(())
}

//! Obtaining the listening sockets: bound from the configured `listen` addresses, or handed
//! over by systemd socket activation (`LISTEN_PID`/`LISTEN_FDS`, `sd_listen_fds(3)`).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrLike, SockaddrStorage,
};

/// The first file descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;
/// More passed sockets than this is certainly a mistake in the unit file.
const MAX_LISTEN_FDS: usize = 64;
/// The accept queue: a burst of local clients larger than this waits in SYN retries.
const BACKLOG: i32 = 128;

/// Why the daemon has no listening sockets.
#[derive(Debug)]
#[non_exhaustive]
pub enum ListenError {
    /// Occurs when `listen` is empty (or names only IPv6 addresses on a host without IPv6)
    /// and no socket was passed by systemd.
    NoAddresses,
    /// Occurs when a configured address cannot be bound (in use, not permitted, no such
    /// address).
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The step that failed (`socket`, `setsockopt`, `bind`, `listen`).
        step: &'static str,
        /// The cause.
        source: Errno,
    },
    /// Occurs when `LISTEN_FDS`/`LISTEN_PID` are set for us but what they describe is not a
    /// set of listening TCP sockets.
    Activation {
        /// What is wrong.
        message: String,
    },
}

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenError::NoAddresses => f.write_str("no listen addresses configured"),
            ListenError::Bind { addr, step, .. } => write!(f, "cannot listen on {addr}: {step}"),
            ListenError::Activation { message } => {
                write!(f, "unusable systemd socket activation: {message}")
            }
        }
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ListenError::Bind { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Binds every address: `SO_REUSEADDR` so a restart does not wait for TIME_WAIT, and
/// `IPV6_V6ONLY` on IPv6 sockets so `127.0.0.1:25` and `[::1]:25` (or `0.0.0.0` and `[::]`)
/// can be bound side by side. Sockets are close-on-exec and non-blocking. On a host with
/// IPv6 disabled, `[::1]` or `[::]` beside an IPv4 address is skipped with a warning, so the
/// default `listen` works there too; any other failure is an error.
pub fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, ListenError> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        match bind_one(*addr) {
            Ok(l) => listeners.push(l),
            Err(ListenError::Bind {
                source: Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL,
                ..
            }) if ipv6_disabled_default(addrs, *addr) => {
                // The default pair on a host with IPv6 turned off: serve IPv4 alone rather
                // than refuse to start.
                log::warn!("IPv6 is not available; not listening on {addr}");
            }
            Err(e) => return Err(e),
        }
    }
    if listeners.is_empty() {
        return Err(ListenError::NoAddresses);
    }
    Ok(listeners)
}

/// Whether `addr` is the IPv6 loopback or wildcard address and an IPv4 address is also
/// configured, so that skipping it on a host without IPv6 still leaves the daemon reachable
/// the way the default `listen` intends.
fn ipv6_disabled_default(all: &[SocketAddr], addr: SocketAddr) -> bool {
    match addr {
        SocketAddr::V6(v6) => {
            (v6.ip().is_loopback() || v6.ip().is_unspecified()) && all.iter().any(|a| a.is_ipv4())
        }
        SocketAddr::V4(_) => false,
    }
}

fn bind_one(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let fail = |step: &'static str| move |source: Errno| ListenError::Bind { addr, step, source };
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(fail("socket"))?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(fail("setsockopt"))?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(fail("setsockopt"))?;
    }
    let sa = SockaddrStorage::from(addr);
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &sa).map_err(fail("bind"))?;
    let backlog = Backlog::new(BACKLOG).map_err(fail("listen"))?;
    socket::listen(&fd, backlog).map_err(fail("listen"))?;
    Ok(TcpListener::from(fd))
}

/// The sockets systemd passed to this process, or `None` when it passed none (`LISTEN_PID`
/// absent or naming another process). Each one must be a listening TCP socket; each is made
/// non-blocking and close-on-exec. The variables are removed from the environment so that
/// nothing we might start inherits them.
pub fn from_systemd() -> Result<Option<Vec<TcpListener>>, ListenError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let found = match (pid, fds) {
        (Some(pid), Some(fds)) => {
            if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
                // Meant for another process (our parent, say): not ours to take.
                None
            } else {
                Some(fds)
            }
        }
        _ => None,
    };
    // SAFETY-relevant: the daemon is still single-threaded here, so changing the environment
    // cannot race with another thread reading it.
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    let Some(fds) = found else {
        return Ok(None);
    };
    let activation = |message: String| ListenError::Activation { message };
    let n: usize = fds
        .trim()
        .parse()
        .map_err(|_| activation(format!("LISTEN_FDS={fds:?} is not a number")))?;
    if n == 0 || n > MAX_LISTEN_FDS {
        return Err(activation(format!("LISTEN_FDS={n} is out of range")));
    }
    let mut listeners = Vec::with_capacity(n);
    for i in 0..n {
        let fd = LISTEN_FDS_START + i as RawFd;
        listeners.push(adopt(fd)?);
    }
    Ok(Some(listeners))
}

/// Takes ownership of one inherited descriptor after checking what it is.
fn adopt(fd: RawFd) -> Result<TcpListener, ListenError> {
    let activation = |message: String| ListenError::Activation { message };
    // Check that the descriptor is open and is a socket before claiming it: taking ownership
    // of a closed or foreign descriptor would be undefined behaviour.
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|e| activation(format!("fd {fd} is not open ({e})")))?;
    if !link.to_string_lossy().starts_with("socket:") {
        return Err(activation(format!(
            "fd {fd} is {}, not a socket",
            link.display()
        )));
    }
    // SAFETY: systemd hands descriptors LISTEN_FDS_START.. to us alone; we checked above that
    // this one is open, and nothing else in the process owns it (std opens nothing there
    // before main, and we adopt each descriptor once).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let ty = socket::getsockopt(&owned, sockopt::SockType)
        .map_err(|e| activation(format!("fd {fd}: SO_TYPE: {e}")))?;
    if ty != SockType::Stream {
        return Err(activation(format!("fd {fd} is not a stream socket")));
    }
    let listening = socket::getsockopt(&owned, sockopt::AcceptConn)
        .map_err(|e| activation(format!("fd {fd}: SO_ACCEPTCONN: {e}")))?;
    if !listening {
        return Err(activation(format!("fd {fd} is not listening")));
    }
    let addr: SockaddrStorage = socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&owned))
        .map_err(|e| activation(format!("fd {fd}: getsockname: {e}")))?;
    match addr.family() {
        Some(AddressFamily::Inet) | Some(AddressFamily::Inet6) => {}
        _ => return Err(activation(format!("fd {fd} is not an IPv4 or IPv6 socket"))),
    }
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| activation(format!("fd {fd}: FD_CLOEXEC: {e}")))?;
    let listener = TcpListener::from(owned);
    listener
        .set_nonblocking(true)
        .map_err(|e| activation(format!("fd {fd}: O_NONBLOCK: {e}")))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_ipv6_loopback_coexist_on_one_port() {
        let first = bind_all(&["127.0.0.1:0".parse().unwrap()]).unwrap();
        let port = first[0].local_addr().unwrap().port();
        // IPV6_V6ONLY keeps [::1]:port from claiming the IPv4 side too. Where the machine has
        // no IPv6 at all, binding fails with EADDRNOTAVAIL, which is not what this checks.
        match bind_all(&[format!("[::1]:{port}").parse().unwrap()]) {
            Ok(v6) => assert_eq!(v6[0].local_addr().unwrap().port(), port),
            Err(ListenError::Bind {
                source: Errno::EADDRNOTAVAIL | Errno::EAFNOSUPPORT,
                ..
            }) => {}
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn port_in_use_is_a_bind_error() {
        let first = bind_all(&["127.0.0.1:0".parse().unwrap()]).unwrap();
        let addr = first[0].local_addr().unwrap();
        let err = bind_all(&[addr]).unwrap_err();
        assert!(
            matches!(
                err,
                ListenError::Bind {
                    source: Errno::EADDRINUSE,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn only_the_ipv6_half_of_a_mixed_default_may_be_skipped() {
        let v4: SocketAddr = "127.0.0.1:25".parse().unwrap();
        let v6: SocketAddr = "[::1]:25".parse().unwrap();
        let any6: SocketAddr = "[::]:25".parse().unwrap();
        let other6: SocketAddr = "[2001:db8::1]:25".parse().unwrap();
        assert!(ipv6_disabled_default(&[v4, v6], v6));
        assert!(ipv6_disabled_default(&[v4, any6], any6));
        assert!(!ipv6_disabled_default(&[v6], v6), "nothing would be left");
        assert!(
            !ipv6_disabled_default(&[v4, other6], other6),
            "explicit address"
        );
        assert!(!ipv6_disabled_default(&[v4, v6], v4));
    }

    #[test]
    fn empty_list_is_refused() {
        assert!(matches!(bind_all(&[]), Err(ListenError::NoAddresses)));
    }
}

//! systemd socket activation (sd_listen_fds(3)): the listening sockets passed in fds 3.. with
//! `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`, matched to the configured listeners by address.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use socket2::{Socket, Type};

/// The first descriptor systemd passes.
const LISTEN_FDS_START: RawFd = 3;

/// Why the passed sockets cannot be used; longhaul does not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("error: socket activation: LISTEN_FDS={0:?} is not a number")]
    BadCount(String),
    #[error("error: socket activation: fd {fd}{name} is not a listening TCP socket{why}")]
    NotTcp {
        fd: RawFd,
        name: String,
        why: String,
    },
    #[error(
        "error: socket activation: fd {fd}{name} listens on {addr}, which is not in server.listen, server.tls_listen or admin.listen"
    )]
    Unmatched {
        fd: RawFd,
        name: String,
        addr: SocketAddr,
    },
}

/// The listening sockets this process was given and has not yet used.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<Passed>,
}

/// One passed socket: its descriptor number and name (for messages) and its local address.
#[derive(Debug)]
struct Passed {
    fd: RawFd,
    name: Option<String>,
    addr: SocketAddr,
    socket: Socket,
}

/// ` (name)` after the descriptor number in messages, when systemd named the socket.
fn label(name: &Option<String>) -> String {
    name.as_ref().map_or(String::new(), |n| format!(" ({n})"))
}

impl Inherited {
    /// No passed sockets: every listener is bound.
    pub fn none() -> Inherited {
        Inherited::default()
    }

    /// The sockets systemd passed this process, if `LISTEN_PID` names it. The variables are
    /// cleared either way, so processes longhaul starts do not take them for theirs. Call before
    /// any thread is started.
    pub fn from_env() -> Result<Inherited, ActivationError> {
        let for_us = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            == Some(std::process::id());
        let count = std::env::var("LISTEN_FDS").ok();
        let names = std::env::var("LISTEN_FDNAMES").ok();
        let count = match (for_us, count) {
            (true, Some(count)) => count
                .trim()
                .parse::<RawFd>()
                .map_err(|_| ActivationError::BadCount(count.clone()))?,
            _ => 0,
        };
        let fds = claim_passed_fds(count);
        let names: Vec<Option<String>> = names
            .map(|n| n.split(':').map(|s| Some(s.to_string())).collect())
            .unwrap_or_default();
        let passed = fds
            .into_iter()
            .enumerate()
            .map(|(i, (fd, owned))| (fd, names.get(i).cloned().flatten(), owned))
            .collect();
        Inherited::from_fds(passed)
    }

    /// Checks that each of `fds` (number, name, descriptor) is a listening TCP socket.
    pub fn from_fds(
        fds: Vec<(RawFd, Option<String>, OwnedFd)>,
    ) -> Result<Inherited, ActivationError> {
        let mut sockets = Vec::new();
        for (fd, name, owned) in fds {
            let not_tcp = |why: String| ActivationError::NotTcp {
                fd,
                name: label(&name),
                why,
            };
            let socket = Socket::from(owned);
            let addr = tcp_listener_addr(&socket).map_err(not_tcp)?;
            socket
                .set_cloexec(true)
                .and_then(|()| socket.set_nonblocking(true))
                .map_err(|e| not_tcp(format!(": {e}")))?;
            sockets.push(Passed {
                fd,
                name,
                addr,
                socket,
            });
        }
        Ok(Inherited { sockets })
    }

    /// An error for the first passed socket whose address is none of `configured`.
    pub fn check_matched(&self, configured: &[SocketAddr]) -> Result<(), ActivationError> {
        match self.sockets.iter().find(|p| !configured.contains(&p.addr)) {
            Some(p) => Err(ActivationError::Unmatched {
                fd: p.fd,
                name: label(&p.name),
                addr: p.addr,
            }),
            None => Ok(()),
        }
    }

    /// The passed socket listening on `addr`, if any (non-blocking), removed from the set.
    pub fn take(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let i = self.sockets.iter().position(|p| p.addr == addr)?;
        let passed = self.sockets.remove(i);
        tracing::info!(fd = passed.fd, name = passed.name.as_deref().unwrap_or(""), %addr, "using a socket passed by systemd");
        Some(passed.socket.into())
    }

    /// How many passed sockets have not been taken.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

/// The local address of a listening TCP socket, or why it is not one.
fn tcp_listener_addr(socket: &Socket) -> Result<SocketAddr, String> {
    let stream = socket.r#type().map_err(|e| format!(": {e}"))? == Type::STREAM;
    let listening = socket.is_listener().map_err(|e| format!(": {e}"))?;
    let addr = socket.local_addr().map_err(|e| format!(": {e}"))?;
    match (stream, listening, addr.as_socket()) {
        (true, true, Some(addr)) => Ok(addr),
        _ => Err(String::new()),
    }
}

/// Takes ownership of fds 3..3+`count` and clears the activation variables.
#[allow(unsafe_code)]
fn claim_passed_fds(count: RawFd) -> Vec<(RawFd, OwnedFd)> {
    // SAFETY: only called once, from `from_env` before any other thread runs (the contract
    // of `from_env`), so nothing reads the environment concurrently.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    (LISTEN_FDS_START..LISTEN_FDS_START.saturating_add(count.max(0)))
        .map(|fd| {
            // SAFETY: sd_listen_fds(3): with LISTEN_PID naming this process, fds 3..3+LISTEN_FDS
            // were opened for it by its starter and nothing else in the process owns them; the
            // variables are cleared above, so each is adopted once.
            (fd, unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener_fd() -> (SocketAddr, OwnedFd) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (listener.local_addr().unwrap(), OwnedFd::from(listener))
    }

    #[test]
    fn a_passed_socket_is_taken_by_its_address() {
        let (addr, fd) = listener_fd();
        let mut inherited = Inherited::from_fds(vec![(3, None, fd)]).unwrap();
        let taken = inherited.take(addr).map(|l| l.local_addr().unwrap());
        assert_eq!((taken, inherited.len()), (Some(addr), 0));
    }

    #[test]
    fn a_passed_socket_on_no_configured_address_is_an_error_naming_it() {
        let (addr, fd) = listener_fd();
        let inherited = Inherited::from_fds(vec![(3, Some("web".into()), fd)]).unwrap();
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let e = inherited.check_matched(&[other]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "error: socket activation: fd 3 (web) listens on {addr}, which is not in server.listen, server.tls_listen or admin.listen"
            )
        );
    }

    #[test]
    fn a_socket_that_is_not_listening_is_refused() {
        let socket = Socket::new(socket2::Domain::IPV4, Type::STREAM, None).unwrap();
        let e = Inherited::from_fds(vec![(4, None, OwnedFd::from(socket))]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "error: socket activation: fd 4 is not a listening TCP socket"
        );
    }
}

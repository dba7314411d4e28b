//! Listening sockets this process did not bind: those systemd passes (sd_listen_fds(3): fds 3..
//! with `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) and those the old process hands over at an
//! upgrade ([`crate::upgrade`]), matched to the configured listeners by role and address.

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

/// What a listening socket serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `[server] listen`
    Listen,
    /// `[server] tls_listen`
    TlsListen,
    /// `[admin] listen`
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Listen => "listen",
            Role::TlsListen => "tls_listen",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [Role::Listen, Role::TlsListen, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == text)
    }
}

/// The listening sockets this process was given and has not yet used.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<Passed>,
}

/// One passed socket: its descriptor number and name (for messages), its local address, and,
/// for a handed-over one, its role and the configured address it was bound for.
#[derive(Debug)]
struct Passed {
    fd: RawFd,
    name: Option<String>,
    addr: SocketAddr,
    handed: Option<(Role, SocketAddr)>,
    socket: Socket,
}

impl Passed {
    /// Whether this socket serves the listener configured as `role` on `configured`. A socket
    /// from systemd has no role and is matched by address alone.
    fn serves(&self, role: Role, configured: SocketAddr) -> bool {
        match self.handed {
            Some((r, was)) => r == role && (was == configured || self.addr == configured),
            None => self.addr == configured,
        }
    }
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
        Inherited::checked(
            fds.into_iter()
                .map(|(fd, name, owned)| (fd, name, None, owned)),
        )
    }

    /// The sockets an old process handed over at an upgrade, each with its role and the
    /// configured address it was bound for.
    pub fn from_handed(
        handed: Vec<(Role, SocketAddr, OwnedFd)>,
    ) -> Result<Inherited, ActivationError> {
        Inherited::checked(handed.into_iter().map(|(role, configured, owned)| {
            use std::os::fd::AsRawFd;
            let fd = owned.as_raw_fd();
            (
                fd,
                Some(role.as_str().to_string()),
                Some((role, configured)),
                owned,
            )
        }))
    }

    fn checked(
        fds: impl Iterator<Item = (RawFd, Option<String>, Option<(Role, SocketAddr)>, OwnedFd)>,
    ) -> Result<Inherited, ActivationError> {
        let mut sockets = Vec::new();
        for (fd, name, handed, owned) in fds {
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
                handed,
                socket,
            });
        }
        Ok(Inherited { sockets })
    }

    /// An error for the first socket from systemd whose address is none of `configured`.
    pub fn check_matched(&self, configured: &[SocketAddr]) -> Result<(), ActivationError> {
        let unmatched = |p: &&Passed| p.handed.is_none() && !configured.contains(&p.addr);
        match self.sockets.iter().find(unmatched) {
            Some(p) => Err(ActivationError::Unmatched {
                fd: p.fd,
                name: label(&p.name),
                addr: p.addr,
            }),
            None => Ok(()),
        }
    }

    /// Every socket serving the listener configured as `role` on `configured` (non-blocking),
    /// removed from the set: one from systemd, or one per worker of the old process.
    pub fn take_all(&mut self, role: Role, configured: SocketAddr) -> Vec<std::net::TcpListener> {
        let (taken, rest) = std::mem::take(&mut self.sockets)
            .into_iter()
            .partition::<Vec<_>, _>(|p| p.serves(role, configured));
        self.sockets = rest;
        for p in &taken {
            let from = if p.handed.is_some() {
                "the old process"
            } else {
                "systemd"
            };
            tracing::info!(fd = p.fd, name = p.name.as_deref().unwrap_or(""), addr = %p.addr,
                role = role.as_str(), from, "using a passed listening socket");
        }
        taken.into_iter().map(|p| p.socket.into()).collect()
    }

    /// Closes the sockets no listener took (an upgrade whose config dropped an address),
    /// logging each.
    pub fn close_unused(&mut self) {
        for p in self.sockets.drain(..) {
            tracing::warn!(fd = p.fd, addr = %p.addr, "a passed listening socket matches no configured listener; closed (a client that connects to it before the old process, if any, exits is reset)");
        }
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
        let taken: Vec<_> = inherited
            .take_all(Role::Listen, addr)
            .iter()
            .map(|l| l.local_addr().unwrap())
            .collect();
        assert_eq!((taken, inherited.len()), (vec![addr], 0));
    }

    #[test]
    fn handed_sockets_are_taken_by_role_and_configured_address() {
        let configured: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (listen, listen_fd) = listener_fd();
        let (_, admin_fd) = listener_fd();
        let mut inherited = Inherited::from_handed(vec![
            (Role::Listen, configured, listen_fd),
            (Role::Admin, configured, admin_fd),
        ])
        .unwrap();
        let taken: Vec<_> = inherited
            .take_all(Role::Listen, configured)
            .iter()
            .map(|l| l.local_addr().unwrap())
            .collect();
        assert_eq!((taken, inherited.len()), (vec![listen], 1));
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

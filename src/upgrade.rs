//! Binary upgrade in place (SIGUSR2): the running process starts the binary at its path with the
//! same arguments, hands it every listening socket over a Unix socket, and waits until it is ready.
//!
//! The hand-over channel is a datagram socket pair; the new process finds its end in fd
//! `LONGHAUL_UPGRADE_FD`. Old to new: datagrams of `<role> <configured address>` lines, each with
//! the matching descriptors (SCM_RIGHTS), then `end`. New to old: `ready <pid>` once it serves.
//! Old to new: `go` (the new process takes over: pid file, systemd) or `abort` (it was late, or
//! the old one is stopping: the new one drains and exits). Only the old process decides.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use sendfd::{RecvWithFd, SendWithFd};

use crate::activation::{ActivationError, Inherited, Role};

/// The environment variable naming the new process's end of the hand-over channel.
pub const FD_ENV: &str = "LONGHAUL_UPGRADE_FD";

/// Descriptors per datagram: below the kernel's SCM_MAX_FD (253).
const FDS_PER_MESSAGE: usize = 200;

/// Longest hand-over datagram: `FDS_PER_MESSAGE` lines of a role and an address.
const MAX_MESSAGE: usize = 16 * 1024;

/// How long the new process waits for the sockets once it has read its configuration.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a new process that was not ready gets to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long a ready new process waits for `go`: the old one answers at once, so no answer
/// means it is gone or stuck, and the new one does not take over on its own.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

const GO: &[u8] = b"go";
const ABORT: &[u8] = b"abort";

/// Why an upgrade did not happen; the running process keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot hand the listening sockets over: {0}")]
    HandOver(std::io::Error),
    #[error("the new process exited with {0} before it was ready (its log says why)")]
    Exited(ExitStatus),
    #[error("the new process was not ready within {0:?}; it was stopped")]
    NotReady(Duration),
    #[error("this process was asked to stop; the new process was stopped")]
    Stopping,
    #[error("the old process called the upgrade off (it gave up waiting, or is stopping)")]
    Aborted,
    #[error("the old process did not answer within {0:?}")]
    NoAnswer(Duration),
    #[error("the hand-over from the old process failed: {0}")]
    Receive(String),
    #[error(transparent)]
    Sockets(#[from] ActivationError),
}

/// How this process was started: the binary's path (read at start, so an upgrade runs the file
/// now installed there) and the arguments after it.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl Launch {
    /// This process's binary path and arguments. The path is the one it was started by
    /// (`argv[0]`, made absolute, or found on `PATH`), not the file it resolved to: with a
    /// symlinked install, an upgrade runs what the link names now.
    pub fn current() -> std::io::Result<Launch> {
        let mut args = std::env::args_os();
        let started_as = args.next().map(PathBuf::from);
        let program = match started_as.and_then(|p| resolve_program(&p)) {
            Some(program) => program,
            None => std::env::current_exe()?,
        };
        Ok(Launch {
            program,
            args: args.collect(),
        })
    }
}

/// `argv0` as an absolute path: relative to the working directory if it names a directory,
/// else the first match on `PATH`, as the shell found it.
fn resolve_program(argv0: &std::path::Path) -> Option<PathBuf> {
    if argv0.components().count() > 1 {
        return std::path::absolute(argv0).ok();
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(argv0))
        .find(|candidate| candidate.is_absolute() && candidate.is_file())
}

/// A listening socket to hand over: what it serves, the configured address it was bound for
/// (`127.0.0.1:0` stays that, so the new process finds it under its own config), and a
/// duplicate of its descriptor.
#[derive(Debug)]
pub struct HandedSocket {
    pub role: Role,
    pub configured: SocketAddr,
    pub fd: OwnedFd,
}

/// Starts `launch` with the hand-over channel, sends it `sockets`, and waits up to `timeout`
/// for it to report ready, then tells it to go on; returns its pid. A new process that exits,
/// is late, or is still starting when `stopping` completes is told to abort and is stopped.
pub async fn start_successor(
    launch: &Launch,
    sockets: &[HandedSocket],
    timeout: Duration,
    stopping: impl Future<Output = ()>,
) -> Result<u32, UpgradeError> {
    let (ours, theirs) = UnixDatagram::pair().map_err(UpgradeError::HandOver)?;
    ours.set_nonblocking(true).map_err(UpgradeError::HandOver)?;
    let channel = tokio::net::UnixDatagram::from_std(ours).map_err(UpgradeError::HandOver)?;
    let mut child = spawn_with_channel(launch, &theirs)?;
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid, program = %launch.program.display(), sockets = sockets.len(),
        "upgrade: started the new process; handing over the listening sockets");
    let ready = tokio::time::timeout(timeout, async {
        tokio::select! {
            sent = hand_over_then_wait_ready(&channel, sockets) => match sent {
                // The channel fails when the new process has exited: its status says why.
                Err(UpgradeError::HandOver(e)) => {
                    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                        Ok(Ok(status)) => Err(UpgradeError::Exited(status)),
                        _ => Err(UpgradeError::HandOver(e)),
                    }
                }
                other => other,
            },
            exited = child.wait() => Err(match exited {
                Ok(status) => UpgradeError::Exited(status),
                Err(e) => UpgradeError::HandOver(e),
            }),
            () = stopping => Err(UpgradeError::Stopping),
        }
    })
    .await
    .unwrap_or(Err(UpgradeError::NotReady(timeout)));
    // The one decision: once `go` is sent the new process owns the service; otherwise it must
    // not take over, whether or not it reported ready meanwhile.
    let outcome = match ready {
        Ok(()) => send(&channel, GO, &[]).await.map(|()| pid),
        Err(e) => Err(e),
    };
    if outcome.is_err() {
        let _ = channel.try_send(ABORT);
        stop(&mut child).await;
    }
    outcome
}

/// The new process, with the channel's other end left open across exec in the fd it is named by.
#[allow(unsafe_code)]
fn spawn_with_channel(
    launch: &Launch,
    theirs: &UnixDatagram,
) -> Result<tokio::process::Child, UpgradeError> {
    let fd = theirs.as_raw_fd();
    let mut command = tokio::process::Command::new(&launch.program);
    command
        .args(&launch.args)
        .env(FD_ENV, fd.to_string())
        .stdin(std::process::Stdio::null());
    // SAFETY: fcntl(F_SETFD) is async-signal-safe; it only clears FD_CLOEXEC on the channel's
    // end, which this process owns and keeps open until the spawn returns.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().map_err(|source| UpgradeError::Spawn {
        program: launch.program.clone(),
        source,
    })
}

/// Sends every socket, then waits for `ready`.
async fn hand_over_then_wait_ready(
    channel: &tokio::net::UnixDatagram,
    sockets: &[HandedSocket],
) -> Result<(), UpgradeError> {
    for chunk in sockets.chunks(FDS_PER_MESSAGE) {
        let lines: String = chunk
            .iter()
            .map(|s| format!("{} {}\n", s.role.as_str(), s.configured))
            .collect();
        let fds: Vec<RawFd> = chunk.iter().map(|s| s.fd.as_raw_fd()).collect();
        send(channel, lines.as_bytes(), &fds).await?;
    }
    send(channel, b"end", &[]).await?;
    let mut buf = [0u8; 64];
    loop {
        let n = channel
            .recv(&mut buf)
            .await
            .map_err(UpgradeError::HandOver)?;
        if buf[..n].starts_with(b"ready") {
            return Ok(());
        }
    }
}

async fn send(
    channel: &tokio::net::UnixDatagram,
    bytes: &[u8],
    fds: &[RawFd],
) -> Result<(), UpgradeError> {
    loop {
        channel.writable().await.map_err(UpgradeError::HandOver)?;
        match channel.send_with_fd(bytes, fds) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(UpgradeError::HandOver(e)),
        }
    }
}

/// SIGTERM (a new process that already accepts drains what it took), SIGKILL after a grace.
#[allow(unsafe_code)]
async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child, which is not yet reaped, so the pid is still its.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    let exited = match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(exited) => exited,
        Err(_) => match child.kill().await {
            Ok(()) => child.wait().await,
            Err(e) => Err(e),
        },
    };
    match exited {
        Ok(status) => tracing::info!(%status, "upgrade: the new process stopped"),
        Err(e) => tracing::warn!(error = %e, "upgrade: cannot reap the new process"),
    }
}

/// How often `longhaul upgrade` reads the pid file.
const POLL_STEP: Duration = Duration::from_millis(50);

/// What `longhaul upgrade` saw.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot read the pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pid file {0} names no process")]
    NoPid(PathBuf),
    #[error("process {pid} (from {path}) is not running")]
    NotRunning { pid: u32, path: PathBuf },
    #[error("process {0} exited and no new process took over")]
    Vanished(u32),
    #[error(
        "process {pid} still serves after {waited:?}: the upgrade failed or is late; its log says why"
    )]
    NotUpgraded { pid: u32, waited: Duration },
}

/// `longhaul upgrade`: SIGUSR2 to the process the pid file names, then waits up to `timeout`
/// for the file to name a new, running process. Returns (old pid, new pid).
pub fn request(pid_file: &std::path::Path, timeout: Duration) -> Result<(u32, u32), RequestError> {
    let old = read_pid(pid_file)?.ok_or_else(|| RequestError::NoPid(pid_file.into()))?;
    if !signal(old, libc::SIGUSR2) {
        return Err(RequestError::NotRunning {
            pid: old,
            path: pid_file.into(),
        });
    }
    // Polls in steps, outside any runtime: the CLI command has no tokio clock to pause.
    let steps = timeout.as_millis() / POLL_STEP.as_millis();
    for _ in 0..steps {
        std::thread::sleep(POLL_STEP);
        match read_pid(pid_file) {
            Ok(Some(new)) if new != old && signal(new, 0) => return Ok((old, new)),
            _ if !signal(old, 0) => return Err(RequestError::Vanished(old)),
            _ => {}
        }
    }
    Err(RequestError::NotUpgraded {
        pid: old,
        waited: timeout,
    })
}

/// The pid in `path`; `None` when the file is empty or not a number (mid-rename it is whole).
fn read_pid(path: &std::path::Path) -> Result<Option<u32>, RequestError> {
    let text = std::fs::read_to_string(path).map_err(|source| RequestError::PidFile {
        path: path.into(),
        source,
    })?;
    Ok(text.trim().parse().ok().filter(|&pid| pid > 1))
}

/// kill(2): `signal` 0 only asks whether the process exists. A zombie counts as gone.
#[allow(unsafe_code)]
fn signal(pid: u32, signal: libc::c_int) -> bool {
    // 0 and 1 are never a longhaul: kill(0, ...) would signal this process group.
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 1 {
        return false;
    }
    // SAFETY: kill(2) has no memory effects; a wrong pid at worst signals the wrong process,
    // which is what a pid file read by an operator risks too.
    let exists = unsafe { libc::kill(pid, signal) } == 0;
    exists && !is_zombie(pid)
}

fn is_zombie(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The new process's side: the sockets its predecessor handed over, and the channel on which it
/// reports ready.
pub struct Predecessor {
    channel: UnixDatagram,
}

impl Predecessor {
    /// When started by an upgrade (`LONGHAUL_UPGRADE_FD` set), receives the listening sockets.
    /// Clears the variable, so processes this one starts do not take it for theirs. Call before
    /// any thread is started.
    #[allow(unsafe_code)]
    pub fn from_env() -> Result<Option<(Predecessor, Inherited)>, UpgradeError> {
        let Some(value) = std::env::var_os(FD_ENV) else {
            return Ok(None);
        };
        // SAFETY: called once, before any other thread runs (this function's contract).
        unsafe { std::env::remove_var(FD_ENV) };
        let fd: RawFd = value
            .to_str()
            .and_then(|v| v.parse().ok())
            .filter(|&fd| fd > 2)
            .ok_or_else(|| {
                UpgradeError::Receive(format!("{FD_ENV}={value:?} is not a descriptor above 2"))
            })?;
        check_channel(fd)?;
        // SAFETY: the old process opened this descriptor for us and named it in the variable,
        // cleared above, so it is adopted once; nothing else in this process owns it.
        let channel = UnixDatagram::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // The channel must not leak into a process this one starts at its own upgrade.
        socket2::SockRef::from(&channel)
            .set_cloexec(true)
            .map_err(|e| UpgradeError::Receive(e.to_string()))?;
        let sockets = receive(&channel)?;
        let inherited = Inherited::from_handed(sockets)?;
        Ok(Some((Predecessor { channel }, inherited)))
    }

    /// Tells the old process that this one serves, and waits for its answer: `Ok` (`go`) means
    /// this process took over and the old one drains; an error means this one must drain and
    /// exit without taking over (no pid file, no word to systemd).
    pub async fn report_ready(self) -> Result<(), UpgradeError> {
        let io = |e: std::io::Error| UpgradeError::Receive(e.to_string());
        self.channel.set_nonblocking(true).map_err(io)?;
        let channel = tokio::net::UnixDatagram::from_std(self.channel).map_err(io)?;
        let ready = format!("ready {}", std::process::id());
        // `send` names a failure as the old process's (handing sockets over); here it is ours.
        send(&channel, ready.as_bytes(), &[])
            .await
            .map_err(|e| match e {
                UpgradeError::HandOver(e) => io(e),
                other => other,
            })?;
        let mut answer = [0u8; 16];
        match tokio::time::timeout(ANSWER_TIMEOUT, channel.recv(&mut answer)).await {
            Ok(Ok(n)) if &answer[..n] == GO => Ok(()),
            Ok(Ok(_)) => Err(UpgradeError::Aborted),
            Ok(Err(e)) => Err(io(e)),
            Err(_) => Err(UpgradeError::NoAnswer(ANSWER_TIMEOUT)),
        }
    }
}

/// Whether `fd` is an open Unix datagram socket, before this process takes ownership of it.
#[allow(unsafe_code)]
fn check_channel(fd: RawFd) -> Result<(), UpgradeError> {
    // SAFETY: borrowed only for the two queries below; a descriptor that is not open makes them
    // fail with EBADF, which is reported.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let socket = socket2::SockRef::from(&borrowed);
    let is_unix_datagram = socket.r#type().ok() == Some(socket2::Type::DGRAM)
        && socket
            .local_addr()
            .is_ok_and(|a| a.domain() == socket2::Domain::UNIX);
    if is_unix_datagram {
        Ok(())
    } else {
        Err(UpgradeError::Receive(format!(
            "{FD_ENV}={fd} is not a Unix datagram socket"
        )))
    }
}

/// Reads datagrams until `end`: each line's role and configured address, with its descriptor.
#[allow(unsafe_code)]
fn receive(channel: &UnixDatagram) -> Result<Vec<(Role, SocketAddr, OwnedFd)>, UpgradeError> {
    let err = |what: String| UpgradeError::Receive(what);
    channel
        .set_read_timeout(Some(RECEIVE_TIMEOUT))
        .map_err(|e| err(e.to_string()))?;
    let mut sockets = Vec::new();
    let mut bytes = vec![0u8; MAX_MESSAGE];
    let mut fds = [0 as RawFd; FDS_PER_MESSAGE];
    loop {
        let (n, count) = channel
            .recv_with_fd(&mut bytes, &mut fds)
            .map_err(|e| err(e.to_string()))?;
        // SAFETY: recvmsg(2) just installed these `count` descriptors in this process for us.
        let received: Vec<OwnedFd> = fds[..count]
            .iter()
            .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        let text = std::str::from_utf8(&bytes[..n]).map_err(|e| err(e.to_string()))?;
        if text == "end" {
            return Ok(sockets);
        }
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() != received.len() {
            return Err(err(format!(
                "{} descriptors for {} sockets",
                received.len(),
                lines.len()
            )));
        }
        for (line, fd) in lines.into_iter().zip(received) {
            let (role, addr) = parse_line(line).ok_or_else(|| err(format!("bad line {line:?}")))?;
            sockets.push((role, addr, fd));
        }
    }
}

fn parse_line(line: &str) -> Option<(Role, SocketAddr)> {
    let (role, addr) = line.split_once(' ')?;
    Some((Role::parse(role)?, addr.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_over_line_names_the_role_and_configured_address() {
        assert_eq!(
            parse_line("tls_listen 127.0.0.1:0"),
            Some((Role::TlsListen, "127.0.0.1:0".parse().unwrap()))
        );
    }

    #[test]
    fn a_line_with_an_unknown_role_is_refused() {
        assert_eq!(parse_line("metrics 127.0.0.1:9901"), None);
    }

    #[test]
    fn a_pid_file_naming_0_or_1_names_no_process() {
        let dir = std::env::temp_dir().join(format!("longhaul-upgrade-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pid");
        let mut read = Vec::new();
        for text in ["0\n", "1\n", "4242\n"] {
            std::fs::write(&path, text).unwrap();
            read.push(read_pid(&path).unwrap());
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read, [None, None, Some(4242)]);
    }

    #[test]
    fn the_hand_over_descriptor_must_be_a_unix_datagram_socket() {
        let (ours, _theirs) = UnixDatagram::pair().unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let checked = [ours.as_raw_fd(), tcp.as_raw_fd()].map(|fd| check_channel(fd).is_ok());
        assert_eq!(checked, [true, false]);
    }

    #[test]
    fn a_program_started_by_name_is_found_on_path_and_by_path_made_absolute() {
        let by_name = resolve_program(std::path::Path::new("sh")).expect("sh on PATH");
        let relative = resolve_program(std::path::Path::new("./longhaul")).unwrap();
        assert_eq!(
            (by_name.is_absolute(), by_name.ends_with("sh")),
            (true, true)
        );
        assert_eq!(relative, std::env::current_dir().unwrap().join("longhaul"));
    }

    #[test]
    fn sockets_sent_over_the_channel_arrive_with_their_roles() {
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        ours.send_with_fd(b"admin 127.0.0.1:0\n", &[listener.as_raw_fd()])
            .unwrap();
        ours.send(b"end").unwrap();
        let received = receive(&theirs).unwrap();
        let got: Vec<(Role, SocketAddr, SocketAddr)> = received
            .into_iter()
            .map(|(role, configured, fd)| {
                let l = std::net::TcpListener::from(fd);
                (role, configured, l.local_addr().unwrap())
            })
            .collect();
        assert_eq!(
            got,
            vec![(Role::Admin, "127.0.0.1:0".parse().unwrap(), addr)]
        );
    }
}

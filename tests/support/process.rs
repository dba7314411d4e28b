//! Child processes started by tests: a guard that kills and reaps its child on drop and keeps
//! its output lines, and the PR_SET_PDEATHSIG hook so a killed test run leaves nothing behind.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

unsafe extern "C" {
    fn prctl(option: std::ffi::c_int, ...) -> std::ffi::c_int;
}
const PR_SET_PDEATHSIG: std::ffi::c_int = 1;
const SIGKILL: std::ffi::c_ulong = 9;

/// Children get SIGKILL if the test thread that started them dies without its Drop running.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// Sends `signal` to `pid` (a negative pid: to that process group); whether it was delivered.
/// kill(2) directly, so stopping a test's process does not start another one.
pub fn send_signal(pid: i32, signal: libc::c_int) -> bool {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

/// A child process (stdin null, stdout and stderr piped) that is killed and reaped when dropped
/// and dies with the thread that spawned it; the lines of the streams it watches are kept.
pub struct Child {
    name: String,
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Child {
    pub fn spawn(name: &str, cmd: &mut Command) -> Child {
        let child = die_with_parent(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Child {
            name: name.to_string(),
            child,
            lines: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Spawns and collects both stdout and stderr lines, for a server watched by other means.
    pub fn spawn_drained(name: &str, cmd: &mut Command) -> Child {
        let mut child = Child::spawn(name, cmd);
        let (out, err) = (child.take_stdout(), child.take_stderr());
        child.drain(out);
        child.drain(err);
        child
    }

    /// Reads `stream` line by line on a thread, keeping every line, and hands each line to
    /// `first` until it returns a value; panics with the output so far after `timeout`.
    pub fn watch<R, T>(
        &self,
        stream: R,
        timeout: Duration,
        mut first: impl FnMut(&str) -> Option<T>,
    ) -> T
    where
        R: Read + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<String>();
        self.collect(stream, Some(tx));
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = first(&line) {
                        return found;
                    }
                }
                Err(_) => panic!(
                    "{} did not print the expected line within {timeout:?}; output so far:\n{}",
                    self.name,
                    self.output()
                ),
            }
        }
    }

    /// Collects a stream's lines on a thread without waiting for anything.
    pub fn drain<R: Read + Send + 'static>(&self, stream: R) {
        self.collect(stream, None);
    }

    fn collect<R: Read + Send + 'static>(&self, stream: R, tx: Option<mpsc::Sender<String>>) {
        let lines = Arc::clone(&self.lines);
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line.clone());
                if let Some(tx) = &tx {
                    let _ = tx.send(line);
                }
            }
        });
    }

    pub fn take_stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("stdout piped")
    }

    pub fn take_stderr(&mut self) -> ChildStderr {
        self.child.stderr.take().expect("stderr piped")
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (bounded) for the child to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        super::wait_until(timeout, || {
            status = self.try_wait();
            status.is_some()
        });
        status
    }

    /// SIGTERM, then a bounded wait for the exit status; None (and SIGKILL on drop) if the
    /// child outlived `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_wait() {
            return Some(status);
        }
        // Not reaped yet, so the pid is still our child's.
        send_signal(self.child.id() as i32, libc::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Every collected line.
    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The last 40 collected lines.
    pub fn output(&self) -> String {
        let lines = self.lines.lock().unwrap();
        let start = lines.len().saturating_sub(40);
        lines[start..].join("\n")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

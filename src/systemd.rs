//! What longhaul tells systemd (sd_notify(3), `Type=notify`): ready, reloading while an upgrade
//! starts the new binary, the new main pid once it serves, stopping. Without `NOTIFY_SOCKET`, nothing.

use sd_notify::NotifyState;

/// The proxy serves. `new_main_pid`: this process took over from an upgraded one, so systemd
/// must follow it (the unit's `NotifyAccess=all` lets it say so).
pub fn notify_ready(new_main_pid: bool) {
    let pid = std::process::id();
    let states: &[NotifyState<'_>] = if new_main_pid {
        &[NotifyState::MainPid(pid), NotifyState::Ready]
    } else {
        &[NotifyState::Ready]
    };
    send(states);
}

/// An upgrade is under way (`systemctl reload` waits for the next `READY=1`).
pub fn notify_reloading() {
    send(&[NotifyState::Reloading]);
}

/// Draining before exit (not sent by a process that hands over to a new one).
pub fn notify_stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

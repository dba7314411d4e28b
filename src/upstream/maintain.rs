//! Background upkeep of one server's pool: deadpool never reaps idle connections by itself, so
//! this closes expired ones and keeps `min_idle` connections open while the server has traffic.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

use deadpool::managed::Pool;

use super::conn::ConnManager;
use super::server::Server;

/// The sweep runs at least this often, and more often for short idle limits.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(25);

/// Keeps the pool; `warmed` is set once the first round has opened `min_idle` connections (or
/// given up on the first that failed), so a start can wait for a warm pool before it accepts.
pub async fn run(pool: Pool<ConnManager>, server: Arc<Server>, warmed: watch::Sender<bool>) {
    let mut traffic = Traffic::new(&server);
    loop {
        reap_expired(&pool);
        if traffic.recent(&server) {
            warm(&pool, &server).await;
        }
        warmed.send_replace(true);
        let interval = (server.idle_limit() / 4).clamp(MIN_SWEEP_INTERVAL, MAX_SWEEP_INTERVAL);
        tokio::time::sleep(interval).await;
    }
}

/// Whether the server carried requests lately. Warm connections are kept for traffic that is
/// coming; with none for an idle timeout, re-opening them would only churn the backend.
struct Traffic {
    requests_seen: u64,
    last_change: Instant,
}

impl Traffic {
    fn new(server: &Server) -> Traffic {
        Traffic {
            requests_seen: requests(server),
            last_change: Instant::now(),
        }
    }

    fn recent(&mut self, server: &Server) -> bool {
        let now = requests(server);
        if now != self.requests_seen {
            self.requests_seen = now;
            self.last_change = Instant::now();
        }
        self.last_change.elapsed() < server.settings.pool.idle_timeout
    }
}

fn requests(server: &Server) -> u64 {
    server.metrics.requests_new.get() + server.metrics.requests_reused.get()
}

/// Closes idle connections that are closed, too old, too used or idle too long.
fn reap_expired(pool: &Pool<ConnManager>) {
    let removed = pool
        .retain(|conn, _| match conn.expiry() {
            Some(reason) => {
                conn.end(reason);
                false
            }
            None => true,
        })
        .removed;
    drop(removed);
}

/// Opens connections until `min_idle` exist. Holding the new ones together forces the pool to
/// create rather than hand back the same idle connection each time.
async fn warm(pool: &Pool<ConnManager>, server: &Server) {
    let want = server.settings.pool.min_idle;
    let status = pool.status();
    if status.size >= want || status.waiting > 0 || !server.is_available() {
        return;
    }
    let mut held = Vec::with_capacity(want);
    for _ in 0..want {
        match pool.get().await {
            Ok(conn) => held.push(conn),
            Err(e) => {
                tracing::debug!(upstream = %server.upstream, server = %server.address, error = %e,
                    "could not open a warm connection");
                break;
            }
        }
    }
}

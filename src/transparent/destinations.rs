//! Pools per original destination, created on first use from the `[transparent.pool]` template,
//! capped at `max_destinations` (the least recently used idle one is evicted) and swept when idle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::clock;
use crate::config::{Balance, HealthConfig, TcpKeepaliveConfig, TransparentConfig, UpstreamConfig};
use crate::error::ProxyError;
use crate::metrics::{CloseReason, METRICS};
use crate::upstream::Upstream;

struct Entry {
    upstream: Arc<Upstream>,
    last_used_ms: u64,
}

pub struct Destinations {
    settings: TransparentConfig,
    entries: Mutex<HashMap<SocketAddr, Entry>>,
}

impl Destinations {
    pub fn new(settings: TransparentConfig) -> Destinations {
        Destinations {
            settings,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The pool for `dst`, creating it (and evicting an idle one at the cap) when needed.
    pub fn get(&self, dst: SocketAddr, rule: &str) -> Result<Arc<Upstream>, ProxyError> {
        let mut entries = self.entries.lock().expect("not poisoned");
        if let Some(entry) = entries.get_mut(&dst) {
            entry.last_used_ms = clock::now_ms();
            return Ok(entry.upstream.clone());
        }
        if entries.len() >= self.settings.max_destinations && !evict_lru_idle(&mut entries) {
            return Err(ProxyError::TooManyDestinations {
                limit: self.settings.max_destinations,
            });
        }
        let upstream = Arc::new(Upstream::new(
            &self.upstream_config(dst, rule),
            None,
            self.mark(),
        ));
        entries.insert(
            dst,
            Entry {
                upstream: upstream.clone(),
                last_used_ms: clock::now_ms(),
            },
        );
        METRICS.transparent_destinations.set(entries.len() as i64);
        Ok(upstream)
    }

    /// Every destination's upstream, for the admin views.
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        let entries = self.entries.lock().expect("not poisoned");
        entries.values().map(|e| e.upstream.clone()).collect()
    }

    /// Drops pools that have no connection left and were not used for the pool idle timeout.
    pub fn sweep(&self) {
        let idle = self.settings.pool.idle_timeout;
        let mut entries = self.entries.lock().expect("not poisoned");
        entries.retain(|_, e| {
            let keep = clock::since(e.last_used_ms) < idle || has_connections(&e.upstream);
            if !keep {
                e.upstream.close_unused(None, CloseReason::Removed);
            }
            keep
        });
        METRICS.transparent_destinations.set(entries.len() as i64);
    }

    /// Closes every pool (shutdown).
    pub fn close_all(&self) {
        let mut entries = self.entries.lock().expect("not poisoned");
        for (_, e) in entries.drain() {
            e.upstream.close_unused(None, CloseReason::Shutdown);
        }
        METRICS.transparent_destinations.set(0);
    }

    fn mark(&self) -> Option<u32> {
        (self.settings.mark != 0).then_some(self.settings.mark)
    }

    fn upstream_config(&self, dst: SocketAddr, rule: &str) -> UpstreamConfig {
        let t = &self.settings;
        let mut pool = t.pool.clone();
        // Destinations are pooled on first use; nothing is opened ahead of demand.
        pool.min_idle = 0;
        UpstreamConfig {
            name: rule.to_string(),
            servers: vec![dst.to_string()],
            protocol: t.protocol,
            balance: Balance::RoundRobin,
            connect_timeout: t.connect_timeout,
            retry_window: crate::config::default_retry_window(),
            response_timeout: t.response_timeout,
            max_buffered_body_bytes: t.max_buffered_body_bytes,
            pool,
            tcp_keepalive: TcpKeepaliveConfig::default(),
            health: HealthConfig::default(),
            tls: None,
        }
    }
}

fn has_connections(upstream: &Upstream) -> bool {
    upstream.servers.iter().any(|sp| {
        let u = sp.usage();
        u.idle + u.busy + u.waiters > 0
    })
}

/// Evicts the least recently used destination with nothing in flight; false if there is none.
fn evict_lru_idle(entries: &mut HashMap<SocketAddr, Entry>) -> bool {
    let victim = entries
        .iter()
        .filter(|(_, e)| e.upstream.servers.iter().all(|sp| sp.usage().busy == 0))
        .min_by_key(|(_, e)| e.last_used_ms)
        .map(|(addr, _)| *addr);
    match victim.and_then(|addr| entries.remove(&addr)) {
        Some(entry) => {
            entry.upstream.close_unused(None, CloseReason::Removed);
            true
        }
        None => false,
    }
}

//! Picks the server for the next request: round robin, or least connections by the power of two
//! random choices. Ejected servers are skipped unless every server is ejected (panic rule).

use std::cell::Cell;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::ServerPool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    LeastConn,
}

pub struct Balancer {
    strategy: Strategy,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(strategy: Strategy) -> Balancer {
        Balancer {
            strategy,
            next: AtomicUsize::new(0),
        }
    }

    /// The next server: an available one other than `avoid` (the server whose connect just
    /// failed) if there is one, else any available one. When every server is ejected, ejection
    /// is ignored (Envoy's panic rule): sending somewhere beats sending nowhere.
    pub fn pick<'a>(
        &self,
        servers: &'a [Arc<ServerPool>],
        avoid: Option<&ServerPool>,
    ) -> Option<&'a ServerPool> {
        let avoided = |sp: &ServerPool| avoid.is_some_and(|a| std::ptr::eq(a, sp));
        let available = |sp: &ServerPool| sp.server.is_available();
        if let [only] = servers {
            return Some(only);
        }
        self.choose(servers, |sp| available(sp) && !avoided(sp))
            .or_else(|| self.choose(servers, available))
            .or_else(|| self.choose(servers, |sp| !avoided(sp)))
            .or_else(|| self.choose(servers, |_| true))
    }

    fn choose<'a>(
        &self,
        servers: &'a [Arc<ServerPool>],
        eligible: impl Fn(&ServerPool) -> bool,
    ) -> Option<&'a ServerPool> {
        match self.strategy {
            Strategy::RoundRobin => self.round_robin(servers, &eligible),
            Strategy::LeastConn => {
                least_conn(servers, &eligible).or_else(|| self.round_robin(servers, &eligible))
            }
        }
    }

    fn round_robin<'a>(
        &self,
        servers: &'a [Arc<ServerPool>],
        eligible: &impl Fn(&ServerPool) -> bool,
    ) -> Option<&'a ServerPool> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..servers.len())
            .map(|i| &*servers[(start + i) % servers.len()])
            .find(|sp| eligible(sp))
    }
}

/// Two random eligible servers; the one with fewer requests in flight wins.
fn least_conn<'a>(
    servers: &'a [Arc<ServerPool>],
    eligible: &impl Fn(&ServerPool) -> bool,
) -> Option<&'a ServerPool> {
    let n = servers.len();
    let a = &*servers[random_below(n)];
    let b = &*servers[random_below(n)];
    let load = |sp: &ServerPool| sp.server.in_flight.load(Ordering::Relaxed);
    match (eligible(a), eligible(b)) {
        (true, true) => Some(if load(b) < load(a) { b } else { a }),
        (true, false) => Some(a),
        (false, true) => Some(b),
        (false, false) => None,
    }
}

/// A per-thread xorshift generator: balancing needs spread, not cryptographic randomness.
fn random_below(n: usize) -> usize {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0u64) | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x % n as u64) as usize
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HealthConfig, PoolConfig, Protocol, TcpKeepaliveConfig};
    use crate::upstream::server::{Failure, Server, ServerSettings};
    use std::time::Duration;

    /// Pools for servers nobody connects to (min_idle 0), ejected on their first failure.
    fn servers(n: usize) -> Vec<Arc<ServerPool>> {
        let settings = ServerSettings {
            protocol: Protocol::Http10,
            connect_timeout: Duration::from_secs(1),
            pool: PoolConfig {
                min_idle: 0,
                ..PoolConfig::default()
            },
            tcp_keepalive: TcpKeepaliveConfig::default(),
            health: HealthConfig {
                max_failures: 1,
                base_ejection: Duration::from_secs(60),
                ..HealthConfig::default()
            },
            mark: None,
            tls: None,
        };
        (0..n)
            .map(|i| {
                let address = format!("192.0.2.1:{}", 1000 + i);
                Arc::new(ServerPool::new(Server::new(
                    "balance-test",
                    &address,
                    settings.clone(),
                )))
            })
            .collect()
    }

    fn address(sp: Option<&ServerPool>) -> &str {
        sp.map(|sp| sp.server.address.as_str()).unwrap_or("none")
    }

    #[tokio::test]
    async fn a_retry_goes_to_another_server_whatever_the_strategy() {
        let list = servers(3);
        for strategy in [Strategy::RoundRobin, Strategy::LeastConn] {
            let balancer = Balancer::new(strategy);
            for _ in 0..50 {
                let failed = balancer.pick(&list, None).expect("a server");
                let retry = balancer.pick(&list, Some(failed));
                assert_ne!(address(retry), failed.server.address, "{strategy:?}");
            }
        }
    }

    #[tokio::test]
    async fn ejected_servers_are_skipped_while_another_is_available() {
        let list = servers(3);
        list[0].server.record_failure(Failure::Unreachable);
        list[1].server.record_failure(Failure::Unreachable);
        let balancer = Balancer::new(Strategy::RoundRobin);
        for _ in 0..10 {
            assert_eq!(address(balancer.pick(&list, None)), "192.0.2.1:1002");
        }
    }

    #[tokio::test]
    async fn with_every_server_ejected_ejection_is_ignored() {
        let list = servers(2);
        list.iter()
            .for_each(|sp| sp.server.record_failure(Failure::Unreachable));
        assert!(list.iter().all(|sp| !sp.server.is_available()));
        let balancer = Balancer::new(Strategy::LeastConn);
        let picked: std::collections::BTreeSet<&str> = (0..50)
            .map(|_| address(balancer.pick(&list, None)))
            .collect();
        assert_eq!(
            picked.into_iter().collect::<Vec<_>>(),
            ["192.0.2.1:1000", "192.0.2.1:1001"]
        );
    }

    #[tokio::test]
    async fn with_every_server_ejected_a_retry_still_prefers_another_one() {
        let list = servers(2);
        list.iter()
            .for_each(|sp| sp.server.record_failure(Failure::Unreachable));
        let balancer = Balancer::new(Strategy::RoundRobin);
        let retry = balancer.pick(&list, Some(&list[0]));
        assert_eq!(address(retry), "192.0.2.1:1001");
    }
}

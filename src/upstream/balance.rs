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

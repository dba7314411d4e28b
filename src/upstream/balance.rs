//! Picks the server for the next request: round robin, or least connections by the power of two
//! random choices. Ejected servers are skipped; `None` means every server is out of rotation.

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

    pub fn pick<'a>(&self, servers: &'a [Arc<ServerPool>]) -> Option<&'a ServerPool> {
        let n = servers.len();
        if n == 1 {
            let only = &servers[0];
            return only.server.is_available().then_some(&**only);
        }
        match self.strategy {
            Strategy::RoundRobin => self.round_robin(servers),
            Strategy::LeastConn => least_conn(servers).or_else(|| self.round_robin(servers)),
        }
    }

    fn round_robin<'a>(&self, servers: &'a [Arc<ServerPool>]) -> Option<&'a ServerPool> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..servers.len())
            .map(|i| &*servers[(start + i) % servers.len()])
            .find(|sp| sp.server.is_available())
    }
}

/// Two random available servers; the one with fewer requests in flight wins.
fn least_conn(servers: &[Arc<ServerPool>]) -> Option<&ServerPool> {
    let n = servers.len();
    let a = &*servers[random_below(n)];
    let b = &*servers[random_below(n)];
    let load = |sp: &ServerPool| sp.server.in_flight.load(Ordering::Relaxed);
    match (a.server.is_available(), b.server.is_available()) {
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

//! The adaptive concurrency limit of one server: a pure state machine that learns, from
//! first-byte latency, how many requests the backend serves at once (≤ `max_size`).
//!
//! Signal: smoothed RTT and RTT variance (as TCP's RTO) of first-byte times on *reused*
//! connections that were answered. A request is late when its first byte takes longer than
//! `srtt + 4·rttvar` (at least 50 ms). Fresh connections still unanswered past that while others
//! are answered are connections the backend has not picked up (a prefork accept queue): the limit
//! shrinks to the connections it serves, those in use and not slow plus those idle in the pool
//! (so a lull in the load is not read as a smaller server), never below 1, at most halving once
//! per late threshold, and never before a baseline exists. A fresh connection is slow once
//! unanswered past twice the usual first byte (at least 5 ms, at most the late threshold): the
//! ones opened just before the server stopped picking up are counted at the first shrink, not
//! found late one per threshold, each shrinking the limit by one. While saturated and prompt,
//! the limit grows by one per `limit` prompt answers (one per RTT's worth), up to `max_size`; a
//! failed probe backs further probes off. Once a baseline exists it does not grow while a fresh
//! connection is slow: the server has not picked up what it was given, and each grow would open
//! one more connection it leaves queued.
// `upstream::gate` turns the limit into permits in front of each server's pool.

use std::time::Duration;

use tokio::time::Instant;

/// A first byte later than this is never "late" on its own.
const LATE_FLOOR: Duration = Duration::from_millis(50);
/// A fresh connection unanswered this long is slow, however quick the usual answer.
const SLOW_FLOOR: Duration = Duration::from_millis(5);
/// The limit a server starts with, when `max_size` allows.
const INITIAL_LIMIT: usize = 8;
/// First and largest wait before probing again after a probe was late. The largest is short next
/// to a prefork server's ramp (it forks up to 32 children a second once busy): at 2 s, the limit
/// lagged Apache's children through a cold pass (bench/README.md).
const FIRST_PROBE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_PROBE_BACKOFF: Duration = Duration::from_millis(500);

/// Why the limit changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Grew {
        to: usize,
    },
    /// `late` fresh connections were not being answered.
    Shrank {
        to: usize,
        late: usize,
    },
}

/// What the gate sees when the limiter looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Permits held.
    pub in_use: usize,
    /// Held by fresh leases unanswered past the late threshold.
    pub late_fresh: usize,
    /// Connections the server serves: those in use but for slow fresh ones, plus those idle in
    /// the pool (answered before they went back, or opened for `min_idle`; less any request
    /// waiting in the pool itself). A prefork child stays pinned by an idle keep-alive
    /// connection, and a lull in the load leaves connections idle, not unserved. Read only when
    /// `late_fresh > 0` (the gate counts it only then: the pool's idle count takes its lock).
    pub serving: usize,
    /// How long the longest-waiting fresh lease still unanswered has waited (zero if none).
    pub oldest_fresh: Duration,
}

#[derive(Debug)]
pub struct Limiter {
    max: usize,
    limit: usize,
    srtt: Option<Duration>,
    rttvar: Duration,
    last_shrink: Option<Instant>,
    prompt_since_grow: usize,
    probe_backoff: Duration,
    no_probe_until: Option<Instant>,
}

impl Limiter {
    pub fn new(max: usize) -> Limiter {
        let max = max.max(1);
        Limiter {
            max,
            limit: max.min(INITIAL_LIMIT),
            srtt: None,
            rttvar: Duration::ZERO,
            last_shrink: None,
            prompt_since_grow: 0,
            probe_backoff: FIRST_PROBE_BACKOFF,
            no_probe_until: None,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The first-byte time past which a request is late; `None` before the baseline.
    pub fn threshold(&self) -> Option<Duration> {
        self.srtt.map(|s| (s + self.rttvar * 4).max(LATE_FLOOR))
    }

    fn is_late(&self, waited: Duration) -> bool {
        self.threshold().is_some_and(|t| waited > t)
    }

    /// A fresh connection unanswered for `waited` holds growth once it is slow; before a
    /// baseline there is no usual first byte to be slow against (a backend that never keeps a
    /// connection gives none), and nothing holds it.
    fn holds_growth(&self, waited: Duration) -> bool {
        self.srtt.is_some() && waited > self.slow_after()
    }

    /// When an unanswered fresh connection is slow: twice the usual first byte plus its
    /// variance (a fresh one also pays the connect), at least `SLOW_FLOOR`, at most late.
    pub fn slow_after(&self) -> Duration {
        let usual = self.srtt.unwrap_or_default() * 2 + self.rttvar * 4;
        let slow = usual.max(SLOW_FLOOR);
        self.threshold().map_or(slow, |late| slow.min(late))
    }

    /// A first byte after `latency`, on a `reused` or fresh connection, under `load`.
    pub fn on_answer(
        &mut self,
        now: Instant,
        reused: bool,
        latency: Duration,
        load: Load,
    ) -> Option<Change> {
        let late = self.is_late(latency);
        if reused && !late {
            self.sample(latency);
        }
        if !reused && !late {
            // A fresh connection answered promptly: the backend picked it up.
            self.probe_backoff = FIRST_PROBE_BACKOFF;
        }
        if load.late_fresh > 0 {
            return self.shrink(now, load);
        }
        if late || load.in_use < self.limit || self.holds_growth(load.oldest_fresh) {
            return None;
        }
        self.grow(now)
    }

    /// No answer came, but `load.late_fresh` fresh connections are unanswered past the
    /// threshold although the server answered others since they were sent (a lease's review).
    pub fn on_overdue(&mut self, now: Instant, load: Load) -> Option<Change> {
        if load.late_fresh == 0 {
            return None;
        }
        self.shrink(now, load)
    }

    /// How often an unanswered fresh lease reviews itself: its late threshold, or the floor
    /// before a baseline exists.
    pub fn review_every(&self) -> Duration {
        self.threshold().unwrap_or(LATE_FLOOR)
    }

    fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = rtt.abs_diff(srtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    fn shrink(&mut self, now: Instant, load: Load) -> Option<Change> {
        // A shrink shows its effect only once the lates it leaves behind could be seen: at most
        // one per threshold (≥ LATE_FLOOR), not one per srtt (on loopback, ~1 ms: a collapse).
        let threshold = self.threshold()?;
        self.prompt_since_grow = 0;
        self.no_probe_until = Some(now + self.probe_backoff);
        if self.last_shrink.is_some_and(|at| now - at < threshold) {
            return None;
        }
        let to = load.serving.max(self.limit / 2).max(1);
        if to >= self.limit {
            return None;
        }
        self.probe_backoff = (self.probe_backoff * 2).min(MAX_PROBE_BACKOFF);
        self.last_shrink = Some(now);
        self.limit = to;
        Some(Change::Shrank {
            to,
            late: load.late_fresh,
        })
    }

    fn grow(&mut self, now: Instant) -> Option<Change> {
        if self.limit >= self.max || self.no_probe_until.is_some_and(|t| now < t) {
            return None;
        }
        self.prompt_since_grow += 1;
        if self.prompt_since_grow < self.limit {
            return None;
        }
        self.prompt_since_grow = 0;
        self.limit += 1;
        Some(Change::Grew { to: self.limit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(1);

    /// `in_use` permits held, `late` of them by fresh leases not answered, none idle.
    fn load(in_use: usize, late: usize) -> Load {
        Load {
            in_use,
            late_fresh: late,
            serving: in_use - late,
            oldest_fresh: Duration::ZERO,
        }
    }

    /// Drives a backend that serves `serving` connections: requests beyond it are late.
    async fn drive(l: &mut Limiter, serving: impl Fn(u32) -> usize, rounds: u32) {
        for r in 0..rounds {
            let in_use = l.limit();
            let late = in_use.saturating_sub(serving(r));
            for _ in 0..in_use.min(serving(r)) {
                tokio::time::advance(RTT).await;
                l.on_answer(Instant::now(), true, RTT, load(in_use, late));
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lates_before_any_baseline_do_not_shrink() {
        let mut l = Limiter::new(32);
        let change = l.on_answer(Instant::now(), false, Duration::from_secs(1), load(8, 7));
        assert_eq!(change, None);
        assert_eq!(l.limit(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_serving_everything_grows_to_max_size() {
        let mut l = Limiter::new(32);
        drive(&mut l, |_| 32, 200).await;
        assert_eq!(l.limit(), 32);
    }

    #[tokio::test(start_paused = true)]
    async fn a_device_serving_four_settles_at_four() {
        let mut l = Limiter::new(32);
        drive(&mut l, |_| 4, 2000).await;
        assert_eq!(l.limit(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_prefork_ramp_never_collapses_and_follows_the_children() {
        let mut l = Limiter::new(32);
        let mut lowest = usize::MAX;
        // 8 children, more forked as time passes (1 ms per answer round here).
        let children = |r: u32| (8 + r as usize / 200).min(32);
        for r in 0..20_000u32 {
            drive(&mut l, |_| children(r), 1).await;
            lowest = lowest.min(l.limit());
        }
        assert_eq!(lowest, 8);
        assert_eq!(l.limit(), 32);
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_recovers_after_a_shrink_once_the_backend_keeps_up() {
        let mut l = Limiter::new(32);
        drive(&mut l, |r| if r < 500 { 4 } else { 32 }, 8000).await;
        assert_eq!(l.limit(), 32);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shrink_at_most_halves_the_limit() {
        let mut l = Limiter::new(32);
        drive(&mut l, |_| 32, 200).await;
        tokio::time::advance(RTT).await;
        let change = l.on_answer(Instant::now(), true, RTT, load(32, 31));
        assert_eq!(change, Some(Change::Shrank { to: 16, late: 31 }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_connection_left_unanswered_holds_growth() {
        let mut l = Limiter::new(32);
        drive(&mut l, |_| 32, 20).await;
        let before = l.limit();
        let unanswered_10ms = Load {
            oldest_fresh: Duration::from_millis(10),
            ..load(before, 0)
        };
        for _ in 0..1000 {
            tokio::time::advance(RTT).await;
            l.on_answer(Instant::now(), true, RTT, unanswered_10ms);
        }
        assert_eq!(l.limit(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_that_never_keeps_a_connection_still_grows() {
        let mut l = Limiter::new(32);
        for _ in 0..2000 {
            tokio::time::advance(RTT).await;
            let every_permit_fresh_one_unanswered_10ms = Load {
                oldest_fresh: Duration::from_millis(10),
                ..load(l.limit(), 0)
            };
            l.on_answer(
                Instant::now(),
                false,
                RTT,
                every_permit_fresh_one_unanswered_10ms,
            );
        }
        assert_eq!(l.limit(), 32);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unsaturated_pool_does_not_grow() {
        let mut l = Limiter::new(32);
        for _ in 0..1000 {
            tokio::time::advance(RTT).await;
            l.on_answer(Instant::now(), true, RTT, load(3, 0));
        }
        assert_eq!(l.limit(), 8);
    }
}

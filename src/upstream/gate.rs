//! The per-server gate in front of the pool: at most the learned limit (≤ `max_size`) requests
//! hold a connection at once; the rest wait in arrival order (a fair semaphore) for a free permit.
//!
//! Design: `adaptive::Limiter` decides the limit; this module turns it into permits and feeds it.
//! A permit is taken before the pool is asked for a connection and held by the lease until the
//! connection goes back or closes, so a request past the limit waits here, in longhaul, for
//! whichever connection comes free first, never behind a connection the backend has not picked
//! up. Each lease reports its first response byte (latency from the first write, fresh or
//! reused); fresh connections still unanswered are tracked so an answer elsewhere can count how
//! many of them are late. A shrink withdraws permits: first those of slow fresh leases, late ones
//! first (written off: the backend is not serving them, so they must not keep served requests
//! out), then free ones, then held ones as they come back (`debt`). A grow adds one. Every late
//! fresh lease is told (`Permit::not_picked_up`), written off or not (a shrink is at most one per
//! threshold, and the served connections may already match the limit); a slow one written off
//! is told once it is late: a request that is safe to send again leaves that connection. One
//! that is not (a POST) stays, and so does its permit unless it was written off.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::adaptive::{Change, Limiter, Load};
use crate::metrics::ServerMetrics;

pub struct Gate {
    permits: Arc<Semaphore>,
    state: Mutex<State>,
    max: usize,
    /// For the log line: which server this is.
    upstream: String,
    server: String,
    limit_gauge: prometheus::IntGauge,
    /// The pool's idle connections now (`Load::serving`).
    idle: Box<dyn Fn() -> usize + Send + Sync>,
}

struct State {
    limiter: Limiter,
    /// Permits held now.
    in_use: usize,
    /// Permits to forget as they come back (a shrink while they were held).
    debt: usize,
    /// Fresh leases not answered yet, by slot.
    unanswered_fresh: Vec<Slot>,
    /// When a shrink was last logged as a warning (at most one per `WARN_EVERY`).
    warned_at: Option<Instant>,
    /// When the server last answered a request (a first byte).
    last_answer: Option<Instant>,
}

/// A limit that keeps probing one above what the server serves shrinks every few seconds: the
/// warning says so once a minute, the rest go to debug.
const WARN_EVERY: Duration = Duration::from_secs(60);

enum Slot {
    Free,
    /// The request was written at `since`; its permit counts. `leave` is notified once it is
    /// late while the server answers others (written off by a shrink, or not).
    Waiting {
        since: Instant,
        leave: Arc<Notify>,
    },
    /// Slow when the limit shrank: its permit was withdrawn and is forgotten when it ends.
    /// `leave` is notified once it is late, as a waiting one's.
    WrittenOff {
        since: Instant,
        leave: Arc<Notify>,
    },
}

impl Slot {
    /// Waiting (its permit counts) for longer than `after`.
    fn late(&self, now: Instant, after: Duration) -> bool {
        matches!(self, Slot::Waiting { since, .. } if now - *since > after)
    }
}

impl State {
    fn late_fresh(&self, now: Instant) -> usize {
        let Some(threshold) = self.limiter.threshold() else {
            return 0;
        };
        self.unanswered_fresh
            .iter()
            .filter(|s| s.late(now, threshold))
            .count()
    }

    /// Fresh leases unanswered past `adaptive::Limiter::slow_after` whose permits count.
    fn slow_fresh(&self, now: Instant) -> usize {
        let slow_after = self.limiter.slow_after();
        self.unanswered_fresh
            .iter()
            .filter(|s| s.late(now, slow_after))
            .count()
    }

    /// How long the longest-waiting fresh lease still counted has waited.
    fn oldest_fresh(&self, now: Instant) -> Duration {
        self.unanswered_fresh
            .iter()
            .filter_map(|s| match s {
                Slot::Waiting { since, .. } => Some(now - *since),
                _ => None,
            })
            .max()
            .unwrap_or_default()
    }

    /// Late fresh leases sent before the server's last answer: it answered others after them.
    fn late_fresh_passed_over(&self, now: Instant) -> usize {
        let (Some(threshold), Some(last_answer)) = (self.limiter.threshold(), self.last_answer)
        else {
            return 0;
        };
        self.unanswered_fresh
            .iter()
            .filter(|s| s.late(now, threshold))
            .filter(|s| matches!(s, Slot::Waiting { since, .. } if *since < last_answer))
            .count()
    }

    fn track(&mut self, since: Instant, leave: Arc<Notify>) -> usize {
        let slot = Slot::Waiting { since, leave };
        match self
            .unanswered_fresh
            .iter()
            .position(|s| matches!(s, Slot::Free))
        {
            Some(i) => {
                self.unanswered_fresh[i] = slot;
                i
            }
            None => {
                self.unanswered_fresh.push(slot);
                self.unanswered_fresh.len() - 1
            }
        }
    }

    #[cfg(test)]
    fn is_written_off(&self, permit: &Permit) -> bool {
        permit
            .fresh_slot
            .is_some_and(|i| matches!(self.unanswered_fresh[i], Slot::WrittenOff { .. }))
    }

    /// Frees `slot`; true if its permit had been written off.
    fn untrack(&mut self, slot: usize) -> bool {
        let was = std::mem::replace(&mut self.unanswered_fresh[slot], Slot::Free);
        matches!(was, Slot::WrittenOff { .. })
    }

    /// Tells up to `n` late fresh leases whose permits stay theirs, and every late one written
    /// off, that the server is not picking them up.
    fn tell_late(&self, now: Instant, n: usize) {
        let Some(threshold) = self.limiter.threshold() else {
            return;
        };
        let mut told = 0;
        for slot in &self.unanswered_fresh {
            match slot {
                Slot::Waiting { since, leave } if now - *since > threshold && told < n => {
                    leave.notify_one();
                    told += 1;
                }
                Slot::WrittenOff { since, leave } if now - *since > threshold => leave.notify_one(),
                _ => {}
            }
        }
    }

    /// Writes off up to `n` slow fresh leases' permits, late ones first (a late POST, which
    /// stays, must not keep a permit a slow GET gives up); returns how many. Those late are
    /// told now, the others once they are late.
    fn write_off_slow(&mut self, now: Instant, n: usize) -> usize {
        let (Some(threshold), slow_after) = (self.limiter.threshold(), self.limiter.slow_after())
        else {
            return 0;
        };
        let mut done = 0;
        for after in [threshold, slow_after] {
            for slot in &mut self.unanswered_fresh {
                if done == n {
                    break;
                }
                if slot.late(now, after)
                    && let Slot::Waiting { since, leave } = std::mem::replace(slot, Slot::Free)
                {
                    if now - since > threshold {
                        leave.notify_one();
                    }
                    *slot = Slot::WrittenOff { since, leave };
                    done += 1;
                }
            }
        }
        self.in_use -= done;
        done
    }
}

impl Gate {
    /// `idle` counts the pool's idle connections (only when some fresh ones are late).
    pub fn new(
        max_size: usize,
        metrics: &ServerMetrics,
        idle: Box<dyn Fn() -> usize + Send + Sync>,
    ) -> Gate {
        let limiter = Limiter::new(max_size);
        let limit = limiter.limit();
        metrics.limit.set(limit as i64);
        Gate {
            permits: Arc::new(Semaphore::new(limit)),
            state: Mutex::new(State {
                limiter,
                in_use: 0,
                debt: 0,
                unanswered_fresh: Vec::new(),
                warned_at: None,
                last_answer: None,
            }),
            max: max_size,
            upstream: metrics.upstream.clone(),
            server: metrics.server.clone(),
            limit_gauge: metrics.limit.clone(),
            idle,
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.lock().limiter.limit()
    }

    /// A permit now, if one is free and nobody waits for one.
    pub fn try_enter(self: &Arc<Self>) -> Option<Permit> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.admitted(permit))
    }

    /// A permit, after those who came first.
    pub async fn enter(self: &Arc<Self>) -> Permit {
        let permit = self.permits.clone().acquire_owned().await;
        self.admitted(permit.expect("the gate's semaphore is never closed"))
    }

    fn admitted(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Permit {
        self.lock().in_use += 1;
        Permit {
            gate: self.clone(),
            permit: Some(permit),
            sent: None,
            fresh_slot: None,
            written_off: false,
            not_picked_up: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds the limiter a first byte at `now`, `latency` after the request was written;
    /// returns true if the lease's permit had been written off.
    fn answered(
        &self,
        now: Instant,
        reused: bool,
        latency: Duration,
        fresh_slot: Option<usize>,
    ) -> bool {
        let mut state = self.lock();
        state.last_answer = Some(now);
        if let Some(slot) = fresh_slot
            && state.untrack(slot)
        {
            // Its permit is gone already; it is forgotten when the lease ends.
            return true;
        }
        let load = self.load(&state, now, state.late_fresh(now));
        let before = state.limiter.limit();
        if let Some(change) = state.limiter.on_answer(now, reused, latency, load) {
            self.apply(&mut state, change, before, now, load.in_use);
        }
        state.tell_late(now, load.late_fresh);
        false
    }

    /// The limiter's view with `late_fresh` late fresh leases. Each count is made only in the
    /// case the limiter reads it: what the server holds open when some are late (a shrink), the
    /// oldest unanswered fresh lease when every permit is held (a grow).
    fn load(&self, state: &State, now: Instant, late_fresh: usize) -> Load {
        let serving = if late_fresh > 0 {
            state.in_use.saturating_sub(state.slow_fresh(now)) + (self.idle)()
        } else {
            0
        };
        let oldest_fresh = if late_fresh == 0 && state.in_use >= state.limiter.limit() {
            state.oldest_fresh(now)
        } else {
            Duration::ZERO
        };
        Load {
            in_use: state.in_use,
            late_fresh,
            serving,
            oldest_fresh,
        }
    }

    /// An unanswered fresh lease's review at its late threshold: when no answer comes to
    /// trigger it (the load stopped), late fresh leases the server passed over still shrink the
    /// limit and are written off, as an answer would have done.
    fn review(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        let load = self.load(&state, now, state.late_fresh_passed_over(now));
        let before = state.limiter.limit();
        if let Some(change) = state.limiter.on_overdue(now, load) {
            self.apply(&mut state, change, before, now, load.in_use);
        }
        state.tell_late(now, load.late_fresh);
    }

    fn review_every(&self) -> Duration {
        self.lock().limiter.review_every()
    }

    /// Carries out a change of the limit from `before`.
    fn apply(&self, state: &mut State, change: Change, before: usize, now: Instant, in_use: usize) {
        match change {
            Change::Grew { .. } => {
                if state.debt > 0 {
                    state.debt -= 1;
                } else {
                    self.permits.add_permits(1);
                }
            }
            Change::Shrank { to, late } => {
                let written_off = state.write_off_slow(now, before - to);
                self.withdraw(state, before - to - written_off);
                let warn = state.warned_at.is_none_or(|at| now - at >= WARN_EVERY);
                if warn && to < self.max {
                    state.warned_at = Some(now);
                }
                self.log_shrink(to, late, in_use, state.limiter.threshold(), warn);
            }
        }
        self.limit_gauge.set(state.limiter.limit() as i64);
    }

    /// Takes `n` permits out: the free ones now, the rest as they are given back.
    /// One at a time: a permit taken by `try_enter` meanwhile (it takes no lock) just becomes
    /// debt, never lets more than the limit in.
    fn withdraw(&self, state: &mut State, n: usize) {
        let mut taken = 0;
        while taken < n
            && let Ok(permit) = self.permits.try_acquire()
        {
            permit.forget();
            taken += 1;
        }
        state.debt += n - taken;
    }

    fn log_shrink(
        &self,
        to: usize,
        late: usize,
        in_use: usize,
        threshold: Option<Duration>,
        warn: bool,
    ) {
        if to >= self.max {
            return;
        }
        let threshold_ms = threshold.map_or(0, |t| t.as_millis() as u64);
        macro_rules! shrank {
            ($level:ident) => {
                tracing::$level!(
                    upstream = %self.upstream, server = %self.server, limit = to,
                    max_size = self.max, late_fresh = late, in_flight = in_use, threshold_ms,
                    "pool limit below max_size: {late} new connections unanswered past \
                     {threshold_ms} ms while others were answered (the server is not picking \
                     them up)"
                )
            };
        }
        if warn {
            shrank!(warn);
        } else {
            shrank!(debug);
        }
    }

    fn give_back(
        &self,
        permit: OwnedSemaphorePermit,
        fresh_slot: Option<usize>,
        written_off: bool,
    ) {
        let mut state = self.lock();
        let written_off = written_off || fresh_slot.is_some_and(|slot| state.untrack(slot));
        if written_off {
            // Withdrawn by a shrink already (and no longer counted in `in_use`).
            permit.forget();
            return;
        }
        state.in_use -= 1;
        if state.debt > 0 {
            state.debt -= 1;
            permit.forget();
        }
    }
}

/// The right to hold one connection of the server, given back on drop.
pub struct Permit {
    gate: Arc<Gate>,
    permit: Option<OwnedSemaphorePermit>,
    /// When the request was about to be written, and whether the connection was reused.
    sent: Option<(Instant, bool)>,
    /// Its place among fresh unanswered leases, until answered.
    fresh_slot: Option<usize>,
    /// A shrink withdrew this permit while the lease was unanswered.
    written_off: bool,
    /// Notified when this fresh lease is late while the server answers others.
    not_picked_up: Option<Arc<Notify>>,
}

/// What a fresh lease waits on to learn that the server is not picking its connection up.
pub struct NotPickedUp {
    gate: Arc<Gate>,
    leave: Arc<Notify>,
}

impl NotPickedUp {
    /// Completes once the gate tells the lease to leave; reviews the gate at each late
    /// threshold meanwhile, so a lease is told even when no other answer comes to trigger it.
    pub async fn wait(self) {
        loop {
            let every = self.gate.review_every();
            tokio::select! {
                () = self.leave.notified() => return,
                () = tokio::time::sleep(every) => self.gate.review(),
            }
        }
    }
}

impl Permit {
    /// The request is about to be written on a `reused` or fresh connection.
    pub fn sending(&mut self, reused: bool) {
        let now = Instant::now();
        self.sent = Some((now, reused));
        if !reused {
            let signal = Arc::new(Notify::new());
            self.fresh_slot = Some(self.gate.lock().track(now, signal.clone()));
            self.not_picked_up = Some(signal);
        }
    }

    /// For a fresh lease: completes once it is late while the server answers others (it is
    /// not picking the connection up). Never completes for a reused one.
    pub fn not_picked_up(&self) -> Option<NotPickedUp> {
        Some(NotPickedUp {
            gate: self.gate.clone(),
            leave: self.not_picked_up.clone()?,
        })
    }

    /// The first response byte arrived.
    pub fn answered(&mut self) {
        let Some((since, reused)) = self.sent.take() else {
            return;
        };
        let slot = self.fresh_slot.take();
        // One clock read for both the latency and the limiter's time.
        let now = Instant::now();
        self.written_off = self.gate.answered(now, reused, now - since, slot);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let slot = self.fresh_slot.take();
            self.gate.give_back(permit, slot, self.written_off);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn gate(max: usize) -> Arc<Gate> {
        gate_with_idle(max, Arc::new(AtomicUsize::new(0)))
    }

    /// A gate whose pool holds `idle` idle connections.
    fn gate_with_idle(max: usize, idle: Arc<AtomicUsize>) -> Arc<Gate> {
        let metrics = ServerMetrics::new("unit-gate", &format!("gate-{max}"), max);
        let idle = Box::new(move || idle.load(Ordering::Relaxed));
        Arc::new(Gate::new(max, &metrics, idle))
    }

    #[tokio::test(start_paused = true)]
    async fn a_gate_admits_its_limit_then_queues() {
        let gate = gate(32);
        let held: Vec<_> = (0..8).map(|_| gate.try_enter().expect("free")).collect();
        assert!(gate.try_enter().is_none(), "the ninth waits");
        drop(held);
        assert!(gate.try_enter().is_some(), "free again once given back");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_arrival_order() {
        let gate = gate(1);
        let first = gate.try_enter().expect("free");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..3 {
            let (gate, tx) = (gate.clone(), tx.clone());
            tokio::spawn(async move {
                let _p = gate.enter().await;
                tx.send(i).unwrap();
            });
            tokio::task::yield_now().await;
        }
        drop(first);
        let order = [rx.recv().await, rx.recv().await, rx.recv().await];
        assert_eq!(order, [Some(0), Some(1), Some(2)]);
    }

    /// Serves `answered` requests on reused connections while `stuck` fresh ones wait.
    async fn round(gate: &Arc<Gate>, answered: usize, stuck: &mut Vec<Permit>) {
        let mut held = Vec::new();
        while let Some(mut p) = gate.try_enter() {
            if held.len() < answered {
                p.sending(true);
                held.push(p);
            } else {
                p.sending(false);
                stuck.push(p);
            }
        }
        tokio::time::advance(Duration::from_millis(1)).await;
        for p in &mut held {
            p.answered();
        }
    }

    /// Rounds against a backend serving 4 until the limit is 4 (at most 2000).
    async fn until_shrunk(gate: &Arc<Gate>, stuck: &mut Vec<Permit>) {
        for _ in 0..2000 {
            round(gate, 4, stuck).await;
            if gate.limit() == 4 {
                return;
            }
        }
    }

    fn free_permits(gate: &Arc<Gate>) -> usize {
        let taken: Vec<_> = (0..64).map_while(|_| gate.try_enter()).collect();
        taken.len()
    }

    #[tokio::test(start_paused = true)]
    async fn late_fresh_connections_shrink_the_limit_to_what_is_served() {
        let gate = gate(32);
        let mut stuck = Vec::new();
        until_shrunk(&gate, &mut stuck).await;
        assert_eq!(gate.limit(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn late_fresh_connections_no_longer_hold_permits_once_the_limit_shrank() {
        let gate = gate(32);
        let mut stuck = Vec::new();
        until_shrunk(&gate, &mut stuck).await;
        assert!(stuck.len() >= 4, "{} stuck", stuck.len());
        assert_eq!(free_permits(&gate), 4, "the served requests go on");
    }

    #[tokio::test(start_paused = true)]
    async fn written_off_permits_are_not_returned_when_their_leases_end() {
        let gate = gate(32);
        let mut stuck = Vec::new();
        until_shrunk(&gate, &mut stuck).await;
        drop(stuck);
        assert_eq!(free_permits(&gate), gate.limit());
    }

    #[tokio::test(start_paused = true)]
    async fn a_written_off_lease_answered_late_still_gives_nothing_back() {
        let gate = gate(32);
        let mut stuck = Vec::new();
        until_shrunk(&gate, &mut stuck).await;
        for p in &mut stuck {
            p.answered();
        }
        drop(stuck);
        assert_eq!(free_permits(&gate), gate.limit());
    }

    /// A limit grown while every request was served; then one request on a reused connection,
    /// one on a new connection nobody picks up (late by now), and `idle(limit)` connections the
    /// server holds open, idle in the pool. Returns the gate, the grown limit, the served lease
    /// (answered after the other went late) and the late one.
    async fn one_served_one_late(
        idle: impl Fn(usize) -> usize,
    ) -> (Arc<Gate>, usize, Permit, Permit) {
        let idle_count = Arc::new(AtomicUsize::new(0));
        let (gate, grown) = grown(gate_with_idle(32, idle_count.clone())).await;
        idle_count.store(idle(grown), Ordering::Relaxed);
        let mut served = gate.try_enter().expect("free");
        served.sending(true);
        let mut unpicked = gate.try_enter().expect("free");
        unpicked.sending(false);
        tokio::time::advance(Duration::from_millis(200)).await;
        served.answered();
        (gate, grown, served, unpicked)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lull_in_the_load_is_not_taken_for_a_smaller_server() {
        let (gate, grown, _served, _unpicked) = one_served_one_late(|limit| limit - 2).await;
        assert!(grown > 8, "grew to {grown} while every request was served");
        assert_eq!(
            gate.limit(),
            grown - 1,
            "the served and the idle connections"
        );
    }

    /// `gate` after 200 rounds in which every request was served, and the limit it grew to.
    async fn grown(gate: Arc<Gate>) -> (Arc<Gate>, usize) {
        let mut stuck = Vec::new();
        for _ in 0..200 {
            round(&gate, 32, &mut stuck).await;
        }
        let limit = gate.limit();
        (gate, limit)
    }

    /// A limit grown while every request was served; then one request on a reused connection
    /// and the rest on new connections nobody picks up: the first of them 60 ms ago (late),
    /// the others 40 ms ago (slow, past 5 ms, not late). The served one is answered now.
    /// Returns the gate, the grown limit, the served lease, the late one and the slow ones.
    async fn one_late_and_many_slow() -> (Arc<Gate>, usize, Permit, Permit, Vec<Permit>) {
        let (gate, grown) = grown(gate(32)).await;
        let mut served = gate.try_enter().expect("free");
        served.sending(true);
        let mut late = gate.try_enter().expect("free");
        late.sending(false);
        tokio::time::advance(Duration::from_millis(20)).await;
        let mut slow = Vec::new();
        while let Some(mut p) = gate.try_enter() {
            p.sending(false);
            slow.push(p);
        }
        tokio::time::advance(Duration::from_millis(40)).await;
        served.answered();
        (gate, grown, served, late, slow)
    }

    #[tokio::test(start_paused = true)]
    async fn slow_fresh_connections_not_yet_late_count_as_not_served() {
        let (gate, grown, _served, _late, slow) = one_late_and_many_slow().await;
        assert!(slow.len() > 2, "{} slow", slow.len());
        assert_eq!(gate.limit(), grown / 2, "halved at once, not {grown} - 1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shrink_takes_its_permits_from_slow_leases_not_from_served_ones() {
        let (gate, _grown, served, _late, _slow) = one_late_and_many_slow().await;
        drop(served);
        assert_eq!(
            free_permits(&gate),
            1,
            "the served lease's permit is free again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_lease_written_off_is_told_to_leave_only_once_late() {
        let (gate, _grown, mut served, late, slow) = one_late_and_many_slow().await;
        let written_off_slow = slow.iter().find(|p| gate.lock().is_written_off(p));
        let written_off_slow = written_off_slow.expect("a slow lease written off");
        assert!(
            told_not_picked_up(&late).await,
            "the late one is told at once"
        );
        assert!(
            !told_not_picked_up(written_off_slow).await,
            "40 ms is not late"
        );

        tokio::time::advance(Duration::from_millis(20)).await;
        served.sending(true);
        served.answered();

        assert!(told_not_picked_up(written_off_slow).await, "60 ms is");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_fresh_connection_holds_the_limit_while_others_are_answered() {
        let gate = gate(32);
        let mut stuck = Vec::new();
        round(&gate, 32, &mut stuck).await;
        let mut unpicked = gate.try_enter().expect("free");
        unpicked.sending(false);
        tokio::time::advance(Duration::from_millis(10)).await;
        let before = gate.limit();

        for _ in 0..30 {
            round(&gate, 32, &mut stuck).await;
        }

        assert_eq!(gate.limit(), before);
    }

    /// As many connections served (busy or idle) as the limit: it holds.
    async fn late_while_the_limit_holds() -> (Arc<Gate>, usize, Permit, Permit) {
        one_served_one_late(|limit| limit - 1).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_fresh_lease_is_told_to_leave_even_when_the_limit_holds() {
        let (gate, grown, _served, unpicked) = late_while_the_limit_holds().await;
        assert_eq!(gate.limit(), grown);
        assert!(told_not_picked_up(&unpicked).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_told_to_leave_keeps_its_permit_until_it_ends() {
        let (gate, grown, _served, unpicked) = late_while_the_limit_holds().await;
        assert_eq!(free_permits(&gate), grown - 2, "no permit in its place");
        drop(unpicked);
        assert_eq!(free_permits(&gate), grown - 1);
    }

    /// Whether the gate told `permit`'s lease that the server is not picking it up.
    async fn told_not_picked_up(permit: &Permit) -> bool {
        let Some(signal) = permit.not_picked_up() else {
            return false;
        };
        tokio::time::timeout(Duration::ZERO, signal.leave.notified())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn every_fresh_lease_a_shrink_writes_off_is_told_it_was_not_picked_up() {
        let gate = gate(32);
        let mut stuck = Vec::new();
        until_shrunk(&gate, &mut stuck).await;

        let mut told = 0;
        for p in &stuck {
            told += usize::from(told_not_picked_up(p).await);
        }

        assert!(
            told >= 4,
            "the four late when the limit fell to 4: {told} told"
        );
        let still_counted = gate.lock().in_use;
        assert_eq!(
            told + still_counted,
            stuck.len(),
            "told exactly the written-off ones"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_fresh_lease_is_written_off_by_its_own_review_when_no_answer_follows() {
        let gate = gate(32);
        let mut stuck = Vec::new();
        // A baseline, then 4 served and 4 fresh ones sent; the served are answered at once,
        // after which no answer comes (the load stopped).
        round(&gate, 4, &mut stuck).await;
        round(&gate, 4, &mut stuck).await;
        let waits: Vec<_> = stuck
            .iter()
            .map(|p| p.not_picked_up().expect("fresh"))
            .collect();

        let written_off = tokio::time::timeout(
            Duration::from_secs(1),
            waits.into_iter().next().unwrap().wait(),
        )
        .await;

        assert!(written_off.is_ok(), "still waiting a second later");
        assert!(gate.limit() < 8, "limit {}", gate.limit());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_lease_is_never_told_it_was_not_picked_up() {
        let gate = gate(32);
        let mut reused = gate.try_enter().expect("free");
        reused.sending(true);
        assert!(reused.not_picked_up().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_shrink_takes_back_held_permits_as_they_end() {
        let gate = gate(32);
        let mut stuck = Vec::new();
        round(&gate, 4, &mut stuck).await;
        let mut held: Vec<_> = (0..4).map(|_| gate.try_enter().expect("free")).collect();
        gate.withdraw(&mut gate.lock(), 4);
        held.clear();
        assert_eq!(free_permits(&gate), 0, "the four came back and were kept");
    }
}

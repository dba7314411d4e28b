//! hyper's header-read timer, made keep-alive aware: hyper starts it whenever it waits for a
//! request head, idle time included. The first wait on a connection keeps hyper's deadline (what
//! is left of `header_read_timeout`, the slowloris guard); later waits on a kept-alive
//! connection get `client_idle_timeout`.

// hyper's `Timer` trait takes and returns `std::time::Instant`; this file has to name it.
#![allow(clippy::disallowed_types)]

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use hyper_util::rt::TokioTimer;

pub struct ClientTimer {
    /// What hyper adds to its clock for each wait (its `header_read_timeout`).
    hyper_wait: Duration,
    next_head: Duration,
    waited_before: AtomicBool,
    inner: TokioTimer,
}

impl ClientTimer {
    /// `hyper_wait` is the `header_read_timeout` hyper is given.
    pub fn new(hyper_wait: Duration, client_idle_timeout: Duration) -> ClientTimer {
        ClientTimer {
            hyper_wait,
            next_head: client_idle_timeout,
            waited_before: AtomicBool::new(false),
            inner: TokioTimer::new(),
        }
    }

    /// The deadline for a head hyper wants by `hyper_deadline` (its clock plus `hyper_wait`):
    /// no clock read of its own.
    fn head_deadline(&self, hyper_deadline: Instant) -> Instant {
        if !self.waited_before.swap(true, Ordering::Relaxed) {
            return hyper_deadline;
        }
        let hyper_now = hyper_deadline
            .checked_sub(self.hyper_wait)
            .unwrap_or(hyper_deadline);
        hyper_now + self.next_head
    }
}

impl Timer for ClientTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.inner.sleep(duration)
    }

    /// hyper asks for `now + header_read_timeout` each time it starts waiting for a head.
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.inner.sleep_until(self.head_deadline(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        self.inner.reset(sleep, self.head_deadline(new_deadline));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYPER_WAIT: Duration = Duration::from_millis(300);
    const IDLE: Duration = Duration::from_secs(10);

    #[test]
    fn the_first_head_keeps_hypers_deadline() {
        let timer = ClientTimer::new(HYPER_WAIT, IDLE);
        let hyper_deadline = Instant::now() + HYPER_WAIT;
        assert_eq!(timer.head_deadline(hyper_deadline), hyper_deadline);
    }

    #[test]
    fn later_heads_get_the_client_idle_timeout_from_hypers_clock() {
        let timer = ClientTimer::new(HYPER_WAIT, IDLE);
        let now = Instant::now();
        timer.head_deadline(now + HYPER_WAIT);
        assert_eq!(timer.head_deadline(now + HYPER_WAIT), now + IDLE);
    }
}

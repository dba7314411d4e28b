//! hyper's header-read timer, made keep-alive aware: hyper starts it whenever it waits for a
//! request head, idle time included. The first wait on a connection gets `header_read_timeout`
//! (slowloris guard); later waits on a kept-alive connection get `client_idle_timeout`.

// hyper's `Timer` trait takes and returns `std::time::Instant`; this file has to name it.
#![allow(clippy::disallowed_types)]

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use hyper_util::rt::TokioTimer;

pub struct ClientTimer {
    first_head: Duration,
    next_head: Duration,
    waited_before: AtomicBool,
    inner: TokioTimer,
}

impl ClientTimer {
    pub fn new(header_read_timeout: Duration, client_idle_timeout: Duration) -> ClientTimer {
        ClientTimer {
            first_head: header_read_timeout,
            next_head: client_idle_timeout,
            waited_before: AtomicBool::new(false),
            inner: TokioTimer::new(),
        }
    }

    fn head_deadline(&self) -> Instant {
        let wait = if self.waited_before.swap(true, Ordering::Relaxed) {
            self.next_head
        } else {
            self.first_head
        };
        Instant::now() + wait
    }
}

impl Timer for ClientTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.inner.sleep(duration)
    }

    /// hyper asks for `now + header_read_timeout` each time it starts waiting for a head.
    fn sleep_until(&self, _deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.inner.sleep_until(self.head_deadline())
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, _new_deadline: Instant) {
        self.inner.reset(sleep, self.head_deadline());
    }
}

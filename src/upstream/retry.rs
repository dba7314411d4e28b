//! The retry budget of one request: failed connects (nothing reached a backend) are retried
//! with a short backoff for `retry_window`; requests hyper handed back unsent a few times.

use std::time::Duration;

use tokio::time::Instant;

/// The first wait after a failed connect; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// Sends hyper may hand back unsent (the connection died before writing) before we give up.
const MAX_UNSENT_RETRIES: u32 = 3;

pub struct Retries {
    started: Instant,
    window: Duration,
    connect_failures: u32,
    unsent: u32,
}

impl Retries {
    /// The window starts now, when the request first asks for a connection.
    pub fn new(window: Duration) -> Retries {
        Retries {
            started: Instant::now(),
            window,
            connect_failures: 0,
            unsent: 0,
        }
    }

    /// After a refused, reset or timed-out connect: how long to wait before the next connect,
    /// or `None` when that connect would start after the window closed.
    pub fn after_connect_failure(&mut self) -> Option<Duration> {
        self.connect_failures += 1;
        let delay = backoff(self.connect_failures);
        (self.started.elapsed() + delay < self.window).then_some(delay)
    }

    /// After hyper handed a request back unsent: whether to send it again.
    pub fn after_unsent(&mut self) -> bool {
        self.unsent += 1;
        self.unsent <= MAX_UNSENT_RETRIES
    }
}

/// 10 ms, 20 ms, 40 ms, ... capped at 200 ms.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << (failures - 1).min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_10ms_up_to_200ms() {
        let waits: Vec<u64> = (1..=7).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 200, 200]);
    }

    #[tokio::test(start_paused = true)]
    async fn connect_failures_are_retried_until_the_window_closes() {
        let mut retries = Retries::new(Duration::from_secs(3));
        let mut waited = Duration::ZERO;
        let mut attempts = 1;
        while let Some(delay) = retries.after_connect_failure() {
            tokio::time::sleep(delay).await;
            waited += delay;
            attempts += 1;
        }
        assert!(waited < Duration::from_secs(3), "waited {waited:?}");
        assert!(
            waited > Duration::from_millis(2800),
            "gave up after {waited:?}"
        );
        assert_eq!(attempts, 19, "10+20+40+80+160 ms, then every 200 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_that_used_up_the_window_is_not_retried() {
        let mut retries = Retries::new(Duration::from_secs(3));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(retries.after_connect_failure(), None);
    }

    #[test]
    fn unsent_requests_are_resent_three_times() {
        let mut retries = Retries::new(Duration::from_secs(3));
        let resent: Vec<bool> = (0..4).map(|_| retries.after_unsent()).collect();
        assert_eq!(resent, [true, true, true, false]);
    }
}

//! The retry budget of one request: failed connects (nothing reached a backend) are retried
//! with a short backoff for `retry_window`; unsent requests a few times; stale ones once.

use std::time::Duration;

use tokio::time::Instant;

/// The first wait after a failed connect; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// Sends that fail before writing a byte (the connection died first) before we give up.
const MAX_UNSENT_RETRIES: u32 = 3;

pub struct Retries {
    started: Instant,
    window: Duration,
    connect_failures: u32,
    not_picked_up: u32,
    unsent: u32,
    stale_retried: bool,
}

/// Moves off connections the server had not picked up, per request. A moved request may take a
/// permit the limit still has above what the server serves and land on another new connection
/// nobody picks up; the limit shrinks at most by half per late threshold, so it reaches what is
/// served within log2(max_size) shrinks: 16 moves cover any `max_size` up to 65,536.
const MAX_NOT_PICKED_UP_RETRIES: u32 = 16;

/// What to do after an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nothing was written: send it again as it is (`retries_total{reason="not_sent"}`).
    Unsent,
    /// A reused connection failed before any response byte, and sending the request again is
    /// safe (idempotent, replayable body): once, on another connection.
    Stale,
    /// The server had not picked up the new connection while it answered others, and sending
    /// the request again is safe (`retries_total{reason="not_picked_up"}`).
    NotPickedUp,
    /// Fail the request.
    No,
}

/// How far a failed exchange got, and what the request allows.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub reused: bool,
    pub unsent: bool,
    pub before_response: bool,
    /// The adaptive gate wrote the fresh connection off unanswered (`h1::ErrorKind::NotPickedUp`).
    pub not_picked_up: bool,
    pub idempotent: bool,
    /// The body can be sent again (absent or buffered).
    pub replayable: bool,
}

impl Retries {
    /// The window starts now, when the request first asks for a connection.
    pub fn new(window: Duration) -> Retries {
        Retries {
            started: Instant::now(),
            window,
            connect_failures: 0,
            not_picked_up: 0,
            unsent: 0,
            stale_retried: false,
        }
    }

    /// After a refused, reset or timed-out connect: how long to wait before the next connect,
    /// or `None` when that connect would start after the window closed.
    pub fn after_connect_failure(&mut self) -> Option<Duration> {
        self.connect_failures += 1;
        let delay = backoff(self.connect_failures);
        (self.started.elapsed() + delay < self.window).then_some(delay)
    }

    /// Whether the next attempt must go on a new connection: after a stale one failed, the
    /// other idle connections may be just as stale (a backend's idle timeout closes them together).
    pub fn needs_fresh_connection(&self) -> bool {
        self.stale_retried
    }

    /// Whether a request safe to send again may still leave a new connection the server is not
    /// picking up (else it waits there, as a request that is not safe to resend always does).
    pub fn may_leave_unpicked_connection(&self) -> bool {
        self.not_picked_up < MAX_NOT_PICKED_UP_RETRIES
    }

    /// After a send that wrote nothing: whether to send it again.
    pub fn after_unsent(&mut self) -> bool {
        self.unsent += 1;
        self.unsent <= MAX_UNSENT_RETRIES
    }

    /// After a failed exchange: retry it, and how, or not. A request is never sent twice unless
    /// nothing of it was written, or it is idempotent with a replayable body (once).
    pub fn after_send_failure(&mut self, attempt: Attempt) -> Retry {
        if !attempt.replayable {
            return Retry::No;
        }
        if attempt.unsent && self.after_unsent() {
            return Retry::Unsent;
        }
        if attempt.not_picked_up && attempt.idempotent && self.may_leave_unpicked_connection() {
            self.not_picked_up += 1;
            return Retry::NotPickedUp;
        }
        let stale = attempt.reused && attempt.before_response && attempt.idempotent;
        if stale && !self.stale_retried {
            self.stale_retried = true;
            return Retry::Stale;
        }
        Retry::No
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

    #[tokio::test(start_paused = true)]
    async fn after_a_stale_retry_the_next_attempt_needs_a_fresh_connection() {
        let mut retries = Retries::new(Duration::from_secs(3));
        assert!(
            !retries.needs_fresh_connection(),
            "a first attempt may reuse"
        );
        let stale = Attempt {
            reused: true,
            unsent: false,
            before_response: true,
            not_picked_up: false,
            idempotent: true,
            replayable: true,
        };

        assert_eq!(retries.after_send_failure(stale), Retry::Stale);

        assert!(retries.needs_fresh_connection());
    }

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

    fn attempt() -> Attempt {
        Attempt {
            reused: true,
            unsent: false,
            before_response: true,
            not_picked_up: false,
            idempotent: true,
            replayable: true,
        }
    }

    fn not_picked_up(idempotent: bool) -> Attempt {
        Attempt {
            reused: false,
            not_picked_up: true,
            idempotent,
            ..attempt()
        }
    }

    #[test]
    fn a_get_on_a_connection_the_server_did_not_pick_up_moves_on_a_few_times_then_waits() {
        let mut retries = Retries::new(Duration::from_secs(3));
        let mut moved = 0;
        while retries.may_leave_unpicked_connection() {
            assert_eq!(
                retries.after_send_failure(not_picked_up(true)),
                Retry::NotPickedUp
            );
            moved += 1;
        }
        assert_eq!(moved, MAX_NOT_PICKED_UP_RETRIES);
    }

    #[test]
    fn a_post_on_a_connection_the_server_did_not_pick_up_is_not_sent_again() {
        let mut retries = Retries::new(Duration::from_secs(3));
        assert_eq!(retries.after_send_failure(not_picked_up(false)), Retry::No);
    }

    #[test]
    fn an_unsent_post_is_retried() {
        let mut retries = Retries::new(Duration::from_secs(3));
        let unsent_post = Attempt {
            unsent: true,
            idempotent: false,
            ..attempt()
        };
        assert_eq!(retries.after_send_failure(unsent_post), Retry::Unsent);
    }

    #[test]
    fn a_get_on_a_stale_reused_connection_is_retried_once() {
        let mut retries = Retries::new(Duration::from_secs(3));
        let decisions = [(); 2].map(|_| retries.after_send_failure(attempt()));
        assert_eq!(decisions, [Retry::Stale, Retry::No]);
    }

    #[test]
    fn a_post_is_never_retried_once_bytes_were_written() {
        let mut retries = Retries::new(Duration::from_secs(3));
        let written_post = Attempt {
            idempotent: false,
            ..attempt()
        };
        assert_eq!(retries.after_send_failure(written_post), Retry::No);
    }

    #[test]
    fn a_get_that_failed_on_a_fresh_connection_is_not_retried() {
        let mut retries = Retries::new(Duration::from_secs(3));
        let fresh = Attempt {
            reused: false,
            ..attempt()
        };
        assert_eq!(retries.after_send_failure(fresh), Retry::No);
    }

    #[test]
    fn a_get_that_failed_after_response_bytes_is_not_retried() {
        let mut retries = Retries::new(Duration::from_secs(3));
        let answered = Attempt {
            before_response: false,
            ..attempt()
        };
        assert_eq!(retries.after_send_failure(answered), Retry::No);
    }

    #[test]
    fn a_streamed_body_is_never_sent_twice() {
        let mut retries = Retries::new(Duration::from_secs(3));
        let streamed = Attempt {
            unsent: true,
            replayable: false,
            ..attempt()
        };
        assert_eq!(retries.after_send_failure(streamed), Retry::No);
    }
}

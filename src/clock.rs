//! A monotonic millisecond clock for values kept in atomics (idle-since stamps, ejection deadlines).
//! Counts from the first call in the process; never goes backwards.

use std::sync::LazyLock;
use std::time::Duration;
use tokio::time::Instant;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since the process first asked, at least 1 so that 0 can mean "unset".
pub fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64 + 1
}

/// Time elapsed since a stamp taken with `now_ms`.
pub fn since(stamp_ms: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(stamp_ms))
}

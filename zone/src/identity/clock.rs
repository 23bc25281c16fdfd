//! The engine's clock: the wall clock (`common::clock`), or in unit tests a clock that follows
//! tokio's paused time, and the tokio instant of a unix time.

use std::time::Duration;

use tokio::time::Instant;

/// Wall clock in unix time, or (in unit tests) a clock that follows tokio's paused time.
pub(super) struct Clock {
    pub(super) tokio: bool,
    pub(super) base_unix_ms: i64,
    pub(super) base: Instant,
}

impl Clock {
    pub(super) fn system() -> Self {
        Self {
            tokio: false,
            base_unix_ms: 0,
            base: Instant::now(),
        }
    }

    pub(super) fn now_ms(&self) -> i64 {
        if self.tokio {
            self.base_unix_ms + self.base.elapsed().as_millis() as i64
        } else {
            common::clock::now_ms()
        }
    }

    pub(super) fn now_unix(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// The tokio instant of a unix time (now, if it is past).
    pub(super) fn instant_at(&self, unix: i64) -> Instant {
        let ms = unix * 1000 - self.now_ms();
        Instant::now() + Duration::from_millis(ms.max(0) as u64)
    }
}

//! Retry timing shared by everything that retries a transient failure (the pipeline, the outbox
//! relay): exponential backoff with full jitter, so that partitions or instances that failed
//! together do not retry together.

use std::time::Duration;

/// Retry timing for transient failures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// From 100 ms up to `RETRY_MAX_BACKOFF_MS`.
    pub(crate) fn for_config(config: &crate::config::Config) -> Self {
        Backoff { initial: Duration::from_millis(100), max: config.max_backoff }
    }

    /// Full jitter: a random delay up to the exponential bound, so partitions that failed
    /// together do not retry together.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let bound = self.initial.saturating_mul(1u32 << attempt.min(16)).min(self.max);
        bound.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let backoff = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2) };
        for _ in 0..100 {
            let first = backoff.delay(0);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let late = backoff.delay(30);
            assert!(late >= Duration::from_secs(1) && late <= Duration::from_secs(2));
        }
    }
}

//! Per-connection publish rate limit (token bucket).

// tokio's clock (the real one outside tests) so a test can pause it.
use tokio::time::Instant;

/// Allows `rate` operations per second on average and bursts of up to `burst`. The rate and
/// the burst are the caller's (the same for every connection), not stored in each bucket.
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket that starts full.
    pub fn new(burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one; `rate == 0` never limits.
    pub fn try_take(&mut self, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * f64::from(rate);
        self.tokens = (self.tokens + refill).min(f64::from(burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse() {
        let mut b = TokenBucket::new(3);
        assert!((0..3).all(|_| b.try_take(1, 3)));
        assert!(!b.try_take(1, 3));
        assert!(TokenBucket::new(0).try_take(0, 0));
    }

    /// The bucket refills at the rate, never beyond the burst (paused clock: no waiting).
    #[tokio::test(start_paused = true)]
    async fn refills_at_the_rate_up_to_the_burst() {
        let mut b = TokenBucket::new(2);
        assert!(b.try_take(10, 2) && b.try_take(10, 2) && !b.try_take(10, 2));
        tokio::time::advance(std::time::Duration::from_millis(100)).await;
        assert!(b.try_take(10, 2), "one token after 100 ms at 10/s");
        assert!(!b.try_take(10, 2));
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        assert!(b.try_take(10, 2) && b.try_take(10, 2));
        assert!(
            !b.try_take(10, 2),
            "no more than the burst, however long the wait"
        );
    }
}

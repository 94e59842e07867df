//! Rate limits for contact requests: what a stranger can make us store.
//!
//! Token buckets in the caller's time (sans-IO): per stranger, and for all strangers together, so neither
//! one stranger nor many can fill the disk. A refused message is neither stored nor acknowledged: its sender
//! keeps it and retries later, so rate limiting loses nothing.

use kith_core::AccountKey;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, want: usize, capacity: f64, per: Duration, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed / per.as_secs_f64()).min(capacity);
        self.last = now;
        let n = (self.tokens.floor() as usize).min(want);
        self.tokens -= n as f64;
        n
    }
}

#[derive(Debug, Clone)]
pub struct LimiterConfig {
    /// Burst of messages one stranger may leave.
    pub per_sender_burst: f64,
    /// One more message allowed per this interval.
    pub per_sender_refill: Duration,
    pub global_burst: f64,
    pub global_refill: Duration,
    /// Strangers tracked at once; beyond it the oldest entries are forgotten (they start from a full bucket
    /// again, but the global bucket still holds).
    pub max_tracked: usize,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            per_sender_burst: 20.0,
            per_sender_refill: Duration::from_secs(30),
            global_burst: 200.0,
            global_refill: Duration::from_secs(1),
            max_tracked: 4096,
        }
    }
}

#[derive(Debug)]
pub struct RequestLimiter {
    config: LimiterConfig,
    senders: HashMap<AccountKey, Bucket>,
    global: Bucket,
}

impl RequestLimiter {
    pub fn new(config: LimiterConfig, now: Instant) -> Self {
        let global = Bucket {
            tokens: config.global_burst,
            last: now,
        };
        Self {
            config,
            senders: HashMap::new(),
            global,
        }
    }

    /// How many of `want` messages from stranger `from` may be stored now.
    pub fn allow(&mut self, from: AccountKey, want: usize, now: Instant) -> usize {
        if self.senders.len() >= self.config.max_tracked && !self.senders.contains_key(&from) {
            let oldest = self
                .senders
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.senders.remove(&k);
            }
        }
        let c = &self.config;
        let bucket = self.senders.entry(from).or_insert(Bucket {
            tokens: c.per_sender_burst,
            last: now,
        });
        let mut probe = *bucket;
        let n = probe.take(want, c.per_sender_burst, c.per_sender_refill, now);
        let n = self.global.take(n, c.global_burst, c.global_refill, now);
        bucket.take(n, c.per_sender_burst, c.per_sender_refill, now);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_core::AccountSecret;
    use rand::SeedableRng;

    #[test]
    fn per_sender_and_global_limits() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let cfg = LimiterConfig {
            per_sender_burst: 5.0,
            global_burst: 8.0,
            ..Default::default()
        };
        let mut l = RequestLimiter::new(cfg, t0);
        let a = AccountSecret::generate(&mut rng).public();
        let b = AccountSecret::generate(&mut rng).public();
        assert_eq!(l.allow(a, 10, t0), 5, "burst per sender");
        assert_eq!(l.allow(a, 1, t0), 0, "exhausted");
        assert_eq!(
            l.allow(b, 10, t0),
            3,
            "the global bucket caps all strangers together"
        );
        assert_eq!(
            l.allow(a, 1, t0 + Duration::from_secs(30)),
            1,
            "refills over time"
        );
    }
}

//! Byte-counting token buckets.
//!
//! A [`Limiter`] is a `governor` GCRA bucket where one cell is one byte, with
//! a small burst: 1/20 s worth of bytes, but at least [`MIN_BURST`] so one
//! block always fits. (A burst of a whole second let a fresh limiter send a
//! second's worth at once, which the benchmark lab measured as caps
//! overshooting by 17-20 % on short transfers.) Governor counts in `u32`, so
//! [`Limiter::consume`] splits a `u64` amount into burst-sized chunks and
//! waits for each. A [`LimiterChain`] is the set of limits that all apply to
//! one stream of bytes, for example the agent's upload cap and the task's
//! speed; bytes pass only when every limiter in the chain admits them.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// Smallest burst: the largest request a peer may make.
pub const MIN_BURST: u32 = pollen_protocol::message::MAX_REQUEST_LEN;

/// One byte-rate limit.
pub struct Limiter {
    inner: RateLimiter<NotKeyed, InMemoryState, DefaultClock>,
    burst: NonZeroU32,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("bytes_per_sec", &self.burst)
            .finish()
    }
}

impl Limiter {
    /// A limit of `bytes_per_sec` (at least 1; rates above `u32::MAX` bytes
    /// per second are clamped to it, about 4 GiB/s).
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = u32::try_from(bytes_per_sec.max(1)).unwrap_or(u32::MAX);
        let per_sec = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new((rate / 20).max(MIN_BURST)).unwrap_or(NonZeroU32::MIN);
        Self {
            inner: RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst)),
            burst,
        }
    }

    /// A limit when `bytes_per_sec` is `Some`, none otherwise.
    pub fn optional(bytes_per_sec: Option<u64>) -> Option<Arc<Self>> {
        bytes_per_sec.map(|b| Arc::new(Self::new(b)))
    }

    /// Waits until `n` bytes may pass.
    pub async fn consume(&self, mut n: u64) {
        while n > 0 {
            let chunk = n.min(u64::from(self.burst.get()));
            n -= chunk;
            let Some(cells) = u32::try_from(chunk).ok().and_then(NonZeroU32::new) else {
                continue;
            };
            // `chunk <= burst`, so capacity is never insufficient.
            let _ = self.inner.until_n_ready(cells).await;
        }
    }
}

/// Several limits that all apply to the same bytes.
#[derive(Clone, Debug, Default)]
pub struct LimiterChain {
    limiters: Vec<Arc<Limiter>>,
}

impl LimiterChain {
    /// A chain of the given limiters; `None`s are skipped.
    pub fn new(limiters: impl IntoIterator<Item = Option<Arc<Limiter>>>) -> Self {
        Self {
            limiters: limiters.into_iter().flatten().collect(),
        }
    }

    /// A chain that never waits.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// This chain plus one more limiter.
    pub fn with(&self, extra: Option<Arc<Limiter>>) -> Self {
        let mut limiters = self.limiters.clone();
        limiters.extend(extra);
        Self { limiters }
    }

    /// Whether the chain has no limit.
    pub fn is_unlimited(&self) -> bool {
        self.limiters.is_empty()
    }

    /// Waits until every limiter admits `n` bytes.
    pub async fn consume(&self, n: u64) {
        for l in &self.limiters {
            l.consume(n).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn unlimited_chain_never_waits() {
        let c = LimiterChain::unlimited();
        assert!(c.is_unlimited());
        let t = Instant::now();
        c.consume(u64::MAX).await;
        assert!(t.elapsed() < Duration::from_millis(200));
    }

    #[tokio::test]
    async fn enforces_the_rate_and_handles_large_amounts() {
        // 64 KiB/s: the minimum burst (128 KiB) passes at once, the rest waits.
        let l = Limiter::new(64 * 1024);
        let t = Instant::now();
        l.consume(u64::from(MIN_BURST)).await;
        assert!(t.elapsed() < Duration::from_millis(200));
        l.consume(32 * 1024).await;
        let e = t.elapsed();
        assert!(e >= Duration::from_millis(400), "{e:?}");
        assert!(e < Duration::from_millis(2000), "{e:?}");
    }

    #[tokio::test]
    async fn a_fresh_limiter_does_not_burst_a_whole_second() {
        // 1 MiB/s: 512 KiB must take at least (512 - 128) KiB / 1 MiB/s = 375 ms.
        let l = Limiter::new(1024 * 1024);
        let t = Instant::now();
        l.consume(512 * 1024).await;
        let e = t.elapsed();
        assert!(e >= Duration::from_millis(350), "{e:?}");
        assert!(e < Duration::from_millis(2000), "{e:?}");
    }

    #[tokio::test]
    async fn amounts_above_u32_are_split() {
        let l = Limiter::new(u64::MAX);
        let t = Instant::now();
        // Above u32::MAX at the clamped rate: split into bursts, and it ends.
        l.consume(u64::from(u32::MAX) + 1).await;
        let e = t.elapsed();
        assert!(e < Duration::from_secs(10), "{e:?}");
    }

    #[tokio::test]
    async fn chain_applies_the_tightest_limit() {
        let c = LimiterChain::new([
            Limiter::optional(Some(10_000_000)),
            None,
            Limiter::optional(Some(32 * 1024)),
        ]);
        let t = Instant::now();
        // The 32 KiB/s limiter lets its 128 KiB burst through, then 16 KiB takes 0.5 s.
        c.consume(u64::from(MIN_BURST) + 16 * 1024).await;
        let e = t.elapsed();
        assert!(e >= Duration::from_millis(350), "{e:?}");
    }
}

//! The one request limiter per process (governor, GCRA): counts HTTP requests to Astra, not jobs, and is
//! shared by every job; a small burst (about 20 ms of quota) keeps the first second at the configured rate.
//! A 429 pauses it for `Retry-After`. With several instances, `requests_per_second` is each one's share.

use std::{num::NonZeroU32, sync::Mutex, time::Duration};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

pub struct RequestLimiter {
    limiter: DefaultDirectRateLimiter,
    rate: u32,
    burst: u32,
    paused_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RequestLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestLimiter({}/s, burst {})", self.rate, self.burst)
    }
}

impl RequestLimiter {
    pub fn new(requests_per_second: u32, burst: u32) -> RequestLimiter {
        let rate = NonZeroU32::new(requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst_nz = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        RequestLimiter {
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst_nz)),
            rate: rate.get(),
            burst: burst_nz.get(),
            paused_until: Mutex::new(None),
        }
    }

    /// The configured rate, in requests per second.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Waits until one more request may go out.
    pub async fn acquire(&self) {
        loop {
            let paused = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            match paused {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
        self.limiter.until_ready().await;
    }

    /// Holds every caller back for `d` (Astra answered 429 with `Retry-After`).
    pub fn pause_for(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut g = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none_or(|cur| cur < until) {
            *g = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pause_holds_the_next_request_back() {
        let l = RequestLimiter::new(1000, 20);
        l.pause_for(Duration::from_millis(150));
        let t = std::time::Instant::now();
        l.acquire().await;
        assert!(t.elapsed() >= Duration::from_millis(140), "acquire returned during the pause");
    }
}

//! The one request limiter per process (governor, GCRA): counts HTTP requests to Astra, not jobs, and is
//! shared by every job; a small burst (about 20 ms of quota) keeps the first second at the configured rate.
//! Astra counts requests as they arrive, and requests sent evenly arrive bunched (connections, scheduling),
//! so the limiter releases with half the configured burst (at least 2, which absorbs a late timer wake-up)
//! and leaves the rest to that jitter: rate + burst is what may arrive in any one second.
//! A 429 pauses it for `Retry-After`. `astra.requests_per_second` is the whole deployment's budget: with
//! several processes calling Astra at once, each takes an equal share (see `store::ledger::presence`).
//! It also tells a job how many requests to keep in flight so the rate is used at the latency Astra shows.

use std::{
    num::NonZeroU32,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

/// Time an item spends beside its request (the store's reads and writes), counted into the pace.
const ITEM_OVERHEAD: Duration = Duration::from_millis(10);

pub struct RequestLimiter {
    /// Rebuilt when this process's share changes.
    limiter: RwLock<Arc<DefaultDirectRateLimiter>>,
    rate: u32,
    burst: u32,
    /// How many processes share the rate now (1 alone).
    share: AtomicU64,
    /// Astra's latency as observed, smoothed (microseconds).
    latency_us: AtomicU64,
    paused_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RequestLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestLimiter({}/s, burst {}, share 1/{})", self.rate, self.burst, self.share())
    }
}

/// The burst the limiter releases with: half the configured one, at least two (a single-request burst
/// loses the time every late timer wake-up costs) unless one was configured.
fn released_burst(burst: u32) -> u32 {
    (burst / 2).max(burst.min(2))
}

fn governor(rate: u32, burst: u32) -> Arc<DefaultDirectRateLimiter> {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(released_burst(burst)).unwrap_or(NonZeroU32::MIN);
    Arc::new(RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)))
}

impl RequestLimiter {
    pub fn new(requests_per_second: u32, burst: u32) -> RequestLimiter {
        let rate = requests_per_second.max(1);
        let burst = burst.max(1);
        RequestLimiter {
            limiter: RwLock::new(governor(rate, burst)),
            rate,
            burst,
            share: AtomicU64::new(1),
            latency_us: AtomicU64::new(0),
            paused_until: Mutex::new(None),
        }
    }

    /// The configured rate (the deployment's budget), in requests per second.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// How many processes share the budget now.
    pub fn share(&self) -> u64 {
        self.share.load(Ordering::Relaxed)
    }

    /// This process's rate: the budget divided among the processes sharing it (at least 1 request/s).
    pub fn own_rate(&self) -> u32 {
        (self.rate / u32::try_from(self.share()).unwrap_or(u32::MAX)).max(1)
    }

    /// Divides the budget among `processes` (this one included).
    pub fn set_share(&self, processes: u64) {
        let processes = processes.max(1);
        if self.share.swap(processes, Ordering::Relaxed) != processes {
            // The burst is the deployment's too: each process takes its share of it.
            let rate = self.own_rate();
            let burst = (self.burst / u32::try_from(processes).unwrap_or(u32::MAX)).clamp(1, rate);
            *self.limiter.write().unwrap_or_else(|p| p.into_inner()) = governor(rate, burst);
        }
    }

    /// Records one request's latency into the smoothed figure the pace is derived from.
    pub fn observe(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { old - old / 8 + us / 8 };
        self.latency_us.store(new, Ordering::Relaxed);
    }

    /// How many requests to keep in flight so this process's rate is used at the latency observed: rate ×
    /// (latency + the item's own time) × 1.5 for jitter, plus the burst; at least 2, at most `ceiling`.
    pub fn in_flight(&self, ceiling: u32) -> usize {
        let per_item = Duration::from_micros(self.latency_us.load(Ordering::Relaxed)) + ITEM_OVERHEAD;
        let want = f64::from(self.own_rate()) * per_item.as_secs_f64() * 1.5 + f64::from(self.burst);
        (want.ceil() as usize).clamp(2, ceiling.max(2) as usize)
    }

    /// Waits until one more request may go out.
    pub async fn acquire(&self) {
        loop {
            let paused = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(until) = paused.filter(|u| *u > Instant::now()) {
                tokio::time::sleep_until(until).await;
                continue;
            }
            let limiter = self.current();
            limiter.until_ready().await;
            // A share that changed while this request waited rebuilt the limiter: a permit of the old one is
            // the old share's. Waiting again in the new one keeps the old one's waiters from going out at the
            // old rate beside the new one's (a second process arriving would otherwise see this one's
            // hundreds of waiters leave at its whole rate).
            if Arc::ptr_eq(&limiter, &self.current()) {
                return;
            }
        }
    }

    fn current(&self) -> Arc<DefaultDirectRateLimiter> {
        self.limiter.read().unwrap_or_else(|p| p.into_inner()).clone()
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

    #[test]
    fn requests_in_flight_grow_with_latency_within_the_ceiling() {
        let l = RequestLimiter::new(200, 4);
        let quiet = l.in_flight(256);
        for _ in 0..64 {
            l.observe(Duration::from_millis(100));
        }
        let slow = l.in_flight(256);
        assert!(slow >= 30, "200/s at 100 ms needs at least 20 in flight, asked {slow}");
        assert!(slow > quiet * 3, "in flight at 100 ms ({slow}) vs at no latency ({quiet})");
        assert_eq!(l.in_flight(8), 8, "the ceiling bounds it");
    }

    #[test]
    fn half_the_burst_is_left_to_the_jitter_of_arrivals() {
        assert_eq!([1, 2, 3, 4, 20].map(released_burst), [1, 2, 2, 2, 10]);
    }

    #[test]
    fn at_once_the_limiter_releases_half_the_burst() {
        // One request a second: the quota does not refill while the test runs.
        let l = RequestLimiter::new(1, 20);
        let limiter = l.current();
        let released = (0..20).take_while(|_| limiter.check().is_ok()).count();
        assert_eq!(released, 10);
    }

    /// A request waiting in the limiter when the share changes waits again in the new one: it leaves at the
    /// new share's pace, not the old limiter's.
    #[tokio::test]
    async fn a_waiter_goes_out_at_the_new_share_when_the_share_changes() {
        let l = Arc::new(RequestLimiter::new(2, 2));
        let t = std::time::Instant::now();
        l.acquire().await;
        l.acquire().await;
        // The old limiter (2/s) would let the next one out half a second from now.
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await }
        });
        tokio::task::yield_now().await;
        l.set_share(2);
        // The new limiter (1/s, burst 1): its one permit taken, its next comes a second after it was built.
        assert!(l.current().check().is_ok());
        waiter.await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(900), "left after {:?}, at the old share's pace", t.elapsed());
    }

    #[test]
    fn the_budget_is_divided_among_the_processes_sharing_it() {
        let l = RequestLimiter::new(300, 6);
        assert_eq!(l.own_rate(), 300);
        l.set_share(3);
        assert_eq!((l.rate(), l.own_rate()), (300, 100));
        l.set_share(0);
        assert_eq!(l.own_rate(), 300);
    }
}

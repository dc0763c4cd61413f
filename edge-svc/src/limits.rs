//! Per-edge and per-connection limits: connection slots per edge and per
//! address, a token bucket on lines, and a budget of mistakes. Pure logic,
//! tested without sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connection slots: at most `total` at once, and `per_addr` from one IP
/// address (0: no cap).
pub(crate) struct Slots {
    total: usize,
    per_addr: usize,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One connection's slot, given back when dropped.
pub(crate) struct Slot {
    slots: Arc<Slots>,
    addr: IpAddr,
}

impl Slots {
    pub(crate) fn new(total: usize, per_addr: usize) -> Arc<Slots> {
        Arc::new(Slots {
            total,
            per_addr,
            held: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for a connection from `addr`, or `None` if a cap is reached.
    pub(crate) fn acquire(self: &Arc<Self>, addr: IpAddr) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_addr) = &mut *held;
        let from_addr = by_addr.get(&addr).copied().unwrap_or(0);
        if (self.total > 0 && *total >= self.total)
            || (self.per_addr > 0 && from_addr >= self.per_addr)
        {
            return None;
        }
        *total += 1;
        by_addr.insert(addr, from_addr + 1);
        Some(Slot {
            slots: self.clone(),
            addr,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_addr) = &mut *held;
        *total -= 1;
        if let Some(n) = by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                by_addr.remove(&self.addr);
            }
        }
    }
}

/// A token bucket: `rate` lines per second on average, `burst` at once;
/// a rate of 0 lets everything through.
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: u32, burst: u32, now: Instant) -> Bucket {
        Bucket {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts a connection's mistakes per minute; `max` 0: no limit.
pub(crate) struct Mistakes {
    max: u32,
    count: u32,
    since: Instant,
}

impl Mistakes {
    pub(crate) fn new(max: u32, now: Instant) -> Mistakes {
        Mistakes {
            max,
            count: 0,
            since: now,
        }
    }

    /// Records one; true when that is one too many.
    pub(crate) fn record(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.since) >= Duration::from_secs(60) {
            self.count = 0;
            self.since = now;
        }
        self.count += 1;
        self.max > 0 && self.count > self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_per_address_and_in_all() {
        let slots = Slots::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = slots.acquire(a).unwrap();
        let _a2 = slots.acquire(a).unwrap();
        assert!(slots.acquire(a).is_none(), "two per address");
        let _b1 = slots.acquire(b).unwrap();
        assert!(slots.acquire(b).is_none(), "three in all");
        drop(a1);
        assert!(
            slots.acquire(b).is_some(),
            "a slot given back is free again"
        );
        let open = Slots::new(0, 0);
        let many: Vec<_> = (0..100).map(|_| open.acquire(a).unwrap()).collect();
        assert_eq!(many.len(), 100, "0 means no cap");
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 3, t0);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0), "burst spent");
        assert!(
            b.take(t0 + Duration::from_millis(100)),
            "one more after 1/10 s"
        );
        assert!(!b.take(t0 + Duration::from_millis(100)));
        assert!(
            (0..3).all(|_| b.take(t0 + Duration::from_secs(10))),
            "refills to the burst only"
        );
        assert!(!b.take(t0 + Duration::from_secs(10)));
        let mut off = Bucket::new(0, 0, t0);
        assert!((0..1000).all(|_| off.take(t0)));
    }

    #[test]
    fn mistakes_over_the_budget_within_a_minute() {
        let t0 = Instant::now();
        let mut m = Mistakes::new(2, t0);
        assert!(!m.record(t0) && !m.record(t0));
        assert!(m.record(t0), "the third is one too many");
        let mut m = Mistakes::new(2, t0);
        m.record(t0);
        m.record(t0);
        assert!(!m.record(t0 + Duration::from_secs(61)), "a new minute");
        assert!(!Mistakes::new(0, t0).record(t0));
    }
}

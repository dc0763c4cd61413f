//! Per-edge and per-connection limits: connection slots per edge and per
//! address (and for those not logged in yet), the accept rate per address,
//! a token bucket on lines, and a budget of mistakes. Pure logic, tested
//! without sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connection slots: at most `total` at once, `per_addr` from one IP
/// address, and `unauth_per_addr` from one address that have not logged
/// in yet (0: no cap).
pub(crate) struct Slots {
    total: usize,
    per_addr: usize,
    unauth_per_addr: usize,
    held: Mutex<(usize, HashMap<IpAddr, Held>)>,
}

/// The slots one address holds: in all, and not logged in yet.
#[derive(Default)]
struct Held {
    all: usize,
    unauth: usize,
}

/// Why a connection got no slot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The edge's or the address's cap.
    Full,
    /// Too many of the address's connections have not logged in.
    Unauthenticated,
}

/// One connection's slot, given back when dropped. It counts as not
/// logged in until [`Slot::logged_in`].
pub(crate) struct Slot {
    slots: Arc<Slots>,
    addr: IpAddr,
    unauth: bool,
}

impl Slots {
    pub(crate) fn new(total: usize, per_addr: usize, unauth_per_addr: usize) -> Arc<Slots> {
        Arc::new(Slots {
            total,
            per_addr,
            unauth_per_addr,
            held: Mutex::new((0, HashMap::new())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, Held>)> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `addr`, not logged in yet, unless a
    /// cap is reached.
    pub(crate) fn acquire(self: &Arc<Self>, addr: IpAddr) -> Result<Slot, Refusal> {
        let mut held = self.lock();
        let (total, by_addr) = &mut *held;
        let from = by_addr.entry(addr).or_default();
        let refusal = if (self.total > 0 && *total >= self.total)
            || (self.per_addr > 0 && from.all >= self.per_addr)
        {
            Some(Refusal::Full)
        } else if self.unauth_per_addr > 0 && from.unauth >= self.unauth_per_addr {
            Some(Refusal::Unauthenticated)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            if from.all == 0 {
                by_addr.remove(&addr);
            }
            return Err(refusal);
        }
        from.all += 1;
        from.unauth += 1;
        *total += 1;
        Ok(Slot {
            slots: self.clone(),
            addr,
            unauth: true,
        })
    }
}

impl Slot {
    /// The connection logged in: it no longer counts against
    /// `unauth_per_addr`.
    pub(crate) fn logged_in(&mut self) {
        if std::mem::take(&mut self.unauth) {
            if let Some(n) = self.slots.lock().1.get_mut(&self.addr) {
                n.unauth -= 1;
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.lock();
        let (total, by_addr) = &mut *held;
        *total -= 1;
        if let Some(n) = by_addr.get_mut(&self.addr) {
            n.all -= 1;
            n.unauth -= usize::from(self.unauth);
            if n.all == 0 {
                by_addr.remove(&self.addr);
            }
        }
    }
}

/// New connections per address: a token bucket each, `rate` a second and
/// `burst` at once (rate 0: no limit). The map forgets an address whose
/// bucket has been full again for a refill period, and holds at most
/// `max_addrs` (past that, new addresses are let through untracked: the
/// edge's own connection cap still holds).
pub(crate) struct AcceptRate {
    rate: u32,
    burst: u32,
    max_addrs: usize,
    buckets: HashMap<IpAddr, Bucket>,
    swept: Instant,
}

impl AcceptRate {
    pub(crate) fn new(rate: u32, burst: u32, max_addrs: usize, now: Instant) -> AcceptRate {
        AcceptRate {
            rate,
            burst,
            max_addrs,
            buckets: HashMap::new(),
            swept: now,
        }
    }

    /// The time an empty bucket takes to fill.
    fn refill(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.burst) / f64::from(self.rate.max(1)))
    }

    /// Whether a new connection from `addr` may be served.
    pub(crate) fn allow(&mut self, addr: IpAddr, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        // Every refill period, forget the buckets untouched since the last
        // sweep: they are full again, as a new one would be.
        let refill = self.refill();
        if now.saturating_duration_since(self.swept) >= refill {
            let since = self.swept;
            self.buckets.retain(|_, b| b.last > since);
            self.swept = now;
        }
        if let Some(bucket) = self.buckets.get_mut(&addr) {
            return bucket.take(now);
        }
        if self.buckets.len() >= self.max_addrs {
            return true;
        }
        let mut bucket = Bucket::new(self.rate, self.burst, now);
        let allowed = bucket.take(now);
        self.buckets.insert(addr, bucket);
        allowed
    }

    /// Addresses tracked.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.len()
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

    /// Takes `n` tokens, into debt down to minus the burst: the lines that
    /// follow wait until it is paid.
    pub(crate) fn charge(&mut self, n: f64) {
        if self.rate > 0.0 {
            self.tokens = (self.tokens - n).max(-self.burst);
        }
    }

    /// How long from the last [`Bucket::take`] until a token is there.
    pub(crate) fn wait(&self) -> Duration {
        if self.rate == 0.0 || self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
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
        let slots = Slots::new(3, 2, 0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = slots.acquire(a).unwrap();
        let _a2 = slots.acquire(a).unwrap();
        assert_eq!(
            slots.acquire(a).err(),
            Some(Refusal::Full),
            "two per address"
        );
        let _b1 = slots.acquire(b).unwrap();
        assert_eq!(slots.acquire(b).err(), Some(Refusal::Full), "three in all");
        drop(a1);
        assert!(slots.acquire(b).is_ok(), "a slot given back is free again");
        let open = Slots::new(0, 0, 0);
        let many: Vec<_> = (0..100).map(|_| open.acquire(a).unwrap()).collect();
        assert_eq!(many.len(), 100, "0 means no cap");
    }

    #[test]
    fn connections_not_logged_in_are_capped_per_address() {
        let slots = Slots::new(0, 5, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut a1 = slots.acquire(a).unwrap();
        let a2 = slots.acquire(a).unwrap();
        assert_eq!(slots.acquire(a).err(), Some(Refusal::Unauthenticated));
        assert!(slots.acquire(b).is_ok(), "per address");
        a1.logged_in();
        a1.logged_in(); // once only
        let _a3 = slots.acquire(a).unwrap();
        assert_eq!(
            slots.acquire(a).err(),
            Some(Refusal::Unauthenticated),
            "a logged-in connection makes room for one"
        );
        drop(a2);
        let _a4 = slots.acquire(a).unwrap();
        drop(a1);
        assert_eq!(
            slots.acquire(a).err(),
            Some(Refusal::Unauthenticated),
            "a logged-in connection that ends frees no unauthenticated slot"
        );
    }

    #[test]
    fn accepts_are_rate_limited_per_address_and_idle_addresses_forgotten() {
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut rate = AcceptRate::new(10, 3, 100, t0);
        assert!((0..3).all(|_| rate.allow(a, t0)), "the burst");
        assert!(!rate.allow(a, t0), "then the rate");
        assert!(rate.allow(b, t0), "per address");
        assert!(
            rate.allow(a, t0 + Duration::from_millis(100)),
            "1/10 s later"
        );
        // Untouched for two sweeps (every refill period, 0.3 s): forgotten.
        assert!(rate.allow(b, t0 + Duration::from_millis(400)));
        let later = t0 + Duration::from_secs(1);
        assert!(rate.allow(b, later));
        assert_eq!(rate.tracked(), 1, "only b is remembered");
        assert!((0..3).all(|_| rate.allow(a, later)), "a starts afresh");

        // Bounded: past max_addrs, new addresses go untracked.
        let mut small = AcceptRate::new(1, 1, 2, t0);
        for i in 0..10u8 {
            let addr = IpAddr::from([10, 0, 1, i]);
            assert!(small.allow(addr, t0));
        }
        assert_eq!(small.tracked(), 2);
        assert!(
            !small.allow(IpAddr::from([10, 0, 1, 0]), t0),
            "tracked ones still limited"
        );
        let mut off = AcceptRate::new(0, 0, 2, t0);
        assert!((0..1000).all(|_| off.allow(a, t0)));
        assert_eq!(off.tracked(), 0);
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
        assert_eq!(b.wait(), Duration::from_millis(100), "a token every 1/10 s");
        assert!(b.take(t0 + Duration::from_secs(10) + b.wait()));
        b.charge(100.0);
        assert_eq!(
            b.wait(),
            Duration::from_millis(400),
            "in debt down to the burst"
        );
        let mut off = Bucket::new(0, 0, t0);
        assert!((0..1000).all(|_| off.take(t0)));
        assert_eq!(off.wait(), Duration::ZERO);
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

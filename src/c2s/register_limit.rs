//! How many accounts one address may create by XEP-0077 in-band
//! registration, in the manner of ejabberd's `registration_timeout` (one
//! registration per IP per 600 s) and Prosody's `mod_register_limits`:
//! at most `per_address` registrations per `interval` from one address
//! (an IPv4 address or an IPv6 /64, see [`super::addr`]); addresses in
//! `limits_exempt` are not counted. Pure: no I/O, the caller passes the
//! current time.
//!
//! Why: each registration costs a PBKDF2 derivation and a raft write, and
//! an open server without a limit took 1,000 accounts from one address in
//! 3.9 s (issue 10, item 3).
//!
//! A slot is taken *before* the registration is tried ([`RegistrationLimiter::take`])
//! and given back if it fails ([`RegistrationLimiter::give_back`]: a taken
//! name, a bad request), so parallel attempts from one address cannot all
//! pass the check before any of them is counted, and a user who picked a
//! taken name may try another.
//!
//! Per node, like [`super::auth_limit`]: an address gets `per_address`
//! registrations per node per interval. Sharing the count through raft
//! would let the attacker drive raft writes; through the mesh it is soft
//! state that could be added the way `auth_limit` describes.
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::addr::{self, IpNet};

/// Limits of [`RegistrationLimiter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationLimitConfig {
    /// Registrations from one address per `interval`. 0: no limit.
    pub per_address: u32,
    pub interval: Duration,
    /// Most addresses tracked at once; beyond it the least recently seen
    /// are forgotten.
    pub max_tracked: usize,
    /// Addresses never limited.
    pub exempt: Vec<IpNet>,
}

impl Default for RegistrationLimitConfig {
    fn default() -> Self {
        RegistrationLimitConfig {
            per_address: 1,
            interval: Duration::from_secs(600),
            max_tracked: 100_000,
            exempt: Vec::new(),
        }
    }
}

/// A registration slot taken by [`RegistrationLimiter::take`]; `None`
/// inside when the address is not limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(Option<(IpAddr, Instant)>);

/// Counts registrations per address over a sliding interval.
#[derive(Debug)]
pub struct RegistrationLimiter {
    config: RegistrationLimitConfig,
    /// Address key -> when its counted registrations were taken, oldest first.
    addresses: HashMap<IpAddr, VecDeque<Instant>>,
}

impl RegistrationLimiter {
    pub fn new(config: RegistrationLimitConfig) -> Self {
        RegistrationLimiter {
            config,
            addresses: HashMap::new(),
        }
    }

    /// Takes a registration slot for `ip`, or says how long until one frees.
    pub fn take(&mut self, ip: IpAddr, now: Instant) -> Result<Slot, Duration> {
        let c = &self.config;
        if c.per_address == 0 || addr::exempt(&c.exempt, ip) {
            return Ok(Slot(None));
        }
        let key = addr::subscriber(ip);
        if !self.addresses.contains_key(&key) && self.addresses.len() >= c.max_tracked {
            self.make_room(now);
        }
        let interval = self.config.interval;
        let times = self.addresses.entry(key).or_default();
        while times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= interval)
        {
            times.pop_front();
        }
        if times.len() >= self.config.per_address as usize {
            let oldest = times.front().copied().unwrap_or(now);
            return Err(interval.saturating_sub(now.saturating_duration_since(oldest)));
        }
        times.push_back(now);
        Ok(Slot(Some((key, now))))
    }

    /// The registration of `slot` did not happen: it does not count.
    pub fn give_back(&mut self, slot: Slot) {
        let Slot(Some((key, at))) = slot else {
            return;
        };
        if let Some(times) = self.addresses.get_mut(&key) {
            if let Some(i) = times.iter().rposition(|t| *t == at) {
                times.remove(i);
            }
            if times.is_empty() {
                self.addresses.remove(&key);
            }
        }
    }

    /// Forgets expired addresses, then the least recently seen, until
    /// there is room for one more.
    fn make_room(&mut self, now: Instant) {
        let interval = self.config.interval;
        self.addresses.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.saturating_duration_since(*t) < interval)
        });
        while self.addresses.len() >= self.config.max_tracked {
            let oldest = self
                .addresses
                .iter()
                .min_by_key(|(_, times)| times.back().copied())
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    self.addresses.remove(&k);
                }
                None => break,
            }
        }
    }

    /// Addresses tracked (for tests).
    pub fn tracked(&self) -> usize {
        self.addresses.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limiter(per: u32, secs: u64) -> RegistrationLimiter {
        RegistrationLimiter::new(RegistrationLimitConfig {
            per_address: per,
            interval: Duration::from_secs(secs),
            max_tracked: 3,
            exempt: vec!["127.0.0.1".parse().unwrap()],
        })
    }

    #[test]
    fn one_per_interval_per_address() {
        let mut l = limiter(1, 600);
        let t0 = Instant::now();
        l.take(ip("192.0.2.1"), t0).unwrap();
        let wait = l
            .take(ip("192.0.2.1"), t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(590));
        // Another address is not affected.
        l.take(ip("192.0.2.2"), t0).unwrap();
        // Once the interval has passed, the address may register again.
        l.take(ip("192.0.2.1"), t0 + Duration::from_secs(600))
            .unwrap();
    }

    #[test]
    fn an_ipv6_slash_64_is_one_address() {
        let mut l = limiter(2, 600);
        let t0 = Instant::now();
        l.take(ip("2001:db8:1:2::1"), t0).unwrap();
        l.take(ip("2001:db8:1:2:ffff::9"), t0).unwrap();
        assert!(l.take(ip("2001:db8:1:2::abcd"), t0).is_err());
        l.take(ip("2001:db8:1:3::1"), t0).unwrap();
        // IPv4-mapped counts as the IPv4 address.
        l.take(ip("192.0.2.7"), t0).unwrap();
        l.take(ip("::ffff:192.0.2.7"), t0).unwrap();
        assert!(l.take(ip("192.0.2.7"), t0).is_err());
    }

    #[test]
    fn a_failed_registration_is_given_back() {
        let mut l = limiter(1, 600);
        let t0 = Instant::now();
        let s = l.take(ip("192.0.2.1"), t0).unwrap();
        assert!(l.take(ip("192.0.2.1"), t0).is_err());
        l.give_back(s);
        l.take(ip("192.0.2.1"), t0).unwrap();
    }

    #[test]
    fn exempt_and_unlimited_are_never_counted() {
        let mut l = limiter(1, 600);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(l.take(ip("127.0.0.1"), t0), Ok(Slot(None)));
        }
        let mut off = limiter(0, 600);
        for _ in 0..100 {
            off.take(ip("192.0.2.1"), t0).unwrap();
        }
        assert_eq!(l.tracked() + off.tracked(), 0);
    }

    #[test]
    fn memory_is_bounded() {
        let mut l = limiter(1, 600);
        let t0 = Instant::now();
        for i in 0..50u8 {
            l.take(
                ip(&format!("198.51.100.{i}")),
                t0 + Duration::from_secs(u64::from(i)),
            )
            .unwrap();
            assert!(l.tracked() <= 3);
        }
        // The most recent addresses are the ones kept.
        assert!(l
            .take(ip("198.51.100.49"), t0 + Duration::from_secs(60))
            .is_err());
    }
}

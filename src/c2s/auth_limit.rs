//! Failed-authentication limiting for client connections: counts failed
//! SASL attempts per account and per remote address over a sliding window,
//! refuses further attempts for a while (answered with RFC 6120 §6.5.10
//! `temporary-auth-failure`) and says how long to wait before answering a
//! failure. Pure: no I/O, the caller passes the current time.
//!
//! This is not part of SASL: [`crate::c2s::negotiate`] consults it around
//! the exchanges of [`crate::c2s::sasl`], which know nothing about it.
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Limits of [`AuthLimiter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLimitConfig {
    /// Failures per account within `account_window` after which further
    /// attempts for that account are refused. 0 disables the limit.
    pub account_max_failures: usize,
    pub account_window: Duration,
    /// Failures per remote address (IPv6: per /64) within `ip_window` after
    /// which further attempts from it are refused. 0 disables the limit.
    pub ip_max_failures: usize,
    pub ip_window: Duration,
    /// Delay before answering the first recent failure; doubles with each
    /// further one (`base_delay * 2^(n-1)`), up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Most accounts, and most addresses, tracked at once (each); beyond it
    /// expired and then the oldest entries are evicted.
    pub max_tracked: usize,
}

impl Default for AuthLimitConfig {
    fn default() -> Self {
        AuthLimitConfig {
            account_max_failures: 5,
            account_window: Duration::from_secs(60),
            ip_max_failures: 20,
            ip_window: Duration::from_secs(60),
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            max_tracked: 100_000,
        }
    }
}

/// Enough remembered failures per key to reach any sensible `max_delay`
/// (250 ms * 2^7 = 32 s) even where the limit itself is lower or disabled.
const MIN_HISTORY: usize = 8;

/// Counts failed authentications per account and per remote address over a
/// sliding window. Pure: the caller passes the current time.
///
/// Use: before a negotiation (and again once the authcid is known, see
/// [`peek_authcid`](crate::c2s::sasl::peek_authcid) /
/// [`SaslSession::authcid`](crate::c2s::sasl::SaslSession::authcid)) call [`AuthLimiter::check`]
/// and answer `<failure><temporary-auth-failure/></failure>` if it refuses;
/// on failure call [`AuthLimiter::record_failure`] and wait the returned
/// delay before sending `<failure/>`; on success call
/// [`AuthLimiter::record_success`].
///
/// Account names are compared lower-cased, so that case variants of a name
/// share one budget. Memory is bounded by `max_tracked` keys per table,
/// each holding at most `max(max_failures, 8)` instants.
#[derive(Debug)]
pub struct AuthLimiter {
    config: AuthLimitConfig,
    accounts: FailureTable<String>,
    ips: FailureTable<IpAddr>,
}

impl Default for AuthLimiter {
    fn default() -> Self {
        AuthLimiter::new(AuthLimitConfig::default())
    }
}

impl AuthLimiter {
    pub fn new(config: AuthLimitConfig) -> Self {
        AuthLimiter {
            accounts: FailureTable::new(
                config.account_max_failures,
                config.account_window,
                config.max_tracked,
            ),
            ips: FailureTable::new(config.ip_max_failures, config.ip_window, config.max_tracked),
            config,
        }
    }

    pub fn config(&self) -> &AuthLimitConfig {
        &self.config
    }

    /// Whether an attempt for `account` (if already known) from `ip` may
    /// proceed; `Err(retry_after)` when either is over its limit.
    pub fn check(
        &mut self,
        account: Option<&str>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<(), Duration> {
        let by_account = account.and_then(|a| self.accounts.blocked_for(&account_key(a), now));
        let by_ip = self.ips.blocked_for(&ip_key(ip), now);
        match by_account.max(by_ip) {
            Some(retry_after) => Err(retry_after),
            None => Ok(()),
        }
    }

    /// Records a failed attempt; returns how long to wait before sending
    /// `<failure/>` (grows with the recent failures of the account or the
    /// address, whichever has more).
    pub fn record_failure(&mut self, account: &str, ip: IpAddr, now: Instant) -> Duration {
        let by_account = self.accounts.record(account_key(account), now);
        let by_ip = self.ips.record(ip_key(ip), now);
        let n = by_account.max(by_ip).max(1);
        let exponent = u32::try_from(n - 1).unwrap_or(u32::MAX);
        self.config
            .base_delay
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.config.max_delay)
    }

    /// Records a successful authentication: forgets the account's failures.
    /// The address keeps its count, otherwise an attacker could reset it by
    /// logging in to an account of their own between guesses.
    pub fn record_success(&mut self, account: &str) {
        self.accounts.remove(&account_key(account));
    }

    /// Number of accounts and addresses currently tracked.
    pub fn tracked_keys(&self) -> usize {
        self.accounts.map.len() + self.ips.map.len()
    }
}

fn account_key(account: &str) -> String {
    account.to_lowercase()
}

/// IPv4-mapped IPv6 addresses count as IPv4; other IPv6 addresses by their
/// /64 prefix, which is what one subscriber usually gets.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[derive(Debug)]
struct FailureTable<K> {
    map: HashMap<K, VecDeque<Instant>>,
    max_failures: usize,
    window: Duration,
    max_tracked: usize,
}

impl<K: Hash + Eq + Clone> FailureTable<K> {
    fn new(max_failures: usize, window: Duration, max_tracked: usize) -> Self {
        FailureTable {
            map: HashMap::new(),
            max_failures,
            window,
            max_tracked: max_tracked.max(1),
        }
    }

    fn history(&self) -> usize {
        self.max_failures.max(MIN_HISTORY)
    }

    /// How long `key` stays blocked, if it is.
    fn blocked_for(&mut self, key: &K, now: Instant) -> Option<Duration> {
        if self.max_failures == 0 {
            return None;
        }
        let window = self.window;
        let times = self.map.get_mut(key)?;
        prune(times, now, window);
        if times.is_empty() {
            self.map.remove(key);
            return None;
        }
        if times.len() < self.max_failures {
            return None;
        }
        // Blocked until the failure that put it at the limit leaves the
        // window.
        let pivot = times[times.len() - self.max_failures];
        Some(window.saturating_sub(now.saturating_duration_since(pivot)))
    }

    /// Records a failure; returns the failures of `key` in the window.
    fn record(&mut self, key: K, now: Instant) -> usize {
        if !self.map.contains_key(&key) && self.map.len() >= self.max_tracked {
            self.evict(now);
        }
        let history = self.history();
        let window = self.window;
        let times = self.map.entry(key).or_default();
        prune(times, now, window);
        times.push_back(now);
        while times.len() > history {
            times.pop_front();
        }
        times.len()
    }

    fn remove(&mut self, key: &K) {
        self.map.remove(key);
    }

    /// Drops expired keys; if that is not enough, the least recently failed
    /// tenth, so that a flood of new keys costs one scan per tenth of the
    /// table rather than one per key.
    fn evict(&mut self, now: Instant) {
        let window = self.window;
        self.map.retain(|_, times| {
            times
                .back()
                .is_some_and(|last| now.saturating_duration_since(*last) < window)
        });
        if self.map.len() < self.max_tracked {
            return;
        }
        let target = self.max_tracked - self.max_tracked / 10 - 1;
        let excess = self.map.len().saturating_sub(target);
        if excess == 0 {
            return;
        }
        let mut by_age: Vec<(Instant, K)> = self
            .map
            .iter()
            .filter_map(|(k, times)| times.back().map(|last| (*last, k.clone())))
            .collect();
        if excess < by_age.len() {
            by_age.select_nth_unstable_by_key(excess - 1, |(last, _)| *last);
            by_age.truncate(excess);
        }
        for (_, key) in by_age {
            self.map.remove(&key);
        }
    }
}

fn prune(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const IP2: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn account_limit_and_window() {
        let mut limiter = AuthLimiter::default();
        let t0 = Instant::now();
        for i in 0..5u64 {
            // Different addresses: only the account limit applies.
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32));
            assert_eq!(limiter.check(Some("juliet"), ip, t0), Ok(()));
            limiter.record_failure("juliet", ip, t0 + Duration::from_secs(i));
        }
        let t = t0 + Duration::from_secs(10);
        // The first failure (t0) leaves the window at t0 + 60 s.
        assert_eq!(
            limiter.check(Some("juliet"), IP, t),
            Err(Duration::from_secs(50))
        );
        assert_eq!(
            limiter.check(Some("JULIET"), IP, t),
            Err(Duration::from_secs(50))
        );
        // Other accounts and the anonymous check are unaffected.
        assert_eq!(limiter.check(Some("romeo"), IP, t), Ok(()));
        assert_eq!(limiter.check(None, IP, t), Ok(()));
        assert_eq!(
            limiter.check(Some("juliet"), IP, t0 + Duration::from_secs(60)),
            Ok(())
        );
        assert_eq!(limiter.tracked_keys(), 1 + 5);
    }

    #[test]
    fn ip_limit() {
        let mut limiter = AuthLimiter::default();
        let t0 = Instant::now();
        for i in 0..20 {
            assert_eq!(limiter.check(None, IP, t0), Ok(()));
            limiter.record_failure(&format!("user{i}"), IP, t0);
        }
        let t = t0 + Duration::from_secs(1);
        assert_eq!(limiter.check(None, IP, t), Err(Duration::from_secs(59)));
        assert_eq!(
            limiter.check(Some("fresh"), IP, t),
            Err(Duration::from_secs(59))
        );
        assert_eq!(limiter.check(None, IP2, t), Ok(()));
        // IPv6: one /64 is one key; IPv4-mapped counts as IPv4.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(limiter.check(None, mapped, t).is_err());
        let mut limiter = AuthLimiter::default();
        for i in 0..20 {
            let ip: IpAddr = format!("2001:db8::{i:x}").parse().unwrap();
            limiter.record_failure("x", ip, t0);
        }
        let same64: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let other64: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(limiter.check(None, same64, t).is_err());
        assert_eq!(limiter.check(None, other64, t), Ok(()));
    }

    #[test]
    fn delays_grow_and_cap() {
        let mut limiter = AuthLimiter::default();
        let t0 = Instant::now();
        let delays: Vec<u64> = (0..8)
            .map(|_| limiter.record_failure("juliet", IP, t0).as_millis() as u64)
            .collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
        // After the window the count starts again.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(
            limiter.record_failure("juliet", IP, later),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn success_clears_account_but_not_address() {
        let mut limiter = AuthLimiter::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            limiter.record_failure("juliet", IP, t0);
        }
        assert!(limiter.check(Some("juliet"), IP2, t0).is_err());
        limiter.record_success("Juliet");
        assert_eq!(limiter.check(Some("juliet"), IP2, t0), Ok(()));
        // The address still remembers its 5 failures.
        assert_eq!(
            limiter.record_failure("juliet", IP, t0),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn disabled_limits() {
        let mut limiter = AuthLimiter::new(AuthLimitConfig {
            account_max_failures: 0,
            ip_max_failures: 0,
            ..AuthLimitConfig::default()
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            limiter.record_failure("juliet", IP, t0);
        }
        assert_eq!(limiter.check(Some("juliet"), IP, t0), Ok(()));
        assert_eq!(
            limiter.record_failure("juliet", IP, t0),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut limiter = AuthLimiter::new(AuthLimitConfig {
            max_tracked: 100,
            ..AuthLimitConfig::default()
        });
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            limiter.record_failure(&format!("user{i}"), IpAddr::V4(Ipv4Addr::from(i)), now);
            assert!(limiter.accounts.map.len() <= 100);
            assert!(limiter.ips.map.len() <= 100);
        }
        // The newest keys survived, the oldest were evicted.
        let now = t0 + Duration::from_millis(1000);
        assert!(limiter.accounts.map.contains_key("user999"));
        assert!(!limiter.accounts.map.contains_key("user0"));
        // Expired keys go first: fill up, then record a new key later.
        while limiter.accounts.map.len() < 100 {
            let n = limiter.accounts.map.len();
            limiter.record_failure(&format!("filler{n}"), IP, now);
        }
        let later = now + Duration::from_secs(120);
        limiter.record_failure("new", IP, later);
        assert_eq!(limiter.accounts.map.len(), 1);
        // Each key keeps a bounded history.
        for _ in 0..1000 {
            limiter.record_failure("new", IP, now);
        }
        assert!(limiter.accounts.map["new"].len() <= MIN_HISTORY);
        assert!(limiter.ips.map[&IP].len() <= 20);
    }

    #[test]
    fn check_forgets_expired_keys() {
        let mut limiter = AuthLimiter::default();
        let t0 = Instant::now();
        limiter.record_failure("juliet", IP, t0);
        assert_eq!(limiter.tracked_keys(), 2);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(limiter.check(Some("juliet"), IP, later), Ok(()));
        assert_eq!(limiter.tracked_keys(), 0);
    }
}

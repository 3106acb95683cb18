//! Authentication throttling for client connections, in the manner of
//! Prosody's `mod_limit_auth` and ejabberd's `mod_fail2ban`: failed SASL
//! attempts slow down and then block the *address* they come from (IPv4
//! address, IPv6 /64, see [`super::addr`]), never the account. A blocked
//! address is answered RFC 6120 §6.5.10 `temporary-auth-failure` ("the
//! authentication failed because of a temporary error condition within
//! the receiving entity, and it is advisable for the initiating entity to
//! try again later") without its password being looked at. Pure: no I/O,
//! the caller passes the current time.
//!
//! Why the address and not the account: a per-account lock lets anyone
//! lock anyone out (five wrong guesses from anywhere refused the owner's
//! right password from everywhere). Here the account's count only adds a
//! delay to the *failures* of addresses that have themselves failed before
//! in the window, so a correct password from a clean address is never
//! refused nor slowed, whatever others do to the account.
//!
//! The rules, per address (defaults in [`AuthLimitConfig::default`]):
//! - failures are counted over a sliding `window`; past `delay_after` of
//!   them, each further failure is answered after a delay that doubles from
//!   `base_delay` up to `max_delay` (one connection's guesses are slowed;
//!   the connections an address may hold are bounded by
//!   [`super::admission`]);
//! - at `block_after` failures the address is blocked for `block_for`,
//!   doubled on each repeat block ("strike") up to `max_block`; strikes are
//!   forgotten after `max_block` without a block;
//! - a success from an address forgives that address's failures *for that
//!   account* (the owner who mistyped), but not its failures for other
//!   accounts: otherwise an attacker could clear its count by logging in
//!   to an account of its own between guesses.
//!
//! The defaults, against the references: Prosody's `mod_limit_auth`
//! blocks an address after 5 failures in 30 s (`limit_auth_max`,
//! `limit_auth_period`); ejabberd's `mod_fail2ban` bans it after 20
//! failures (`c2s_max_auth_failures`) for an hour (`c2s_auth_ban_lifetime`).
//! Here 5 failures are free (someone fumbling a password is not slowed), the
//! block comes at 20 as in ejabberd, counted over 10 minutes rather than
//! 30 s so that a patient guesser (one try every few seconds) is caught
//! too; it lasts 15 minutes, doubling on each repeat up to a day, rather
//! than a flat hour: a shared address (a NAT) that tripped once is back
//! soon, a persistent guesser is out for a day. Delays stop at 2 s: a
//! delayed answer holds one of the few pre-auth slots an address has, and
//! the block, not the delay, is what ends a guessing run.
//!
//! Blocks are cluster-wide: [`AuthLimiter::record_failure`] returns the
//! [`Block`] it just imposed, the node broadcasts it to its peers over the
//! mesh (best effort, `MeshLinks::broadcast_auth_block`), and each peer
//! calls [`AuthLimiter::block_from_peer`]; a guesser gets one node's
//! allowance of failures, not one per node. Blocks, not failures, because
//! they are rare (one per `block_after` failures) and idempotent; and the
//! mesh, not raft, because this is soft state that needs no order nor
//! durability, and putting attacker-driven events into the replicated log
//! would let an attacker drive raft writes. Failures below the block are
//! still counted per node (a node that missed a block counts on its own).
//!
//! This is not part of SASL: [`crate::c2s::negotiate`] consults it around
//! the exchanges of [`crate::c2s::sasl`], which know nothing about it.
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::addr::{self, IpNet};

/// Limits of [`AuthLimiter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLimitConfig {
    /// Failures from one address within `window` answered without delay.
    pub delay_after: u32,
    /// Failures from one address within `window` that block it. 0: never.
    pub block_after: u32,
    /// Window over which failures are counted.
    pub window: Duration,
    /// Length of a first block; each repeat doubles it.
    pub block_for: Duration,
    /// Longest block; also how long strikes are remembered.
    pub max_block: Duration,
    /// Failures for one account (from any address) within `window` after
    /// which further failures from addresses that already failed are
    /// delayed too. 0: never.
    pub account_slow_after: u32,
    /// First delay; doubles with each further failure, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Most addresses, and most accounts, tracked at once (each); beyond it
    /// expired and then the least recently seen entries are evicted.
    pub max_tracked: usize,
    /// Addresses never delayed nor blocked.
    pub exempt: Vec<IpNet>,
}

impl Default for AuthLimitConfig {
    fn default() -> Self {
        AuthLimitConfig {
            delay_after: 5,
            block_after: 20,
            window: Duration::from_secs(600),
            block_for: Duration::from_secs(900),
            max_block: Duration::from_secs(86_400),
            account_slow_after: 5,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(2),
            max_tracked: 100_000,
            exempt: Vec::new(),
        }
    }
}

/// An address block just imposed: what a node would tell its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// The address key (IPv4 address or IPv6 /64).
    pub key: IpAddr,
    pub duration: Duration,
    /// How many blocks in a row this address has earned (1 = first).
    pub strike: u32,
}

/// What a failure costs: the delay before answering it, and the block it
/// caused, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub delay: Duration,
    pub blocked: Option<Block>,
}

#[derive(Debug, Default)]
struct AddressRecord {
    /// Recent failures: when, and a keyed hash of the account tried.
    failures: VecDeque<(Instant, u64)>,
    blocked_until: Option<Instant>,
    strikes: u32,
    /// When the last block ended (or will): strikes are forgotten
    /// `max_block` after it.
    last_block_end: Option<Instant>,
}

impl AddressRecord {
    fn prune(&mut self, now: Instant, c: &AuthLimitConfig) {
        while self
            .failures
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= c.window)
        {
            self.failures.pop_front();
        }
        if self.blocked_until.is_some_and(|u| u <= now) {
            self.blocked_until = None;
        }
        if self
            .last_block_end
            .is_some_and(|e| now.saturating_duration_since(e) >= c.max_block)
        {
            self.strikes = 0;
            self.last_block_end = None;
        }
    }

    /// Nothing left worth remembering.
    fn is_idle(&self) -> bool {
        self.failures.is_empty() && self.blocked_until.is_none() && self.strikes == 0
    }

    fn last_seen(&self) -> Option<Instant> {
        let f = self.failures.back().map(|(t, _)| *t);
        f.max(self.last_block_end)
    }
}

/// Counts failed authentications per address and per account. Pure: the
/// caller passes the current time.
///
/// Use: before an exchange call [`AuthLimiter::check`] and answer
/// `<failure><temporary-auth-failure/></failure>` if it refuses; on failure
/// call [`AuthLimiter::record_failure`] and wait the returned delay before
/// sending `<failure/>`; on success call [`AuthLimiter::record_success`].
///
/// Account names are compared lower-cased and kept only as keyed hashes.
/// Memory is bounded by `max_tracked` keys per table, each holding a
/// bounded history.
#[derive(Debug)]
pub struct AuthLimiter {
    config: AuthLimitConfig,
    addresses: HashMap<IpAddr, AddressRecord>,
    accounts: HashMap<u64, VecDeque<Instant>>,
    hasher: RandomState,
}

impl Default for AuthLimiter {
    fn default() -> Self {
        AuthLimiter::new(AuthLimitConfig::default())
    }
}

/// Enough remembered failures per key for the delays to reach any sensible
/// `max_delay` past the thresholds.
const EXTRA_HISTORY: usize = 8;

impl AuthLimiter {
    pub fn new(config: AuthLimitConfig) -> Self {
        AuthLimiter {
            config,
            addresses: HashMap::new(),
            accounts: HashMap::new(),
            hasher: RandomState::new(),
        }
    }

    pub fn config(&self) -> &AuthLimitConfig {
        &self.config
    }

    fn account_hash(&self, account: &str) -> u64 {
        self.hasher.hash_one(account.to_lowercase())
    }

    /// Whether an attempt from `ip` may proceed; `Err(retry_after)` while
    /// its address is blocked.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if addr::exempt(&self.config.exempt, ip) {
            return Ok(());
        }
        let key = addr::subscriber(ip);
        let Some(rec) = self.addresses.get_mut(&key) else {
            return Ok(());
        };
        rec.prune(now, &self.config);
        let until = rec.blocked_until;
        if rec.is_idle() {
            self.addresses.remove(&key);
        }
        match until {
            Some(u) => Err(u.saturating_duration_since(now)),
            None => Ok(()),
        }
    }

    /// Records a failed attempt for `account` (empty if unknown) from `ip`.
    pub fn record_failure(&mut self, account: &str, ip: IpAddr, now: Instant) -> Failure {
        let hash = self.account_hash(account);
        let by_account = if account.is_empty() {
            0
        } else {
            self.record_account(hash, now)
        };
        if addr::exempt(&self.config.exempt, ip) {
            return Failure {
                delay: Duration::ZERO,
                blocked: None,
            };
        }
        let key = addr::subscriber(ip);
        if !self.addresses.contains_key(&key) && self.addresses.len() >= self.config.max_tracked {
            self.evict_addresses(now);
        }
        let c = &self.config;
        let history = (c.block_after.max(c.delay_after) as usize).saturating_add(EXTRA_HISTORY);
        let rec = self.addresses.entry(key).or_default();
        rec.prune(now, c);
        let before = rec.failures.len();
        rec.failures.push_back((now, hash));
        while rec.failures.len() > history {
            rec.failures.pop_front();
        }
        let by_address = rec.failures.len();
        let mut blocked = None;
        if c.block_after > 0 && by_address >= c.block_after as usize && rec.blocked_until.is_none()
        {
            rec.strikes = rec.strikes.saturating_add(1);
            let doublings = 2u32.saturating_pow(rec.strikes - 1);
            let duration = c.block_for.saturating_mul(doublings).min(c.max_block);
            rec.blocked_until = Some(now + duration);
            rec.last_block_end = Some(now + duration);
            // The block used them up: after it, counting starts again (and
            // the next block is longer).
            rec.failures.clear();
            blocked = Some(Block {
                key,
                duration,
                strike: rec.strikes,
            });
        }
        let mut delay = backoff(c, by_address, c.delay_after);
        // The account is under attack: addresses that already failed in the
        // window are slowed on it even below their own threshold. A first
        // failure from an address is never delayed for the account's sake.
        if before > 0 && c.account_slow_after > 0 {
            delay = delay.max(backoff(c, by_account, c.account_slow_after));
        }
        Failure { delay, blocked }
    }

    fn record_account(&mut self, hash: u64, now: Instant) -> usize {
        let c = &self.config;
        if !self.accounts.contains_key(&hash) && self.accounts.len() >= c.max_tracked {
            let window = c.window;
            self.accounts.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < window)
            });
            evict_oldest(&mut self.accounts, c.max_tracked, |t| t.back().copied());
        }
        let history = (c.account_slow_after as usize).saturating_add(EXTRA_HISTORY);
        let window = c.window;
        let times = self.accounts.entry(hash).or_default();
        while times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            times.pop_front();
        }
        times.push_back(now);
        while times.len() > history {
            times.pop_front();
        }
        times.len()
    }

    fn evict_addresses(&mut self, now: Instant) {
        let c = &self.config;
        self.addresses.retain(|_, rec| {
            rec.prune(now, c);
            !rec.is_idle()
        });
        evict_oldest(&mut self.addresses, c.max_tracked, AddressRecord::last_seen);
    }

    /// Records a successful authentication of `account` from `ip`: the
    /// address's failures for that account are forgiven.
    pub fn record_success(&mut self, account: &str, ip: IpAddr, now: Instant) {
        let hash = self.account_hash(account);
        let key = addr::subscriber(ip);
        if let Some(rec) = self.addresses.get_mut(&key) {
            rec.failures.retain(|(_, h)| *h != hash);
            rec.prune(now, &self.config);
            if rec.is_idle() {
                self.addresses.remove(&key);
            }
        }
    }

    /// A block another node imposed (see the module doc): applied here as
    /// if earned here, unless a longer one is already in force.
    pub fn block_from_peer(&mut self, key: IpAddr, duration: Duration, now: Instant) {
        if addr::exempt(&self.config.exempt, key) {
            return;
        }
        let key = addr::subscriber(key);
        let duration = duration.min(self.config.max_block);
        if !self.addresses.contains_key(&key) && self.addresses.len() >= self.config.max_tracked {
            self.evict_addresses(now);
        }
        let rec = self.addresses.entry(key).or_default();
        let until = now + duration;
        if rec.blocked_until.is_none_or(|u| u < until) {
            rec.blocked_until = Some(until);
            rec.last_block_end = Some(until);
            rec.strikes = rec.strikes.max(1);
        }
    }

    /// Number of addresses and accounts currently tracked.
    pub fn tracked_keys(&self) -> usize {
        self.addresses.len() + self.accounts.len()
    }
}

/// `base_delay * 2^(n - free - 1)` for the failures past `free`, capped.
fn backoff(c: &AuthLimitConfig, n: usize, free: u32) -> Duration {
    let Some(past) = n.checked_sub(free as usize).filter(|p| *p > 0) else {
        return Duration::ZERO;
    };
    let exponent = u32::try_from(past - 1).unwrap_or(u32::MAX);
    c.base_delay
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(c.max_delay)
}

/// Drops the least recently seen tenth once `map` is at `max`, so that a
/// flood of new keys costs one scan per tenth of the table rather than one
/// per key.
fn evict_oldest<K: Hash + Eq + Clone, V>(
    map: &mut HashMap<K, V>,
    max: usize,
    last_seen: impl Fn(&V) -> Option<Instant>,
) {
    if map.len() < max {
        return;
    }
    let target = max.saturating_sub(max / 10 + 1);
    let excess = map.len().saturating_sub(target);
    if excess == 0 {
        return;
    }
    let mut by_age: Vec<(Option<Instant>, K)> =
        map.iter().map(|(k, v)| (last_seen(v), k.clone())).collect();
    if excess < by_age.len() {
        by_age.select_nth_unstable_by_key(excess - 1, |(last, _)| *last);
        by_age.truncate(excess);
    }
    for (_, key) in by_age {
        map.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const IP2: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
    const S: fn(u64) -> Duration = Duration::from_secs;

    fn ip_n(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    /// The lockout of the old per-account limit: many wrong guesses for
    /// juliet from many addresses never refuse her right password from a
    /// clean address, nor slow its answer.
    #[test]
    fn the_account_is_never_locked() {
        let mut l = AuthLimiter::default();
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            let ip = ip_n(i % 50);
            if l.check(ip, now).is_ok() {
                l.record_failure("juliet", ip, now);
            }
        }
        let now = t0 + S(2);
        assert_eq!(l.check(IP, now), Ok(()));
        // Her own first mistake is not delayed either.
        assert_eq!(l.record_failure("juliet", IP, now).delay, Duration::ZERO);
        l.record_success("juliet", IP, now);
        assert_eq!(l.check(IP, now), Ok(()));
    }

    #[test]
    fn an_address_is_slowed_then_blocked() {
        let mut l = AuthLimiter::default();
        let t0 = Instant::now();
        let mut delays = Vec::new();
        let mut block = None;
        for i in 0..20u32 {
            assert_eq!(l.check(IP, t0), Ok(()), "attempt {i}");
            // Different accounts: only the address's count applies.
            let f = l.record_failure(&format!("user{i}"), IP, t0);
            delays.push(f.delay.as_millis() as u64);
            block = f.blocked;
        }
        assert_eq!(
            delays,
            [
                0, 0, 0, 0, 0, 250, 500, 1000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000,
                2000, 2000, 2000, 2000
            ]
        );
        assert_eq!(
            block,
            Some(Block {
                key: IP,
                duration: S(900),
                strike: 1
            })
        );
        assert_eq!(l.check(IP, t0 + S(100)), Err(S(800)));
        // Other addresses, and the right password from them, are unaffected.
        assert_eq!(l.check(IP2, t0 + S(100)), Ok(()));
        // The block ends.
        assert_eq!(l.check(IP, t0 + S(900)), Ok(()));
    }

    #[test]
    fn repeat_blocks_escalate_up_to_the_cap_and_strikes_are_forgotten() {
        let mut l = AuthLimiter::default();
        let mut now = Instant::now();
        let mut lengths = Vec::new();
        for _ in 0..9 {
            let mut last = None;
            for _ in 0..20 {
                last = l.record_failure("juliet", IP, now).blocked;
            }
            let b = last.expect("blocked");
            lengths.push(b.duration.as_secs());
            now += b.duration;
            assert_eq!(l.check(IP, now), Ok(()));
        }
        assert_eq!(
            lengths,
            [900, 1800, 3600, 7200, 14_400, 28_800, 57_600, 86_400, 86_400]
        );
        // A day without a block: the next one is a first one again.
        now += S(86_400);
        let mut last = None;
        for _ in 0..20 {
            last = l.record_failure("juliet", IP, now).blocked;
        }
        assert_eq!(last.map(|b| (b.duration, b.strike)), Some((S(900), 1)));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_as_ipv4() {
        let mut l = AuthLimiter::default();
        let t0 = Instant::now();
        for i in 0..20 {
            let ip: IpAddr = format!("2001:db8::{i:x}").parse().unwrap();
            l.record_failure("x", ip, t0);
        }
        let same64: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let other64: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(l.check(same64, t0).is_err());
        assert_eq!(l.check(other64, t0), Ok(()));
        for _ in 0..20 {
            l.record_failure("x", IP, t0);
        }
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(l.check(mapped, t0).is_err());
    }

    #[test]
    fn success_forgives_only_that_accounts_failures() {
        let mut l = AuthLimiter::default();
        let t0 = Instant::now();
        // The owner mistyped 4 times, an attacker on the same address tried
        // 15 other accounts.
        for _ in 0..4 {
            l.record_failure("juliet", IP, t0);
        }
        for i in 0..15 {
            l.record_failure(&format!("victim{i}"), IP, t0);
        }
        l.record_success("Juliet", IP, t0);
        // 15 left: the sixth failure past 5 is delayed (2 s cap)...
        assert_eq!(l.record_failure("romeo", IP, t0).delay, S(2));
        // ...and the count reaches 20 after 4 more: logging in to an own
        // account between guesses does not reset the address.
        let mut blocked = None;
        for _ in 0..4 {
            blocked = l.record_failure("romeo", IP, t0).blocked;
        }
        assert!(blocked.is_some());
    }

    #[test]
    fn an_attacked_account_slows_addresses_that_failed_before() {
        let mut l = AuthLimiter::default();
        let t0 = Instant::now();
        // A botnet: one failure per address: never delayed for it.
        for i in 0..10 {
            assert_eq!(
                l.record_failure("juliet", ip_n(i), t0).delay,
                Duration::ZERO
            );
        }
        // An address's second failure on the attacked account is delayed
        // by the account's count (11 > 5: 250 ms * 2^5, capped at 2 s)...
        assert_eq!(l.record_failure("juliet", ip_n(0), t0).delay, S(2));
        // ...a clean address's first is not, nor is another account.
        assert_eq!(l.record_failure("juliet", IP, t0).delay, Duration::ZERO);
        assert_eq!(l.record_failure("romeo", IP2, t0).delay, Duration::ZERO);
        // After the window the account's count starts again.
        let later = t0 + S(601);
        l.record_failure("juliet", ip_n(1), later);
        assert_eq!(
            l.record_failure("juliet", ip_n(1), later).delay,
            Duration::ZERO
        );
    }

    #[test]
    fn exempt_and_disabled() {
        let mut l = AuthLimiter::new(AuthLimitConfig {
            exempt: vec!["192.0.2.0/31".parse().unwrap()],
            ..AuthLimitConfig::default()
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(l.record_failure("juliet", IP, t0).delay, Duration::ZERO);
        }
        assert_eq!(l.check(IP, t0), Ok(()));
        let mut l = AuthLimiter::new(AuthLimitConfig {
            block_after: 0,
            ..AuthLimitConfig::default()
        });
        for _ in 0..100 {
            assert_eq!(l.record_failure("juliet", IP, t0).blocked, None);
        }
        assert_eq!(l.check(IP, t0), Ok(()));
    }

    #[test]
    fn peer_blocks_apply_and_never_shorten() {
        let mut l = AuthLimiter::default();
        let t0 = Instant::now();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        l.block_from_peer(v6, S(900), t0);
        assert_eq!(
            l.check("2001:db8::2".parse().unwrap(), t0 + S(100)),
            Err(S(800))
        );
        l.block_from_peer(v6, S(60), t0 + S(100));
        assert_eq!(
            l.check("2001:db8::2".parse().unwrap(), t0 + S(100)),
            Err(S(800))
        );
        // A peer cannot ask for more than the cap.
        l.block_from_peer(IP, S(10 * 86_400), t0);
        assert_eq!(l.check(IP, t0), Err(S(86_400)));
    }

    #[test]
    fn memory_is_bounded() {
        let mut l = AuthLimiter::new(AuthLimitConfig {
            max_tracked: 100,
            ..AuthLimitConfig::default()
        });
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            l.record_failure(&format!("user{i}"), IpAddr::V4(Ipv4Addr::from(i)), now);
            assert!(l.accounts.len() <= 100);
            assert!(l.addresses.len() <= 100);
        }
        // The newest keys survived, the oldest were evicted.
        assert!(l.addresses.contains_key(&IpAddr::V4(Ipv4Addr::from(999))));
        assert!(!l.addresses.contains_key(&IpAddr::V4(Ipv4Addr::from(0))));
        // Expired keys go first: fill up, then record a new key later.
        let mut n = 5000u32;
        while l.addresses.len() < 100 || l.accounts.len() < 100 {
            n += 1;
            l.record_failure(&format!("filler{n}"), IpAddr::V4(Ipv4Addr::from(n)), t0);
        }
        let later = t0 + S(700);
        l.record_failure("new", IP, later);
        assert_eq!(l.addresses.len(), 1);
        assert_eq!(l.accounts.len(), 1);
        // Each key keeps a bounded history.
        for _ in 0..1000 {
            l.record_failure("new", IP2, later);
        }
        assert!(l.addresses.values().all(|r| r.failures.len() <= 28));
        assert!(l.accounts.values().all(|t| t.len() <= 13));
    }

    #[test]
    fn check_forgets_expired_keys() {
        let mut l = AuthLimiter::default();
        let t0 = Instant::now();
        l.record_failure("juliet", IP, t0);
        assert_eq!(l.tracked_keys(), 2);
        assert_eq!(l.check(IP, t0 + S(601)), Ok(()));
        assert_eq!(l.addresses.len(), 0);
    }
}

//! Connection admission: which accepted TCP connections a node serves.
//! Pure: no I/O, the caller passes the current time; the listener in
//! [`super::serve`] holds it behind a lock and closes refused sockets at
//! once, before TLS.
//!
//! Two pools, so that a flood of half-open streams cannot refuse real
//! users: every connection starts in the *pre-auth* pool
//! (`max_preauth`) and moves to the *session* pool (`max_sessions`) when
//! SASL succeeds. Filling the pre-auth pool does not touch the sessions'
//! capacity; and when the pre-auth pool is full a new connection is still
//! admitted and the *oldest* pre-auth connection is evicted instead: a
//! flood that holds every slot loses its oldest ones to newcomers, while a
//! real client needs its slot for the second or so its negotiation takes.
//!
//! Per remote address (and, for IPv6, per /64, see [`super::addr`]):
//! - concurrent pre-auth connections (`preauth_per_address`,
//!   `preauth_per_prefix`): one address cannot take more than a few slots
//!   of the pre-auth pool, and far fewer than it holds;
//! - concurrent connections of both kinds (`per_address`, `per_prefix`);
//! - accepts per second, as a token bucket keyed by the IPv4 address or
//!   the IPv6 /64 (`accept_rate`, `accept_burst`): a client that reopens
//!   what the negotiation timeout closed is slowed to that rate.
//!
//! Addresses in `exempt` skip the per-address limits (not the pools).
//!
//! The defaults (neither Prosody nor ejabberd caps connections per address
//! out of the box; these follow what a client needs): a client needs one
//! pre-auth connection for about a second, so 16 per address (64 per /64)
//! leave room for a NAT of users reconnecting together, and 10 accepts per
//! second with bursts of 20 for the same; 256 connections per address (1024
//! per /64) in all for a NAT of many users; the pre-auth pool is 1000, a
//! tenth of the sessions' 10,000, which at the default 30 s negotiation
//! timeout still admits 30 slow clients a second before any eviction.
//!
//! Refusals are summarized by [`RefusalLog`], so a flood of 10,000
//! refused connections makes one log line per interval, not 10,000.
//!
//! RFC 6120 says how to refuse (§4.9.3.17 `resource-constraint` when the
//! server lacks resources, §4.9.3.13 `policy-violation` when a local policy
//! is exceeded), not when; the limits here are local policy.
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::addr::{self, IpNet};

/// Limits of [`Admission`]. A per-address limit of 0 disables it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionConfig {
    /// Connections not yet authenticated, on this node.
    pub max_preauth: usize,
    /// Authenticated connections, on this node.
    pub max_sessions: usize,
    pub preauth_per_address: usize,
    pub preauth_per_prefix: usize,
    pub per_address: usize,
    pub per_prefix: usize,
    /// Accepts per second per address (IPv6: per /64); 0 disables.
    pub accept_rate: f64,
    pub accept_burst: u32,
    /// Most accept-rate buckets kept at once.
    pub max_tracked: usize,
    pub exempt: Vec<IpNet>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_preauth: 1000,
            max_sessions: 10_000,
            preauth_per_address: 16,
            preauth_per_prefix: 64,
            per_address: 256,
            per_prefix: 1024,
            accept_rate: 10.0,
            accept_burst: 20,
            max_tracked: 100_000,
            exempt: Vec::new(),
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    AcceptRate,
    PreauthPerAddress,
    PreauthPerPrefix,
    PerAddress,
    PerPrefix,
    /// At authentication: every session slot is taken.
    Sessions,
    /// At authentication: the connection was evicted meanwhile.
    Evicted,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::AcceptRate => "accept rate per address",
            Refusal::PreauthPerAddress => "unauthenticated connections per address",
            Refusal::PreauthPerPrefix => "unauthenticated connections per /64",
            Refusal::PerAddress => "connections per address",
            Refusal::PerPrefix => "connections per /64",
            Refusal::Sessions => "session pool full",
            Refusal::Evicted => "evicted",
        }
    }

    /// The RFC 6120 stream error condition to close with: a pool that is
    /// full is a lack of resources (§4.9.3.17); a per-address limit is
    /// local policy (§4.9.3.13).
    pub fn condition(self) -> crate::xmpp::StreamCondition {
        use crate::xmpp::StreamCondition;
        match self {
            Refusal::Sessions | Refusal::Evicted => StreamCondition::ResourceConstraint,
            _ => StreamCondition::PolicyViolation,
        }
    }
}

/// Which pool a slot is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Preauth,
    Session,
}

/// One admitted connection's place; given back to [`Admission::release`].
#[derive(Debug, PartialEq, Eq)]
pub struct Slot {
    pub id: u64,
    ip: IpAddr,
    stage: Stage,
}

impl Slot {
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The (normalized) address it was admitted for.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

/// A connection admitted, and the pre-auth connection evicted to make room
/// for it, if any: its slot id and address (its owner should close it).
#[derive(Debug, PartialEq, Eq)]
pub struct Admitted {
    pub slot: Slot,
    pub evict: Option<(u64, IpAddr)>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    preauth: usize,
    total: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The counts behind the limits. See the module doc.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    sessions: usize,
    /// Live pre-auth slots, oldest first (ids grow).
    preauth: BTreeMap<u64, IpAddr>,
    addresses: HashMap<IpAddr, Counts>,
    prefixes: HashMap<IpAddr, Counts>,
    buckets: HashMap<IpAddr, Bucket>,
    next_id: u64,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Self {
        Admission {
            config,
            sessions: 0,
            preauth: BTreeMap::new(),
            addresses: HashMap::new(),
            prefixes: HashMap::new(),
            buckets: HashMap::new(),
            next_id: 0,
        }
    }

    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    /// Connections open: (pre-auth, sessions).
    pub fn open(&self) -> (usize, usize) {
        (self.preauth.len(), self.sessions)
    }

    /// A connection accepted from `ip`: admitted into the pre-auth pool, or
    /// refused.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<Admitted, Refusal> {
        let ip = addr::normalize(ip);
        let prefix = addr::prefix64(ip).map(IpAddr::V6);
        if !addr::exempt(&self.config.exempt, ip) {
            let c = &self.config;
            let a = self.addresses.get(&ip).copied().unwrap_or_default();
            let p = prefix
                .and_then(|p| self.prefixes.get(&p).copied())
                .unwrap_or_default();
            over(a.preauth, c.preauth_per_address, Refusal::PreauthPerAddress)?;
            over(a.total, c.per_address, Refusal::PerAddress)?;
            if prefix.is_some() {
                over(p.preauth, c.preauth_per_prefix, Refusal::PreauthPerPrefix)?;
                over(p.total, c.per_prefix, Refusal::PerPrefix)?;
            }
            // Last, so that connections refused anyway spend no token.
            self.take_token(addr::subscriber(ip), now)?;
        }
        let evict = if self.preauth.len() >= self.config.max_preauth.max(1) {
            self.preauth
                .first_key_value()
                .map(|(id, ip)| (*id, *ip))
                .map(|(id, old)| {
                    self.preauth.remove(&id);
                    self.uncount(old, Stage::Preauth);
                    (id, old)
                })
        } else {
            None
        };
        self.next_id += 1;
        let id = self.next_id;
        self.preauth.insert(id, ip);
        for counts in self.counts_of(ip) {
            counts.preauth += 1;
            counts.total += 1;
        }
        Ok(Admitted {
            slot: Slot {
                id,
                ip,
                stage: Stage::Preauth,
            },
            evict,
        })
    }

    /// The connection authenticated: it moves to the session pool, unless
    /// that is full or the connection was evicted meanwhile.
    pub fn promote(&mut self, slot: &mut Slot) -> Result<(), Refusal> {
        if slot.stage == Stage::Session {
            return Ok(());
        }
        if !self.preauth.contains_key(&slot.id) {
            return Err(Refusal::Evicted);
        }
        if self.sessions >= self.config.max_sessions {
            return Err(Refusal::Sessions);
        }
        self.preauth.remove(&slot.id);
        self.sessions += 1;
        for counts in self.counts_of(slot.ip) {
            counts.preauth = counts.preauth.saturating_sub(1);
        }
        slot.stage = Stage::Session;
        Ok(())
    }

    /// The connection closed.
    pub fn release(&mut self, slot: Slot) {
        match slot.stage {
            Stage::Session => {
                self.sessions = self.sessions.saturating_sub(1);
                self.uncount(slot.ip, Stage::Session);
            }
            Stage::Preauth => {
                // An evicted slot was uncounted when it was evicted.
                if self.preauth.remove(&slot.id).is_some() {
                    self.uncount(slot.ip, Stage::Preauth);
                }
            }
        }
    }

    fn counts_of(&mut self, ip: IpAddr) -> impl Iterator<Item = &mut Counts> {
        let prefix = addr::prefix64(ip).map(IpAddr::V6);
        let a = self.addresses.entry(ip).or_default();
        let p = match prefix {
            Some(p) => Some(self.prefixes.entry(p).or_default()),
            None => None,
        };
        std::iter::once(a).chain(p)
    }

    fn uncount(&mut self, ip: IpAddr, stage: Stage) {
        let prefix = addr::prefix64(ip).map(IpAddr::V6);
        for (map, key) in [
            (&mut self.addresses, Some(ip)),
            (&mut self.prefixes, prefix),
        ] {
            let Some(key) = key else { continue };
            if let Some(c) = map.get_mut(&key) {
                if stage == Stage::Preauth {
                    c.preauth = c.preauth.saturating_sub(1);
                }
                c.total = c.total.saturating_sub(1);
                if c.total == 0 {
                    map.remove(&key);
                }
            }
        }
    }

    fn take_token(&mut self, key: IpAddr, now: Instant) -> Result<(), Refusal> {
        let rate = self.config.accept_rate;
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = f64::from(self.config.accept_burst.max(1));
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.config.max_tracked {
            self.evict_buckets(now);
        }
        let b = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Refusal::AcceptRate)
        }
    }

    /// Full buckets are the same as absent ones: dropped first. If that is
    /// not enough, the least recently used half goes (its owners get a
    /// fresh burst: only someone with more than `max_tracked` addresses
    /// gains from it).
    fn evict_buckets(&mut self, now: Instant) {
        let rate = self.config.accept_rate;
        let burst = f64::from(self.config.accept_burst.max(1));
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
        if self.buckets.len() < self.config.max_tracked {
            return;
        }
        let mut ages: Vec<(Instant, IpAddr)> =
            self.buckets.iter().map(|(k, b)| (b.at, *k)).collect();
        let half = ages.len() / 2;
        if half > 0 {
            ages.select_nth_unstable_by_key(half - 1, |(at, _)| *at);
            for (_, k) in &ages[..half] {
                self.buckets.remove(k);
            }
        }
    }
}

fn over(count: usize, limit: usize, refusal: Refusal) -> Result<(), Refusal> {
    if limit > 0 && count >= limit {
        Err(refusal)
    } else {
        Ok(())
    }
}

/// Refusals summarized: at most one line per `interval`, with the counts
/// per reason since the last one and the address refused most recently.
#[derive(Debug)]
pub struct RefusalLog {
    interval: Duration,
    last: Option<Instant>,
    counts: BTreeMap<Refusal, u64>,
    latest: Option<IpAddr>,
}

impl RefusalLog {
    pub fn new(interval: Duration) -> Self {
        RefusalLog {
            interval,
            last: None,
            counts: BTreeMap::new(),
            latest: None,
        }
    }

    /// Notes a refusal; returns the line to log, when one is due.
    pub fn note(&mut self, why: Refusal, ip: IpAddr, now: Instant) -> Option<String> {
        *self.counts.entry(why).or_default() += 1;
        self.latest = Some(ip);
        if self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) < self.interval)
        {
            return None;
        }
        self.last = Some(now);
        let total: u64 = self.counts.values().sum();
        let reasons = self
            .counts
            .iter()
            .map(|(r, n)| format!("{n} {}", r.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        self.counts.clear();
        let latest = self
            .latest
            .take()
            .map(|i| i.to_string())
            .unwrap_or_default();
        Some(format!(
            "refused {total} client connection(s) ({reasons}); latest from {latest}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
    const USER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));

    fn ip_n(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    /// The flood of the issue: one address opening idle connections as
    /// fast as it can; the real user from another address gets in and
    /// authenticates.
    #[test]
    fn one_address_cannot_take_every_slot() {
        let mut a = Admission::new(AdmissionConfig::default());
        let t0 = Instant::now();
        let mut held = Vec::new();
        let mut refused = BTreeMap::new();
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_millis(i);
            match a.admit(ATTACKER, now) {
                Ok(ad) => {
                    assert_eq!(ad.evict, None);
                    held.push(ad.slot);
                }
                Err(r) => *refused.entry(r).or_insert(0) += 1,
            }
        }
        assert_eq!(held.len(), 16);
        assert_eq!(refused.values().sum::<u64>(), 10_000 - 16);
        let mut user = a.admit(USER, t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(user.evict, None);
        a.promote(&mut user.slot).unwrap();
        assert_eq!(a.open(), (16, 1));
        a.release(user.slot);
        for s in held {
            a.release(s);
        }
        assert_eq!(a.open(), (0, 0));
        assert!(a.addresses.is_empty() && a.prefixes.is_empty());
    }

    #[test]
    fn accept_rate_is_a_token_bucket() {
        let mut a = Admission::new(AdmissionConfig {
            preauth_per_address: 0,
            per_address: 0,
            ..AdmissionConfig::default()
        });
        let t0 = Instant::now();
        let ok = (0..30).filter(|_| a.admit(ATTACKER, t0).is_ok()).count();
        assert_eq!(ok, 20, "the burst");
        assert_eq!(a.admit(ATTACKER, t0), Err(Refusal::AcceptRate));
        // 10 per second after it.
        let t1 = t0 + Duration::from_millis(500);
        let ok = (0..30).filter(|_| a.admit(ATTACKER, t1).is_ok()).count();
        assert_eq!(ok, 5);
        // Another address has its own bucket.
        assert!(a.admit(USER, t1).is_ok());
    }

    #[test]
    fn ipv6_limits_per_address_and_per_64() {
        let mut a = Admission::new(AdmissionConfig {
            accept_rate: 0.0,
            ..AdmissionConfig::default()
        });
        let t0 = Instant::now();
        let v6 = |i: u32| -> IpAddr { format!("2001:db8::{i:x}").parse().unwrap() };
        // 16 per address...
        let ok = (0..20).filter(|_| a.admit(v6(1), t0).is_ok()).count();
        assert_eq!(ok, 16);
        assert_eq!(a.admit(v6(1), t0), Err(Refusal::PreauthPerAddress));
        // ...64 per /64, whatever the host bits.
        let ok = (2..100).filter(|i| a.admit(v6(*i), t0).is_ok()).count();
        assert_eq!(ok, 64 - 16);
        assert_eq!(a.admit(v6(500), t0), Err(Refusal::PreauthPerPrefix));
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(a.admit(other, t0).is_ok());
    }

    #[test]
    fn sessions_count_toward_the_total_per_address() {
        let mut a = Admission::new(AdmissionConfig {
            accept_rate: 0.0,
            per_address: 20,
            ..AdmissionConfig::default()
        });
        let t0 = Instant::now();
        for _ in 0..20 {
            let mut s = a.admit(USER, t0).unwrap().slot;
            a.promote(&mut s).unwrap();
        }
        assert_eq!(a.admit(USER, t0), Err(Refusal::PerAddress));
        assert!(a.admit(ATTACKER, t0).is_ok());
    }

    /// Many addresses fill the pre-auth pool: newcomers still get in, the
    /// oldest pre-auth connections make room; sessions are untouched.
    #[test]
    fn a_full_preauth_pool_evicts_its_oldest() {
        let mut a = Admission::new(AdmissionConfig {
            max_preauth: 100,
            max_sessions: 10,
            ..AdmissionConfig::default()
        });
        let t0 = Instant::now();
        let mut session = a.admit(USER, t0).unwrap().slot;
        a.promote(&mut session).unwrap();
        let mut flood = Vec::new();
        for i in 0..=100 {
            flood.push(a.admit(ip_n(i), t0).unwrap());
        }
        assert_eq!(flood[99].evict, None);
        assert_eq!(flood[100].evict, Some((flood[0].slot.id, ip_n(0))));
        assert_eq!(a.open(), (100, 1));
        let mut newcomer = a.admit(USER, t0).unwrap();
        assert_eq!(newcomer.evict, Some((flood[1].slot.id, ip_n(1))));
        a.promote(&mut newcomer.slot).unwrap();
        assert_eq!(a.open(), (99, 2));
        // The evicted connection can no longer authenticate, and its
        // release does not count twice.
        let mut evicted = flood.remove(0).slot;
        assert_eq!(a.promote(&mut evicted), Err(Refusal::Evicted));
        a.release(evicted);
        assert_eq!(a.open(), (99, 2));
        for ad in flood {
            a.release(ad.slot);
        }
        assert_eq!(a.open(), (0, 2));
    }

    #[test]
    fn a_full_session_pool_refuses_at_authentication() {
        let mut a = Admission::new(AdmissionConfig {
            max_sessions: 1,
            ..AdmissionConfig::default()
        });
        let t0 = Instant::now();
        let mut first = a.admit(USER, t0).unwrap().slot;
        a.promote(&mut first).unwrap();
        let mut second = a.admit(USER, t0).unwrap().slot;
        assert_eq!(a.promote(&mut second), Err(Refusal::Sessions));
        a.release(first);
        a.promote(&mut second).unwrap();
        assert_eq!(a.open(), (0, 1));
    }

    #[test]
    fn exempt_addresses_skip_per_address_limits() {
        let mut a = Admission::new(AdmissionConfig {
            exempt: vec!["192.0.2.3".parse().unwrap()],
            ..AdmissionConfig::default()
        });
        let t0 = Instant::now();
        let ok = (0..500).filter(|_| a.admit(USER, t0).is_ok()).count();
        assert_eq!(ok, 500);
    }

    #[test]
    fn buckets_are_bounded() {
        let mut a = Admission::new(AdmissionConfig {
            max_tracked: 100,
            ..AdmissionConfig::default()
        });
        let t0 = Instant::now();
        for i in 0..1000 {
            let ad = a.admit(ip_n(i), t0).unwrap();
            a.release(ad.slot);
            assert!(a.buckets.len() <= 100);
        }
    }

    #[test]
    fn refusals_are_summarized() {
        let mut log = RefusalLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let lines: Vec<String> = (0..10_000u64)
            .filter_map(|i| {
                log.note(
                    Refusal::PreauthPerAddress,
                    ATTACKER,
                    t0 + Duration::from_millis(i * 2),
                )
            })
            .collect();
        // 20 s of refusals: the first, then one per 10 s.
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[1].starts_with("refused 5000 client connection(s) (5000 unauthenticated"),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with("latest from 192.0.2.2"));
    }
}

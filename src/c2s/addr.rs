//! What a remote address is, for the limits of [`super::auth_limit`] and
//! [`super::admission`]: IPv4-mapped IPv6 addresses count as the IPv4
//! address they carry; an IPv6 address also belongs to its /64, the
//! block one subscriber (one home, one phone, one VM) usually gets
//! (RFC 6177 §3, RFC 7934 §6), so "one attacker" is one /64 there; and
//! address ranges written `addr/len` (exemptions). Pure, no I/O.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// `ip` with IPv4-mapped IPv6 (`::ffff:a.b.c.d`) made IPv4.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// The key one subscriber is counted under: the IPv4 address itself, or
/// the IPv6 /64 (its host bits zeroed).
pub fn subscriber(ip: IpAddr) -> IpAddr {
    match normalize(ip) {
        IpAddr::V6(v6) => IpAddr::V6(mask_v6(v6, 64)),
        v4 => v4,
    }
}

/// The IPv6 /64 of `ip`; `None` for IPv4 (whose unit is the address).
pub fn prefix64(ip: IpAddr) -> Option<Ipv6Addr> {
    match normalize(ip) {
        IpAddr::V6(v6) => Some(mask_v6(v6, 64)),
        IpAddr::V4(_) => None,
    }
}

fn mask_v6(v6: Ipv6Addr, len: u8) -> Ipv6Addr {
    let bits = u128::from(v6);
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    };
    Ipv6Addr::from(bits & mask)
}

fn mask_v4(v4: Ipv4Addr, len: u8) -> Ipv4Addr {
    let bits = u32::from(v4);
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    Ipv4Addr::from(bits & mask)
}

/// An address range, `192.0.2.0/24` or `2001:db8::/32`; a bare address is
/// the range of that one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    len: u8,
}

/// Why an address range did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address or an address/prefix-length range")]
pub struct IpNetError(pub String);

impl IpNet {
    /// Whether `ip` (normalized) is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, normalize(ip)) {
            (IpAddr::V4(net), IpAddr::V4(a)) => mask_v4(a, self.len) == net,
            (IpAddr::V6(net), IpAddr::V6(a)) => mask_v6(a, self.len) == net,
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IpNetError(s.to_string());
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr = normalize(addr.trim().parse::<IpAddr>().map_err(|_| bad())?);
        match addr {
            IpAddr::V4(v4) => {
                let len = len.unwrap_or(32);
                if len > 32 {
                    return Err(bad());
                }
                Ok(IpNet {
                    addr: IpAddr::V4(mask_v4(v4, len)),
                    len,
                })
            }
            IpAddr::V6(v6) => {
                let len = len.unwrap_or(128);
                if len > 128 {
                    return Err(bad());
                }
                Ok(IpNet {
                    addr: IpAddr::V6(mask_v6(v6, len)),
                    len,
                })
            }
        }
    }
}

/// Whether `ip` is in any of `nets`.
pub fn exempt(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keys() {
        assert_eq!(normalize(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(subscriber(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(subscriber(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(subscriber(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(prefix64(ip("192.0.2.1")), None);
        assert_eq!(
            prefix64(ip("2001:db8::1")),
            Some("2001:db8::".parse().unwrap())
        );
    }

    #[test]
    fn ranges() {
        let lo: IpNet = "127.0.0.1".parse().unwrap();
        assert!(lo.contains(ip("127.0.0.1")));
        assert!(lo.contains(ip("::ffff:127.0.0.1")));
        assert!(!lo.contains(ip("127.0.0.2")));
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")) && !net.contains(ip("10.2.0.1")));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.1.0.1")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        for bad in ["", "10.0.0.0/33", "::/129", "host/8", "10.0.0.0/x"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        assert!(exempt(&[lo, net], ip("10.1.0.1")));
        assert!(!exempt(&[], ip("10.1.0.1")));
    }
}

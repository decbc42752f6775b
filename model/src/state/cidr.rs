//! CIDR blocks (`10.1.0.0/16`, `fd00::/8`, or a bare address) for policy
//! source matches.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address block. A bare address is a /32 (or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("not an IP address")]
    Address,
    #[error("prefix length is not a number from 0 to {max}")]
    PrefixLen { max: u8 },
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        let max = max_len(addr);
        if prefix_len > max {
            return Err(CidrError::PrefixLen { max });
        }
        Ok(Cidr { addr, prefix_len })
    }

    /// The network address, as given.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// True when `ip` is in the block. IPv4 never matches an IPv6 block, nor
    /// the reverse, except that IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u32::from(net).into(),
                u32::from(ip).into(),
                self.prefix_len,
                32,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.prefix_len, 128)
            }
            _ => false,
        }
    }
}

fn max_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn prefix_eq(a: u128, b: u128, prefix_len: u8, width: u8) -> bool {
    if prefix_len == 0 {
        return true;
    }
    let shift = u32::from(width - prefix_len);
    (a >> shift) == (b >> shift)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::Address)?;
        let max = max_len(addr);
        let prefix_len = match len {
            None => max,
            Some(l) => l.parse::<u8>().map_err(|_| CidrError::PrefixLen { max })?,
        };
        Cidr::new(addr, prefix_len)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contains() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.1.0.0/16", "10.1.2.3", true),
            ("10.1.0.0/16", "10.2.0.1", false),
            ("10.1.1.5", "10.1.1.5", true),
            ("10.1.1.5", "10.1.1.6", false),
            ("0.0.0.0/0", "192.168.1.1", true),
            ("0.0.0.0/0", "fd00::1", false),
            ("10.0.0.0/8", "::ffff:10.9.9.9", true),
            ("fd00::/8", "fd12::1", true),
            ("fd00::/8", "fe80::1", false),
            ("::/0", "::1", true),
            ("10.1.1.0/24", "10.1.1.255", true),
        ];
        for (cidr, ip, want) in cases {
            let c: Cidr = cidr.parse().unwrap();
            assert_eq!(c.contains(ip.parse().unwrap()), *want, "{cidr} {ip}");
        }
    }

    #[test]
    fn rejects_malformed() {
        let cases: &[(&str, CidrError)] = &[
            ("10.1.0.0/33", CidrError::PrefixLen { max: 32 }),
            ("10.1.0.0/x", CidrError::PrefixLen { max: 32 }),
            ("fd00::/129", CidrError::PrefixLen { max: 128 }),
            ("10.1.0/8", CidrError::Address),
            ("", CidrError::Address),
            ("/8", CidrError::Address),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Cidr>().unwrap_err(), *want, "{input}");
        }
    }

    #[test]
    fn displays_canonically() {
        assert_eq!(
            "10.1.1.5".parse::<Cidr>().unwrap().to_string(),
            "10.1.1.5/32"
        );
    }
}

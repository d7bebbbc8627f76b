//! Addresses in the config: CIDR ranges (`[server] trusted_proxies`) and the
//! Redis URL of `[limits] shared`. Pure parsing, errors worded for the file.

use std::fmt;
use std::net::IpAddr;

/// An address range: `10.0.0.0/8`, `::1/128`, or a bare address (one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let bad = |why: &str| {
            format!(
                "{s:?} is not an address range ({why}): write 10.0.0.0/8, 192.168.1.7 or fd00::/8"
            )
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad("the prefix length is out of range"))?,
        };
        let net = IpNet { addr, prefix };
        if net.masked(addr) != addr {
            return Err(bad("host bits are set after the prefix"));
        }
        Ok(net)
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::from((u32::from(v4) & mask).to_be_bytes())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::from((u128::from(v6) & mask).to_be_bytes())
            }
        }
    }

    /// True when `ip` is in the range. An IPv4-mapped IPv6 address
    /// (`::ffff:10.0.0.1`, what a dual-stack socket reports) counts as its
    /// IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == self.addr
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Where the shared rate-limit counters live: `redis://[user:password@]host[:port][/db]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for RedisTarget {
    /// Never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for RedisTarget {
    /// The address, for logs: never the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "redis://[{}]:{}/{}", self.host, self.port, self.db)
        } else {
            write!(f, "redis://{}:{}/{}", self.host, self.port, self.db)
        }
    }
}

impl RedisTarget {
    /// Parses a Redis URL. Messages never repeat the URL: it may hold a
    /// password.
    pub fn parse(s: &str) -> Result<RedisTarget, String> {
        if s.starts_with("rediss://") {
            return Err("rediss:// (TLS) is not supported yet: use redis:// on a private network, or a TLS tunnel such as stunnel on loopback".into());
        }
        if !s.starts_with("redis://") {
            return Err("must be a redis://host:port URL".into());
        }
        let url = url::Url::parse(s).map_err(|e| match e {
            url::ParseError::EmptyHost => "the Redis URL names no host".to_string(),
            e => format!("not a valid Redis URL ({e})"),
        })?;
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            _ => return Err("the Redis URL names no host".into()),
        };
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            n => n
                .parse()
                .map_err(|_| "the Redis URL's path must be a database number, such as /0")?,
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err("the Redis URL takes no query or fragment".into());
        }
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| {
                "the Redis URL's credentials are not valid UTF-8 once decoded".to_string()
            })
        };
        let username = match url.username() {
            "" => None,
            u => Some(decode(u)?),
        };
        let password = url.password().map(decode).transpose()?;
        Ok(RedisTarget {
            host,
            port: url.port().unwrap_or(6379),
            db,
            username,
            password,
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn ranges_contain_what_they_should() {
        let net = |s: &str| IpNet::parse(s).unwrap_or_else(|e| panic!("{e}"));
        assert!(net("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(net("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!net("0.0.0.0/0").contains(ip("::1")));
        assert!(net("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!net("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(net("fd00::/8").contains(ip("fd12::1")));
        assert!(!net("fd00::/8").contains(ip("fe80::1")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        for (bad, why) in [
            ("10.0.0.1/8", "host bits"),
            ("10.0.0.0/33", "out of range"),
            ("10.0.0.0/", "out of range"),
            ("10.0.0.0/-1", "out of range"),
            ("fd00::/129", "out of range"),
            ("example.com/8", "not an IP"),
            ("", "not an IP"),
        ] {
            let e = IpNet::parse(bad).err().unwrap_or_default();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn redis_urls_parse_and_never_show_a_password() {
        let t = RedisTarget::parse("redis://app:p%40ss@cache.internal:6380/2")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.host.as_str(), t.port, t.db), ("cache.internal", 6380, 2));
        assert_eq!(t.username.as_deref(), Some("app"));
        assert_eq!(t.password.as_deref(), Some("p@ss"));
        assert!(!format!("{t:?} {t}").contains("p@ss"));
        let t = RedisTarget::parse("redis://:secret@127.0.0.1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.port, t.db, t.username), (6379, 0, None));
        let t = RedisTarget::parse("redis://[::1]:7000").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.to_string(), "redis://[::1]:7000/0");
        for (bad, why) in [
            ("rediss://h:6379", "TLS"),
            ("http://h:6379", "redis://"),
            ("redis://:pw@/0", "no host"),
            ("redis://h/x", "database number"),
            ("redis://h/0?x=1", "no query"),
        ] {
            let e = RedisTarget::parse(bad).err().unwrap_or_default();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("pw"), "{e}");
        }
    }
}

//! Which address a request comes from, for per-client rate limits: the
//! connection's peer, or, behind trusted proxies, the right-most address of
//! `X-Forwarded-For` that is not one of them (everything to its left was
//! written by the client and can be forged). Pure.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::IpNet;

pub const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The client address of a request that arrived from `peer`. With no
/// trusted proxies, or a peer that is not one, that is the peer. Otherwise
/// the `X-Forwarded-For` hops are walked right to left past trusted
/// addresses; an entry that is not an address stops the walk at the hop
/// that wrote it.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = canonical(peer);
    if !is_trusted(client) {
        return client;
    }
    // Several header lines are one list, in order (RFC 9110 5.3).
    for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = line.to_str() else {
            return client;
        };
        for entry in text.rsplit(',') {
            let Some(ip) = parse_hop(entry.trim()) else {
                return client;
            };
            client = ip;
            if !is_trusted(ip) {
                return client;
            }
        }
    }
    client
}

/// One hop: an address, as proxies write it (`1.2.3.4`, `2001:db8::1`,
/// `[2001:db8::1]`, or with a port).
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    let inner = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'))?;
    inner.parse().ok().map(canonical)
}

/// One client, one key: `::ffff:1.2.3.4` from a dual-stack socket is `1.2.3.4`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|s| IpNet::parse(s).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(X_FORWARDED_FOR, l.parse().unwrap_or_else(|e| panic!("{e}")));
        }
        h
    }

    #[test]
    fn the_header_counts_only_behind_trusted_proxies() {
        let lb = ip("10.0.0.5");
        let h = xff(&["203.0.113.9"]);
        // No trusted proxies: the peer, whatever the header says.
        assert_eq!(client_ip(lb, &h, &[]), lb);
        // A peer that is not trusted cannot name another client.
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(client_ip(lb, &h, &trusted), ip("203.0.113.9"));
        // No header: the proxy itself.
        assert_eq!(client_ip(lb, &HeaderMap::new(), &trusted), lb);
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
        let lb = ip("10.0.0.5");
        // The client forged the first entry; the proxies appended the rest.
        let h = xff(&["6.6.6.6, 203.0.113.9, 10.1.1.1"]);
        assert_eq!(client_ip(lb, &h, &trusted), ip("203.0.113.9"));
        // Split over several lines, in order.
        let h = xff(&["6.6.6.6", "203.0.113.9", "10.1.1.1"]);
        assert_eq!(client_ip(lb, &h, &trusted), ip("203.0.113.9"));
        // Every hop trusted: the left-most.
        let h = xff(&["10.9.9.9, 10.1.1.1"]);
        assert_eq!(client_ip(lb, &h, &trusted), ip("10.9.9.9"));
        // Garbage stops at the hop that wrote it.
        let h = xff(&["203.0.113.9, junk, 10.1.1.1"]);
        assert_eq!(client_ip(lb, &h, &trusted), ip("10.1.1.1"));
        // Ports, brackets, mapped addresses.
        let h = xff(&["[2001:db8::7]:443"]);
        assert_eq!(client_ip(lb, &h, &trusted), ip("2001:db8::7"));
        let h = xff(&["203.0.113.9:5000"]);
        assert_eq!(client_ip(lb, &h, &trusted), ip("203.0.113.9"));
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.5"), &xff(&["::ffff:1.2.3.4"]), &trusted),
            ip("1.2.3.4")
        );
    }

    proptest! {
        /// Whatever the header holds, the answer is the peer or an address
        /// written in it, and never panics.
        #[test]
        fn any_header_gives_the_peer_or_one_of_its_hops(text in "[0-9a-f:., \\[\\]]{0,80}") {
            let trusted = nets(&["10.0.0.0/8"]);
            let lb = ip("10.0.0.5");
            let mut h = HeaderMap::new();
            if let Ok(v) = text.parse() {
                h.insert(X_FORWARDED_FOR, v);
            }
            let got = client_ip(lb, &h, &trusted);
            let hops: Vec<IpAddr> = text.split(',').filter_map(|e| parse_hop(e.trim())).collect();
            prop_assert!(got == lb || hops.contains(&got));
        }
    }
}

//! The allow-list of destination networks and ports; everything else is denied. A rule's name is
//! the bounded `upstream` label its destinations carry in metrics.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::AllowRule;
use crate::config::parse_ports;
use crate::config::validate::parse_cidr;

#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    network: IpAddr,
    prefix: u8,
    ports: Vec<(u16, u16)>,
}

#[derive(Debug)]
pub struct AllowList {
    rules: Vec<Rule>,
}

impl AllowList {
    /// Builds the list from validated config.
    pub fn new(rules: &[AllowRule]) -> AllowList {
        AllowList {
            rules: rules
                .iter()
                .filter_map(|r| {
                    let (network, prefix) = parse_cidr(&r.cidr).ok()?;
                    Some(Rule {
                        name: Arc::from(r.name.as_str()),
                        network,
                        prefix,
                        ports: parse_ports(&r.ports).ok()?,
                    })
                })
                .collect(),
        }
    }

    /// The name of the first rule that allows `dst`.
    pub fn allows(&self, dst: SocketAddr) -> Option<Arc<str>> {
        self.rules
            .iter()
            .find(|r| {
                in_network(dst.ip(), r.network, r.prefix)
                    && r.ports
                        .iter()
                        .any(|&(lo, hi)| (lo..=hi).contains(&dst.port()))
            })
            .map(|r| r.name.clone())
    }
}

fn in_network(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    match (ip.to_canonical(), network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> AllowList {
        AllowList::new(&[
            AllowRule {
                name: "legacy".into(),
                cidr: "10.0.0.0/8".into(),
                ports: "80,8000-8099".into(),
            },
            AllowRule {
                name: "v6".into(),
                cidr: "fd00::/16".into(),
                ports: "443".into(),
            },
        ])
    }

    #[test]
    fn allows_listed_network_and_port() {
        assert_eq!(
            list().allows("10.1.2.3:8050".parse().unwrap()).as_deref(),
            Some("legacy")
        );
        assert_eq!(
            list().allows("[fd00::1]:443".parse().unwrap()).as_deref(),
            Some("v6")
        );
    }

    #[test]
    fn denies_other_ports_and_networks() {
        assert_eq!(list().allows("10.1.2.3:22".parse().unwrap()), None);
        assert_eq!(list().allows("11.0.0.1:80".parse().unwrap()), None);
        assert_eq!(list().allows("[fd01::1]:443".parse().unwrap()), None);
    }

    #[test]
    fn zero_prefix_matches_everything_of_its_family() {
        let l = AllowList::new(&[AllowRule {
            name: "all".into(),
            cidr: "0.0.0.0/0".into(),
            ports: "1-65535".into(),
        }]);
        assert!(l.allows("192.0.2.1:9".parse().unwrap()).is_some());
        assert!(l.allows("[::1]:9".parse().unwrap()).is_none());
    }
}

//! Source NAT: the ports a NAT gateway or a masquerading node picks for the
//! connections it translates, per NAT address and destination, from
//! conntrack; and the conntrack table's fill and failure counters.
//!
//! The kernel gives a translated connection a source port that no other
//! entry uses with the same NAT address, destination and protocol (the
//! reply tuple must be unique: `nf_nat_used_tuple`). So each (protocol, NAT
//! address, destination) has the NAT port range to itself, and runs out
//! when its entries hold every port of it: the next new connection's first
//! packet is dropped. The figures are computed here, fed entry by entry;
//! `metrics::nat` writes them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::model::{
    ConntrackCounters, NatEntry, PerProtocol, PortList, PortRange, PortSet, Protocol,
};

/// The ports MASQUERADE and SNAT pick from without `--to-ports`, for
/// original source ports of 1024 and up (`nf_nat_l4proto_unique_tuple`).
pub const DEFAULT_PORTS: PortRange = PortRange {
    start: 1024,
    end: 65535,
};

/// Where translated connections go, as the kernel tells their NAT ports
/// apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NatDestination {
    /// The protocol.
    pub protocol: Protocol,
    /// The address the connections leave from once translated.
    pub nat_address: IpAddr,
    /// Where they go.
    pub remote: SocketAddr,
}

/// How many NAT ports one destination's connections hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatUsage {
    /// The NAT address and destination.
    pub destination: NatDestination,
    /// Distinct NAT ports inside the NAT port range its entries hold.
    pub ports_used: u32,
}

/// The NAT figures of one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct NatFigures {
    /// Ports a NAT rule can pick from: `--collector.nat.port-range`.
    pub capacity: u32,
    /// The destinations whose entries hold the most ports, at most the
    /// destinations top, most first.
    pub destinations: Vec<NatUsage>,
    /// Distinct (NAT address, destination) pairs.
    pub destination_count: PerProtocol<u64>,
    /// The most ports any one of them holds.
    pub busiest: PerProtocol<u32>,
    /// The table's fill and failure counters, where readable.
    pub counters: Option<ConntrackCounters>,
}

impl NatFigures {
    /// Distinct (NAT address, destination) pairs of TCP or UDP.
    pub fn pairs(&self, protocol: Protocol) -> u64 {
        self.destination_count[protocol]
    }

    /// The busiest destination's ports used over the capacity, for TCP or
    /// UDP: 1 when its next new connection is dropped. 1 when the capacity
    /// is 0.
    pub fn max_used_ratio(&self, protocol: Protocol) -> f64 {
        let busiest = self.busiest[protocol];
        if self.capacity == 0 {
            1.0
        } else {
            f64::from(busiest) / f64::from(self.capacity)
        }
    }
}

/// Source-NAT'd entries taken one at a time: a compact list of ports per
/// destination, nothing per entry.
#[derive(Debug, Clone)]
pub struct NatTable {
    ports: PortRange,
    /// The ports of `ports`, as a set to count lists within.
    port_set: PortSet,
    destinations: HashMap<NatDestination, PortList>,
}

impl NatTable {
    /// An empty table whose NAT rules pick ports from `ports`.
    pub fn new(ports: PortRange) -> NatTable {
        let mut port_set = PortSet::new();
        port_set.insert_range(ports.start, ports.end);
        NatTable {
            ports,
            port_set,
            destinations: HashMap::new(),
        }
    }

    /// Takes one entry.
    pub fn add(&mut self, entry: &NatEntry) {
        let destination = NatDestination {
            protocol: entry.protocol,
            nat_address: entry.nat.ip(),
            remote: entry.remote,
        };
        self.destinations
            .entry(destination)
            .or_default()
            .insert(entry.nat.port());
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.destinations.clear();
    }

    /// The figures, listing at most `top` destinations.
    pub fn finish(self, top: usize, counters: Option<ConntrackCounters>) -> NatFigures {
        let mut destination_count = PerProtocol::<u64>::default();
        let mut busiest = PerProtocol::<u32>::default();
        let port_set = self.port_set;
        let mut usage: Vec<NatUsage> = self
            .destinations
            .into_iter()
            .map(|(destination, mut ports)| {
                let protocol = destination.protocol;
                let ports_used = ports.count_within(&port_set);
                destination_count[protocol] += 1;
                busiest[protocol] = busiest[protocol].max(ports_used);
                NatUsage {
                    destination,
                    ports_used,
                }
            })
            .collect();
        usage.sort_by(|a, b| {
            b.ports_used
                .cmp(&a.ports_used)
                .then(a.destination.cmp(&b.destination))
        });
        usage.truncate(top);
        NatFigures {
            capacity: self.ports.port_count(),
            destinations: usage,
            destination_count,
            busiest,
            counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(protocol: Protocol, nat: &str, remote: &str) -> NatEntry {
        NatEntry {
            protocol,
            nat: nat.parse().unwrap(),
            remote: remote.parse().unwrap(),
        }
    }

    #[test]
    fn ports_are_counted_per_protocol_nat_address_and_destination() {
        let mut table = NatTable::new(PortRange {
            start: 45000,
            end: 45019,
        });
        for port in 45000..45020 {
            table.add(&entry(
                Protocol::Tcp,
                &format!("10.0.0.1:{port}"),
                "10.0.9.9:443",
            ));
        }
        // The same ports toward another destination, from another NAT
        // address, or over UDP are other pairs.
        for port in 45000..45005 {
            table.add(&entry(
                Protocol::Tcp,
                &format!("10.0.0.1:{port}"),
                "10.0.9.9:80",
            ));
            table.add(&entry(
                Protocol::Tcp,
                &format!("10.0.0.2:{port}"),
                "10.0.9.9:443",
            ));
            table.add(&entry(
                Protocol::Udp,
                &format!("10.0.0.1:{port}"),
                "10.0.9.9:53",
            ));
        }
        // A port outside the range is no port of the capacity, and a
        // repeated one counts once.
        table.add(&entry(Protocol::Udp, "10.0.0.1:999", "10.0.9.9:53"));
        table.add(&entry(Protocol::Udp, "10.0.0.1:45000", "10.0.9.9:53"));
        let figures = table.finish(2, None);
        assert_eq!(figures.capacity, 20);
        assert_eq!(figures.destination_count, PerProtocol { tcp: 3, udp: 1 });
        assert_eq!(figures.busiest, PerProtocol { tcp: 20, udp: 5 });
        assert_eq!(figures.max_used_ratio(Protocol::Tcp), 1.0);
        assert_eq!(figures.max_used_ratio(Protocol::Udp), 0.25);
        let listed: Vec<(String, u32)> = figures
            .destinations
            .iter()
            .map(|usage| {
                let d = usage.destination;
                (
                    format!("{} {} {}", d.protocol.label(), d.nat_address, d.remote),
                    usage.ports_used,
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("tcp 10.0.0.1 10.0.9.9:443".to_string(), 20),
                ("tcp 10.0.0.1 10.0.9.9:80".to_string(), 5),
            ]
        );
    }
}

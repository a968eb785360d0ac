//! The entries of the failure counter's maps (`struct failure_key`,
//! `failure_value`, `total_key`, `name_key` and `name_value`), decoded from
//! and encoded to the bytes the maps hold, and read into the exporter's
//! model.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Fields, FieldsMut, failure_key, failure_value, name_key, name_value, total_key};
use crate::model::{
    Connection, Connector, FailureKind, PortFailure, PortFailureCounts, Protocol, comm_text,
    process_label,
};

/// `KIND_CONNECT_FAILED`, `KIND_BIND_FAILED`, `KIND_CONNECT_ATTEMPT` and
/// `KIND_CONNECTED` in the C source.
pub const KIND_CONNECT_FAILED: u8 = 1;
pub const KIND_BIND_FAILED: u8 = 2;
pub const KIND_CONNECT_ATTEMPT: u8 = 3;
pub const KIND_CONNECTED: u8 = 4;

/// `FAMILY_MAPPED`: an AF_INET6 socket with an IPv4-mapped peer, whose
/// addresses are the IPv4 ones.
pub const FAMILY_MAPPED: u8 = 255;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// A `struct failure_key`: failures (or connects) of one process of one
/// namespace toward one destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureKey {
    /// The network namespace's inode.
    pub netns: u32,
    /// `KIND_*`.
    pub kind: u8,
    /// `IPPROTO_*`.
    pub protocol: u8,
    /// `AF_INET`, `AF_INET6` or `FAMILY_MAPPED`.
    pub family: u8,
    /// The remote port.
    pub remote_port: u16,
    /// The network namespace's cookie; 0 where the kernel has none.
    pub cookie: u64,
    /// The local address: 4 bytes for IPv4, 16 for IPv6, network order.
    pub local: [u8; 16],
    /// The remote address, likewise.
    pub remote: [u8; 16],
    /// The calling task's comm, NUL-padded.
    pub comm: [u8; 16],
}

impl FailureKey {
    /// The key the map holds as `bytes`.
    pub fn decode(bytes: &[u8; failure_key::SIZE]) -> FailureKey {
        let fields = Fields(bytes);
        FailureKey {
            netns: fields.u32(failure_key::netns),
            kind: fields.u8(failure_key::kind),
            protocol: fields.u8(failure_key::protocol),
            family: fields.u8(failure_key::family),
            remote_port: fields.u16(failure_key::remote_port),
            cookie: fields.u64(failure_key::cookie),
            local: fields.bytes16(failure_key::local),
            remote: fields.bytes16(failure_key::remote),
            comm: fields.bytes16(failure_key::comm),
        }
    }

    /// The key as the map holds it, padding zeroed.
    pub fn encode(&self) -> [u8; failure_key::SIZE] {
        let mut bytes = [0; failure_key::SIZE];
        let mut fields = FieldsMut(&mut bytes);
        fields.put(failure_key::netns, &self.netns.to_ne_bytes());
        fields.put(failure_key::kind, &[self.kind]);
        fields.put(failure_key::protocol, &[self.protocol]);
        fields.put(failure_key::family, &[self.family]);
        fields.put(failure_key::remote_port, &self.remote_port.to_ne_bytes());
        fields.put(failure_key::cookie, &self.cookie.to_ne_bytes());
        fields.put(failure_key::local, &self.local);
        fields.put(failure_key::remote, &self.remote);
        fields.put(failure_key::comm, &self.comm);
        bytes
    }
}

/// A `struct failure_value`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureValue {
    /// Calls counted under the key.
    pub count: u64,
    /// The tgid of the last task that made one.
    pub last_tgid: u32,
    /// 1 once calls under the key came from more than one process.
    pub several: u32,
}

impl FailureValue {
    /// The value the map holds as `bytes`.
    pub fn decode(bytes: &[u8; failure_value::SIZE]) -> FailureValue {
        let fields = Fields(bytes);
        FailureValue {
            count: fields.u64(failure_value::count),
            last_tgid: fields.u32(failure_value::last_tgid),
            several: fields.u32(failure_value::several),
        }
    }

    /// The value as the map holds it.
    pub fn encode(&self) -> [u8; failure_value::SIZE] {
        let mut bytes = [0; failure_value::SIZE];
        let mut fields = FieldsMut(&mut bytes);
        fields.put(failure_value::count, &self.count.to_ne_bytes());
        fields.put(failure_value::last_tgid, &self.last_tgid.to_ne_bytes());
        fields.put(failure_value::several, &self.several.to_ne_bytes());
        bytes
    }
}

/// A `struct total_key`: counts of one namespace by kind and protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TotalKey {
    /// The network namespace's inode.
    pub netns: u32,
    /// `KIND_*`.
    pub kind: u8,
    /// `IPPROTO_*`.
    pub protocol: u8,
    /// The network namespace's cookie; 0 where the kernel has none.
    pub cookie: u64,
}

impl TotalKey {
    /// The key the map holds as `bytes`.
    pub fn decode(bytes: &[u8; total_key::SIZE]) -> TotalKey {
        let fields = Fields(bytes);
        TotalKey {
            netns: fields.u32(total_key::netns),
            kind: fields.u8(total_key::kind),
            protocol: fields.u8(total_key::protocol),
            cookie: fields.u64(total_key::cookie),
        }
    }

    /// The key as the map holds it, padding zeroed.
    pub fn encode(&self) -> [u8; total_key::SIZE] {
        let mut bytes = [0; total_key::SIZE];
        let mut fields = FieldsMut(&mut bytes);
        fields.put(total_key::netns, &self.netns.to_ne_bytes());
        fields.put(total_key::kind, &[self.kind]);
        fields.put(total_key::protocol, &[self.protocol]);
        fields.put(total_key::cookie, &self.cookie.to_ne_bytes());
        bytes
    }
}

/// A `struct name_key`: a connection of one namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NameKey {
    /// The network namespace's inode.
    pub netns: u32,
    /// `AF_INET`, `AF_INET6` or `FAMILY_MAPPED`.
    pub family: u8,
    /// The local port.
    pub local_port: u16,
    /// The remote port.
    pub remote_port: u16,
    /// The local address, as in `FailureKey`.
    pub local: [u8; 16],
    /// The remote address, likewise.
    pub remote: [u8; 16],
    /// The network namespace's cookie; 0 where the kernel has none.
    pub cookie: u64,
}

impl NameKey {
    /// The key the map holds as `bytes`.
    pub fn decode(bytes: &[u8; name_key::SIZE]) -> NameKey {
        let fields = Fields(bytes);
        NameKey {
            netns: fields.u32(name_key::netns),
            family: fields.u8(name_key::family),
            local_port: fields.u16(name_key::local_port),
            remote_port: fields.u16(name_key::remote_port),
            local: fields.bytes16(name_key::local),
            remote: fields.bytes16(name_key::remote),
            cookie: fields.u64(name_key::cookie),
        }
    }

    /// The key as the map holds it, padding zeroed: as the program makes
    /// it, so that a look-up finds it.
    pub fn encode(&self) -> [u8; name_key::SIZE] {
        let mut bytes = [0; name_key::SIZE];
        let mut fields = FieldsMut(&mut bytes);
        fields.put(name_key::netns, &self.netns.to_ne_bytes());
        fields.put(name_key::family, &[self.family]);
        fields.put(name_key::local_port, &self.local_port.to_ne_bytes());
        fields.put(name_key::remote_port, &self.remote_port.to_ne_bytes());
        fields.put(name_key::local, &self.local);
        fields.put(name_key::remote, &self.remote);
        fields.put(name_key::cookie, &self.cookie.to_ne_bytes());
        bytes
    }
}

/// A `struct name_value`: the process that closed a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NameValue {
    /// Its tgid.
    pub tgid: u32,
    /// Its leader's comm, NUL-padded.
    pub comm: [u8; 16],
    /// CLOCK_MONOTONIC, in nanoseconds, when the name was recorded.
    pub stamp: u64,
}

impl NameValue {
    /// The value the map holds as `bytes`.
    pub fn decode(bytes: &[u8; name_value::SIZE]) -> NameValue {
        let fields = Fields(bytes);
        NameValue {
            tgid: fields.u32(name_value::tgid),
            comm: fields.bytes16(name_value::comm),
            stamp: fields.u64(name_value::stamp),
        }
    }

    /// The value as the map holds it.
    pub fn encode(&self) -> [u8; name_value::SIZE] {
        let mut bytes = [0; name_value::SIZE];
        let mut fields = FieldsMut(&mut bytes);
        fields.put(name_value::tgid, &self.tgid.to_ne_bytes());
        fields.put(name_value::comm, &self.comm);
        fields.put(name_value::stamp, &self.stamp.to_ne_bytes());
        bytes
    }
}

/// One entry of the `names` map as the exporter models it: the namespace,
/// the connection and the process that closed it; `None` for a family it does not
/// know.
pub fn name_from_entry(key: &NameKey, value: &NameValue) -> Option<(u64, Connection, Connector)> {
    let socket = |bytes: &[u8; 16], port| Some(SocketAddr::new(address(key.family, bytes)?, port));
    Some((
        u64::from(key.netns),
        Connection::between(
            socket(&key.local, key.local_port)?,
            socket(&key.remote, key.remote_port)?,
        ),
        Connector {
            tgid: value.tgid,
            comm: value.comm,
            ipv4_mapped: key.family == FAMILY_MAPPED,
        },
    ))
}

/// The `names` map's key of a connection of namespace `netns`, whose
/// cookie is `cookie`.
pub fn name_key(netns: u64, cookie: u64, connection: &Connection, mapped: bool) -> Option<NameKey> {
    let mut key = NameKey {
        netns: u32::try_from(netns).ok()?,
        family: AF_INET,
        local_port: connection.local.port(),
        remote_port: connection.remote.port(),
        local: [0; 16],
        remote: [0; 16],
        cookie,
    };
    for (bytes, address) in [
        (&mut key.local, connection.local.ip()),
        (&mut key.remote, connection.remote.ip()),
    ] {
        match address {
            IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => {
                bytes.copy_from_slice(&v6.octets());
                key.family = AF_INET6;
            }
        }
    }
    if mapped && key.family == AF_INET {
        key.family = FAMILY_MAPPED;
    }
    Some(key)
}

fn protocol_of(number: u8) -> Option<Protocol> {
    match number {
        IPPROTO_TCP => Some(Protocol::Tcp),
        IPPROTO_UDP => Some(Protocol::Udp),
        _ => None,
    }
}

fn address(family: u8, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET | FAMILY_MAPPED => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

/// One entry of the `failures` map as the exporter models it; `None` for
/// an entry it cannot read (a kind, protocol or family it does not know).
pub fn failure_from_entry(key: &FailureKey, value: &FailureValue) -> Option<PortFailure> {
    let kind = match key.kind {
        KIND_CONNECT_FAILED | KIND_CONNECTED => FailureKind::Connect,
        KIND_BIND_FAILED => FailureKind::Bind,
        _ => return None,
    };
    let end = key.comm.iter().position(|&byte| byte == 0).unwrap_or(16);
    Some(PortFailure {
        netns: u64::from(key.netns),
        kind,
        protocol: protocol_of(key.protocol)?,
        local_address: address(key.family, &key.local)?,
        remote_address: address(key.family, &key.remote)?,
        remote_port: key.remote_port,
        ipv4_mapped: key.family == FAMILY_MAPPED,
        process: process_label(comm_text(&key.comm[..end])),
        last_pid: value.last_tgid,
        several_pids: value.several != 0,
        count: value.count,
    })
}

/// Counts into `counts` from one entry of a map of counts by namespace:
/// failures that had no room by destination, connect attempts, or connects
/// that had no room by destination.
pub fn total_from_entry(key: &TotalKey, count: u64, counts: &mut PortFailureCounts) {
    let Some(protocol) = protocol_of(key.protocol) else {
        return;
    };
    let netns = u64::from(key.netns);
    match key.kind {
        KIND_CONNECT_FAILED => counts.add_total(netns, FailureKind::Connect, protocol, count),
        KIND_BIND_FAILED => counts.add_total(netns, FailureKind::Bind, protocol, count),
        KIND_CONNECT_ATTEMPT => counts.add_connect_attempts(netns, count),
        KIND_CONNECTED => *counts.connect_totals.entry((netns, protocol)).or_default() += count,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(family: u8, local: &[u8], remote: &[u8]) -> FailureKey {
        let mut key = FailureKey {
            netns: 4026531840,
            kind: KIND_CONNECT_FAILED,
            protocol: IPPROTO_TCP,
            family,
            remote_port: 8080,
            cookie: 1,
            local: [0; 16],
            remote: [0; 16],
            comm: [0; 16],
        };
        key.local[..local.len()].copy_from_slice(local);
        key.remote[..remote.len()].copy_from_slice(remote);
        key.comm[..4].copy_from_slice(b"java");
        key
    }

    const VALUE: FailureValue = FailureValue {
        count: 5,
        last_tgid: 4321,
        several: 0,
    };

    #[test]
    fn names_convert_both_ways_with_mapped_peers_as_ipv4() {
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"nginx");
        let value = NameValue {
            tgid: 42,
            comm,
            stamp: 7,
        };
        let mut key = NameKey {
            netns: 4026531840,
            family: FAMILY_MAPPED,
            local_port: 40001,
            remote_port: 443,
            local: [0; 16],
            remote: [0; 16],
            cookie: 3,
        };
        key.local[..4].copy_from_slice(&[10, 0, 0, 1]);
        key.remote[..4].copy_from_slice(&[10, 0, 0, 9]);
        let (netns, connection, connector) = name_from_entry(&key, &value).unwrap();
        assert_eq!(netns, 4026531840);
        // The socket's own view, IPv4-mapped, is the same connection.
        assert_eq!(
            connection,
            Connection::between(
                "[::ffff:10.0.0.1]:40001".parse().unwrap(),
                "[::ffff:10.0.0.9]:443".parse().unwrap()
            )
        );
        assert_eq!((connector.tgid, connector.label().as_str()), (42, "nginx"));
        assert!(connector.ipv4_mapped);
        assert_eq!(
            name_key(netns, 3, &connection, connector.ipv4_mapped),
            Some(key)
        );

        let mut v6 = key;
        v6.family = AF_INET6;
        v6.local = std::net::Ipv6Addr::LOCALHOST.octets();
        v6.remote = std::net::Ipv6Addr::LOCALHOST.octets();
        let (_, connection, connector) = name_from_entry(&v6, &value).unwrap();
        assert_eq!(connection.remote.to_string(), "[::1]:443");
        assert_eq!(
            name_key(netns, 3, &connection, connector.ipv4_mapped),
            Some(v6)
        );
        let mut unknown = key;
        unknown.family = 1;
        assert_eq!(name_from_entry(&unknown, &value), None);
    }

    #[test]
    fn entries_decode_what_they_encode_and_padding_stays_zero() {
        let mut key = key(AF_INET6, &[1; 16], &[2; 16]);
        key.cookie = u64::MAX - 1;
        let bytes = key.encode();
        assert_eq!(FailureKey::decode(&bytes), key);
        // Padding: after family, after remote_port, before cookie.
        assert_eq!(bytes[7], 0);
        assert_eq!(&bytes[10..16], &[0; 6]);
        assert_eq!(FailureValue::decode(&VALUE.encode()), VALUE);
        let total = TotalKey {
            netns: 9,
            kind: KIND_CONNECTED,
            protocol: IPPROTO_UDP,
            cookie: 5,
        };
        assert_eq!(TotalKey::decode(&total.encode()), total);
        let name = NameKey {
            netns: 3,
            family: AF_INET,
            local_port: 1,
            remote_port: 2,
            local: [3; 16],
            remote: [4; 16],
            cookie: 6,
        };
        assert_eq!(NameKey::decode(&name.encode()), name);
        let value = NameValue {
            tgid: 1,
            comm: *b"0123456789abcdef",
            stamp: 2,
        };
        assert_eq!(NameValue::decode(&value.encode()), value);
    }

    #[test]
    fn entries_become_failures_with_mapped_peers_as_ipv4() {
        let v4 =
            failure_from_entry(&key(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 2]), &VALUE).unwrap();
        assert_eq!(v4.local_address.to_string(), "127.0.0.1");
        assert_eq!(v4.remote_address.to_string(), "127.0.0.2");
        assert_eq!(v4.remote_port, 8080);
        assert_eq!(v4.process, "java");
        assert_eq!(v4.last_pid, 4321);
        assert_eq!(v4.count, 5);
        assert_eq!(v4.protocol, Protocol::Tcp);
        assert!(!v4.ipv4_mapped);

        let mapped = failure_from_entry(
            &key(FAMILY_MAPPED, &[127, 0, 0, 1], &[127, 0, 0, 2]),
            &VALUE,
        )
        .unwrap();
        assert_eq!(mapped.remote_address, v4.remote_address);
        assert!(mapped.ipv4_mapped);
        assert_eq!(mapped.key(), v4.key(), "one destination, one process");

        let mut loopback = [0u8; 16];
        loopback[15] = 1;
        let v6 = failure_from_entry(&key(AF_INET6, &loopback, &loopback), &VALUE).unwrap();
        assert_eq!(v6.remote_address.to_string(), "::1");

        assert_eq!(failure_from_entry(&key(1, &[], &[]), &VALUE), None);
        let mut bind = key(AF_INET, &[127, 0, 0, 1], &[]);
        bind.kind = KIND_BIND_FAILED;
        bind.remote_port = 0;
        let bind = failure_from_entry(&bind, &VALUE).unwrap();
        assert_eq!(bind.kind, FailureKind::Bind);
        assert_eq!(bind.local_address.to_string(), "127.0.0.1");

        let mut other_kind = key(AF_INET, &[], &[]);
        other_kind.kind = 9;
        assert_eq!(failure_from_entry(&other_kind, &VALUE), None);
    }

    #[test]
    fn totals_split_failures_from_attempts() {
        let mut counts = PortFailureCounts::default();
        let total = |kind| TotalKey {
            netns: 7,
            kind,
            protocol: IPPROTO_TCP,
            cookie: 1,
        };
        total_from_entry(&total(KIND_CONNECT_FAILED), 3, &mut counts);
        total_from_entry(&total(KIND_CONNECT_ATTEMPT), 40, &mut counts);
        total_from_entry(&total(KIND_BIND_FAILED), 2, &mut counts);
        total_from_entry(&total(42), 1, &mut counts);
        assert_eq!(counts.total(7, FailureKind::Bind, Protocol::Tcp), 2);
        assert_eq!(counts.total(7, FailureKind::Connect, Protocol::Tcp), 3);
        assert_eq!(counts.total(7, FailureKind::Connect, Protocol::Udp), 0);
        assert_eq!(counts.connect_attempts(7), 40);
        assert_eq!(counts.connect_attempts(8), 0);
    }
}

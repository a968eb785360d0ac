//! The layouts of the failure counter's map entries, as the C source
//! declares them, and their decoding into the exporter's model: pure, no
//! kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use portstat_core::model::{
    Connection, Connector, FailureKind, PortFailure, PortFailureCounts, Protocol,
};

/// `KIND_CONNECT_FAILED`, `KIND_BIND_FAILED`, `KIND_CONNECT_ATTEMPT` and
/// `KIND_CONNECTED` in the C source.
pub(super) const KIND_CONNECT_FAILED: u8 = 1;
pub(super) const KIND_BIND_FAILED: u8 = 2;
pub(super) const KIND_CONNECT_ATTEMPT: u8 = 3;
pub(super) const KIND_CONNECTED: u8 = 4;

/// `FAMILY_MAPPED`: an AF_INET6 socket with an IPv4-mapped peer, whose
/// addresses are the IPv4 ones.
pub(super) const FAMILY_MAPPED: u8 = 255;
pub(super) const AF_INET: u8 = 2;
pub(super) const AF_INET6: u8 = 10;
pub(super) const IPPROTO_TCP: u8 = 6;
pub(super) const IPPROTO_UDP: u8 = 17;

/// `struct failure_key` in the C source: 72 bytes, native byte order but
/// for the addresses.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureKey {
    /// The network namespace's inode.
    pub netns: u32,
    /// `KIND_*`.
    pub kind: u8,
    /// `IPPROTO_*`.
    pub protocol: u8,
    /// `AF_INET`, `AF_INET6` or `FAMILY_MAPPED`.
    pub family: u8,
    pad: u8,
    /// The remote port.
    pub remote_port: u16,
    pad2: u16,
    pad3: u32,
    /// The network namespace's cookie; 0 where the kernel has none.
    pub cookie: u64,
    /// The local address: 4 bytes for IPv4, 16 for IPv6, network order.
    pub local: [u8; 16],
    /// The remote address, likewise.
    pub remote: [u8; 16],
    /// The calling task's comm, NUL-padded.
    pub comm: [u8; 16],
}

// SAFETY: plain integers and byte arrays, every bit pattern valid, with the
// padding made explicit fields.
unsafe impl aya::Pod for FailureKey {}

/// `struct failure_value` in the C source.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureValue {
    /// Failures counted under the key.
    pub count: u64,
    /// The tgid of the last task that failed under the key.
    pub last_tgid: u32,
    /// 1 once calls under the key came from more than one process.
    pub several: u32,
}

// SAFETY: as for FailureKey.
unsafe impl aya::Pod for FailureValue {}

/// `struct total_key` in the C source.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TotalKey {
    /// The network namespace's inode.
    pub netns: u32,
    /// `KIND_*`.
    pub kind: u8,
    /// `IPPROTO_*`.
    pub protocol: u8,
    pub(super) pad: u16,
    /// The network namespace's cookie; 0 where the kernel has none.
    pub cookie: u64,
}

// SAFETY: as for FailureKey.
unsafe impl aya::Pod for TotalKey {}

/// `struct name_key` in the C source: a connection, 56 bytes, native byte
/// order but for the addresses.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NameKey {
    /// The network namespace's inode.
    pub netns: u32,
    /// `AF_INET`, `AF_INET6` or `FAMILY_MAPPED`.
    pub family: u8,
    pad: u8,
    /// The local port.
    pub local_port: u16,
    /// The remote port.
    pub remote_port: u16,
    pad2: u16,
    /// The local address, as in `FailureKey`.
    pub local: [u8; 16],
    /// The remote address, likewise.
    pub remote: [u8; 16],
    pad3: u32,
    /// The network namespace's cookie; 0 where the kernel has none.
    pub cookie: u64,
}

// SAFETY: as for FailureKey.
unsafe impl aya::Pod for NameKey {}

/// `struct name_value` in the C source.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameValue {
    /// The tgid of the process that closed the connection.
    pub tgid: u32,
    /// Its leader's comm, NUL-padded.
    pub comm: [u8; 16],
    pad: u32,
    /// CLOCK_MONOTONIC, in nanoseconds, when the name was recorded.
    pub stamp: u64,
}

// SAFETY: as for FailureKey.
unsafe impl aya::Pod for NameValue {}

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
        pad: 0,
        local_port: connection.local.port(),
        remote_port: connection.remote.port(),
        pad2: 0,
        local: [0; 16],
        remote: [0; 16],
        pad3: 0,
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
        process: portstat_core::model::process_label(portstat_core::model::comm_text(
            &key.comm[..end],
        )),
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
pub(super) mod tests {
    use super::*;

    pub(in crate::source::bpf::failures) fn key(
        family: u8,
        local: &[u8],
        remote: &[u8],
    ) -> FailureKey {
        let mut key = FailureKey {
            netns: 4026531840,
            kind: KIND_CONNECT_FAILED,
            protocol: IPPROTO_TCP,
            family,
            pad: 0,
            remote_port: 8080,
            pad2: 0,
            pad3: 0,
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

    pub(in crate::source::bpf::failures) const VALUE: FailureValue = FailureValue {
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
            pad: 0,
            stamp: 7,
        };
        let mut key = NameKey {
            netns: 4026531840,
            family: FAMILY_MAPPED,
            pad: 0,
            local_port: 40001,
            remote_port: 443,
            pad2: 0,
            local: [0; 16],
            remote: [0; 16],
            pad3: 0,
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
    fn the_maps_layouts_are_the_c_ones() {
        assert_eq!(std::mem::size_of::<FailureKey>(), 72);
        assert_eq!(std::mem::size_of::<FailureValue>(), 16);
        assert_eq!(std::mem::size_of::<TotalKey>(), 16);
        assert_eq!(std::mem::size_of::<NameKey>(), 56);
        assert_eq!(std::mem::size_of::<NameValue>(), 32);
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
            pad: 0,
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

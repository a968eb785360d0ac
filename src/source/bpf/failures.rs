//! The failures themselves: `connect()` calls that found no free local
//! port, counted in the kernel as they happen by a `tp_btf` program
//! (`port_failures.bpf.c`) attached for as long as the exporter runs, and
//! read from its maps at each sample.
//!
//! The program counts every namespace's failures; the maps are read whole
//! and split by namespace by the caller. Nothing is removed from the maps
//! but the entries of namespaces gone from the host (`forget`), so every
//! count only rises while the exporter runs. Converting the maps'
//! entries is pure (`failure_from_entry`, `total_from_entry`); only
//! `PortFailureCounter` touches the kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{Array, HashMap, Map, MapData};

use super::loader::{AttachPoint, LoadedProgram};
use super::{BpfError, unavailable};
use portstat_core::model::{FailureKind, PortFailure, PortFailureCounts, Protocol};

/// The compiled program, built from `port_failures.bpf.c` by `build.sh`.
pub const PORT_FAILURES_OBJECT: &[u8] = include_bytes!("port_failures.bpf.o");

/// The programs' names in the object, and the tracepoints they attach to:
/// TCP connect() failures at the socket's change of state, and bind() and
/// UDP failures at the exit of their system call.
pub(super) const CONNECT_PROGRAM: &str = "count_port_failures";
pub(super) const CONNECT_TRACEPOINT: &str = "inet_sock_set_state";
pub(super) const AUTOBIND_PROGRAM: &str = "count_autobind_failures";
pub(super) const AUTOBIND_TRACEPOINT: &str = "sys_exit";

/// `KIND_CONNECT_FAILED`, `KIND_BIND_FAILED` and `KIND_CONNECT_ATTEMPT` in
/// the C source.
const KIND_CONNECT_FAILED: u8 = 1;
const KIND_BIND_FAILED: u8 = 2;
const KIND_CONNECT_ATTEMPT: u8 = 3;

/// `FAMILY_MAPPED`: an AF_INET6 socket with an IPv4-mapped peer, whose
/// addresses are the IPv4 ones.
const FAMILY_MAPPED: u8 = 255;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// `struct failure_key` in the C source: 64 bytes, native byte order but
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
    /// The local address: 4 bytes for IPv4, 16 for IPv6, network order.
    pub local: [u8; 16],
    /// The remote address, likewise.
    pub remote: [u8; 16],
    /// The calling task's comm, NUL-padded.
    pub comm: [u8; 16],
    pad3: u32,
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
    pad: u32,
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
    pad: u16,
}

// SAFETY: as for FailureKey.
unsafe impl aya::Pod for TotalKey {}

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
        KIND_CONNECT_FAILED => FailureKind::Connect,
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
        process: String::from_utf8_lossy(&key.comm[..end]).into_owned(),
        last_pid: value.last_tgid,
        count: value.count,
    })
}

/// Counts failures into `counts` from one entry of the `totals` map.
pub fn total_from_entry(key: &TotalKey, count: u64, counts: &mut PortFailureCounts) {
    let Some(protocol) = protocol_of(key.protocol) else {
        return;
    };
    let netns = u64::from(key.netns);
    match key.kind {
        KIND_CONNECT_FAILED => counts.add_total(netns, FailureKind::Connect, protocol, count),
        KIND_BIND_FAILED => counts.add_total(netns, FailureKind::Bind, protocol, count),
        KIND_CONNECT_ATTEMPT => counts.add_connect_attempts(netns, count),
        _ => {}
    }
}

/// The maps' names, in the object and in the kernel (at most 15 bytes):
/// the exporter's own, so that `running_counts` finds them.
const FAILURES_MAP: &str = "portstat_fails";
const TOTALS_MAP: &str = "portstat_totals";
const LOST_MAP: &str = "portstat_lost";

/// The three maps the programs count into.
struct FailureMaps {
    failures: HashMap<MapData, FailureKey, FailureValue>,
    totals: HashMap<MapData, TotalKey, u64>,
    lost: Array<MapData, u64>,
}

impl FailureMaps {
    /// The maps from their data, as made by the loader or opened by id.
    fn new(failures: MapData, totals: MapData, lost: MapData) -> Result<FailureMaps, BpfError> {
        Ok(FailureMaps {
            failures: HashMap::try_from(Map::HashMap(failures))
                .map_err(|error| unavailable("maps", error))?,
            totals: HashMap::try_from(Map::HashMap(totals))
                .map_err(|error| unavailable("maps", error))?,
            lost: Array::try_from(Map::Array(lost)).map_err(|error| unavailable("maps", error))?,
        })
    }

    /// Every count so far, of every namespace. The cost follows the number
    /// of map entries, which the maps bound, not the number of failures.
    fn read(&self) -> Result<PortFailureCounts, BpfError> {
        let mut counts = PortFailureCounts::default();
        for entry in self.totals.iter() {
            let (key, count) = entry.map_err(|error| BpfError::Read(error_to_io(error)))?;
            total_from_entry(&key, count, &mut counts);
        }
        for entry in self.failures.iter() {
            let (key, value) = entry.map_err(|error| BpfError::Read(error_to_io(error)))?;
            if let Some(failure) = failure_from_entry(&key, &value) {
                counts.failures.push(failure);
            }
        }
        for index in 0..2 {
            counts.unrecorded += self
                .lost
                .get(&index, 0)
                .map_err(|error| BpfError::Read(error_to_io(error)))?;
        }
        counts.failures.sort_by(|a, b| a.key().cmp(&b.key()));
        Ok(counts)
    }
}

/// The programs, attached, and their maps.
pub struct PortFailureCounter {
    // Detaches when dropped.
    _program: LoadedProgram,
    maps: FailureMaps,
}

impl PortFailureCounter {
    /// Loads the programs and attaches them: from now on every namespace's
    /// TCP connect() failures are counted, and with `autobind` bind() to
    /// port 0 and UDP failures too, at the cost of a program run at the
    /// exit of every system call on the host.
    pub fn load(autobind: bool) -> Result<PortFailureCounter, BpfError> {
        let kernel_btf = std::fs::read(super::KERNEL_BTF).map_err(|error| {
            unavailable("kernel BTF", format!("{}: {error}", super::KERNEL_BTF))
        })?;
        let connect = (
            CONNECT_PROGRAM,
            AttachPoint::RawTracepoint(CONNECT_TRACEPOINT),
        );
        let autobind_program = (
            AUTOBIND_PROGRAM,
            AttachPoint::RawTracepoint(AUTOBIND_TRACEPOINT),
        );
        let programs = if autobind {
            &[connect, autobind_program][..]
        } else {
            &[connect][..]
        };
        let mut program = LoadedProgram::load(PORT_FAILURES_OBJECT, programs, kernel_btf)
            .map_err(|error| unavailable(error.stage, error.reason))?;
        let mut take = |name: &str| {
            program
                .take_map(name)
                .ok_or_else(|| unavailable("maps", format!("the object has no {name} map")))
        };
        let maps = FailureMaps::new(take(FAILURES_MAP)?, take(TOTALS_MAP)?, take(LOST_MAP)?)?;
        Ok(PortFailureCounter {
            _program: program,
            maps,
        })
    }

    /// Every count so far, of every namespace.
    pub fn read(&self) -> Result<PortFailureCounts, BpfError> {
        self.maps.read()
    }

    /// Removes every entry of the namespaces `gone`, so that the room they
    /// held in the maps goes to the namespaces still there.
    pub fn forget(&mut self, gone: &[u64]) -> Result<(), BpfError> {
        let is_gone = |netns: u32| gone.contains(&u64::from(netns));
        remove_keys(&mut self.maps.failures, |key| is_gone(key.netns))?;
        remove_keys(&mut self.maps.totals, |key| is_gone(key.netns))
    }
}

/// Removes the keys of `map` that `remove` picks.
fn remove_keys<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    remove: impl Fn(&K) -> bool,
) -> Result<(), BpfError> {
    let keys: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|key| remove(key))
        .collect();
    for key in &keys {
        map.remove(key)
            .map_err(|error| BpfError::Read(error_to_io(error)))?;
    }
    Ok(())
}

/// The counts of the exporter running on this host, found by its maps'
/// names (the newest, where several run), for `inspect`; `None` where no
/// exporter counts. Opening another process's maps by id needs
/// `CAP_SYS_ADMIN`.
pub fn running_counts() -> Result<Option<PortFailureCounts>, BpfError> {
    let mut newest: [Option<u32>; 3] = [None; 3];
    for info in aya::maps::loaded_maps() {
        let info = info.map_err(|error| unavailable("map ids", error))?;
        let slot = match info.name_as_str() {
            Some(FAILURES_MAP) => 0,
            Some(TOTALS_MAP) => 1,
            Some(LOST_MAP) => 2,
            _ => continue,
        };
        newest[slot] = newest[slot].max(Some(info.id()));
    }
    let [Some(failures), Some(totals), Some(lost)] = newest else {
        return Ok(None);
    };
    let open = |id| MapData::from_id(id).map_err(|error| unavailable("open map", error));
    FailureMaps::new(open(failures)?, open(totals)?, open(lost)?)?
        .read()
        .map(Some)
}

fn error_to_io(error: aya::maps::MapError) -> std::io::Error {
    std::io::Error::other(error.to_string())
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
            pad: 0,
            remote_port: 8080,
            pad2: 0,
            local: [0; 16],
            remote: [0; 16],
            comm: [0; 16],
            pad3: 0,
        };
        key.local[..local.len()].copy_from_slice(local);
        key.remote[..remote.len()].copy_from_slice(remote);
        key.comm[..4].copy_from_slice(b"java");
        key
    }

    const VALUE: FailureValue = FailureValue {
        count: 5,
        last_tgid: 4321,
        pad: 0,
    };

    #[test]
    fn the_maps_layouts_are_the_c_ones() {
        assert_eq!(std::mem::size_of::<FailureKey>(), 64);
        assert_eq!(std::mem::size_of::<FailureValue>(), 16);
        assert_eq!(std::mem::size_of::<TotalKey>(), 8);
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

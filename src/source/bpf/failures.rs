//! The failures themselves: `connect()` calls that found no free local
//! port, counted in the kernel as they happen by a `tp_btf` program
//! (`port_failures.bpf.c`) attached for as long as the exporter runs, and
//! read from its maps at each sample.
//!
//! The program counts every namespace's failures; the maps are read whole
//! and split by namespace by the caller. The program keys a namespace by
//! its inode and its cookie: the kernel gives a deleted namespace's inode
//! to the next one at once, and the cookie, never reused, tells which of
//! the two an entry is of. An entry whose inode is a live namespace's but
//! whose cookie is not is of a namespace gone: it is left out of the counts
//! and removed. Nothing else is removed from the maps but the entries of
//! namespaces gone from the host (`forget`), so every count only rises while
//! the exporter runs. Converting the maps' entries is pure
//! (`failure_from_entry`, `total_from_entry`); only `PortFailureCounter`
//! touches the kernel.

use std::collections::{HashMap as StdHashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use aya::maps::{Array, HashMap, Map, MapData};

mod running;

pub use portstat_core::parse::bpf::failures::{
    FailureKey, FailureValue, NameKey, NameValue, TotalKey, failure_from_entry, name_from_entry,
    name_key, total_from_entry,
};
use portstat_core::parse::bpf::{failure_key, failure_value, name_key, name_value, total_key};

/// The maps' entries as the kernel holds them, decoded and encoded by the
/// core (`portstat_core::parse::bpf::failures`).
type FailureKeyBytes = [u8; failure_key::SIZE];
type FailureValueBytes = [u8; failure_value::SIZE];
type TotalKeyBytes = [u8; total_key::SIZE];
type NameKeyBytes = [u8; name_key::SIZE];
type NameValueBytes = [u8; name_value::SIZE];
pub use running::{RunningExporter, running_counts, running_exporter, running_names};

use super::batch::BatchedHash;
use super::loader::{AttachPoint, LoadedProgram};
use super::{BpfError, unavailable};
use portstat_core::model::{Connection, ConnectionNamer, Connector, PortFailureCounts};

/// The compiled program, built from `port_failures.bpf.c` by `build.sh`.
pub const PORT_FAILURES_OBJECT: &[u8] = include_bytes!("port_failures.bpf.o");

/// The programs' names in the object, and the tracepoints they attach to:
/// TCP connect() failures at the socket's change of state, alone or with
/// connects counted and named, and bind() and UDP failures at the exit of
/// their system call.
pub(super) const CONNECT_PROGRAM: &str = "count_port_failures";
pub(super) const CONNECTS_PROGRAM: &str = "count_connects";
pub(super) const CONNECT_TRACEPOINT: &str = "inet_sock_set_state";
pub(super) const AUTOBIND_PROGRAM: &str = "count_autobind_failures";
pub(super) const AUTOBIND_TRACEPOINT: &str = "sys_exit";

/// `portstat_lost`'s indexes in the C source: failures with no room by
/// destination; connects with none; names recorded; connect attempts with
/// no room by namespace.
const UNRECORDED_FAILURE: u32 = 0;
const UNRECORDED_CONNECT: u32 = 2;
const NAMES_RECORDED: u32 = 3;
const UNRECORDED_ATTEMPT: u32 = 5;

/// The maps' names, in the object and in the kernel (at most 15 bytes):
/// the exporter's own, so that `running_counts` finds them, in the order
/// `FailureMaps::new` takes them.
const MAP_NAMES: [&str; 6] = [
    "portstat_fails",
    "portstat_totals",
    "portstat_lost",
    "portstat_conns",
    "portstat_ctots",
    "portstat_tries",
];
/// The map of connections and the processes that closed them.
const NAMES_MAP: &str = "portstat_names";
/// The namespaces the exporter samples, by inode: the only ones the
/// programs record.
const NETS_MAP: &str = "portstat_nets";

/// The maps the programs count into.
struct FailureMaps {
    failures: BatchedHash<FailureKeyBytes, FailureValueBytes>,
    totals: BatchedHash<TotalKeyBytes, u64>,
    lost: Array<MapData, u64>,
    connects: BatchedHash<FailureKeyBytes, FailureValueBytes>,
    connect_totals: BatchedHash<TotalKeyBytes, u64>,
    attempts: BatchedHash<TotalKeyBytes, u64>,
}

/// The cookie of the live namespace of each inode, as far as the caller
/// knows it: an entry of another cookie under that inode is of a namespace
/// gone, whose inode the kernel gave to the live one.
pub trait LiveCookies {
    /// The cookie of the live namespace of inode `netns`; `None` where it
    /// is not known (every entry of the inode is then taken as its).
    fn cookie(&mut self, netns: u64) -> Option<u64>;
}

impl<F: FnMut(u64) -> Option<u64>> LiveCookies for F {
    fn cookie(&mut self, netns: u64) -> Option<u64> {
        self(netns)
    }
}

/// Tells, with each inode's live cookie asked once, whether an entry is of
/// a namespace gone, and keeps those found.
struct Staleness<'a> {
    live: &'a mut dyn LiveCookies,
    asked: StdHashMap<u32, Option<u64>>,
    stale: Vec<(u32, u64)>,
}

impl Staleness<'_> {
    fn is_stale(&mut self, netns: u32, cookie: u64) -> bool {
        let live = &mut self.live;
        let known = *self
            .asked
            .entry(netns)
            .or_insert_with(|| live.cookie(u64::from(netns)));
        let stale = cookie != 0 && known.is_some_and(|known| known != 0 && known != cookie);
        if stale && !self.stale.contains(&(netns, cookie)) {
            self.stale.push((netns, cookie));
        }
        stale
    }
}

/// The counts of the live namespaces, and the (inode, cookie) of the
/// namespaces gone whose entries were left out.
pub struct Read {
    /// Every count so far of every namespace not found gone.
    pub counts: PortFailureCounts,
    /// Namespaces gone whose inode a live namespace has now.
    pub stale: Vec<(u32, u64)>,
}

/// The maps' entries as read, each with its namespace's inode and cookie,
/// before the entries of namespaces gone are told from the others.
pub struct RawCounts {
    totals: Vec<(TotalKey, u64)>,
    failures: Vec<(FailureKey, FailureValue)>,
    connects: Vec<(FailureKey, FailureValue)>,
    /// Failures with no room by destination and process.
    pub unrecorded: u64,
    /// Connects with no room by destination and process.
    pub connects_unrecorded: u64,
    attempts_unrecorded: u64,
}

impl RawCounts {
    /// Every count of every namespace `live` does not show gone, and the
    /// namespaces it shows gone.
    pub fn resolve(&self, live: &mut dyn LiveCookies) -> Read {
        let mut staleness = Staleness {
            live,
            asked: StdHashMap::new(),
            stale: Vec::new(),
        };
        let mut counts = PortFailureCounts::default();
        for (key, count) in &self.totals {
            if !staleness.is_stale(key.netns, key.cookie) {
                total_from_entry(key, *count, &mut counts);
            }
        }
        for (entries, into) in [
            (&self.failures, &mut counts.failures),
            (&self.connects, &mut counts.connects),
        ] {
            for (key, value) in entries {
                if staleness.is_stale(key.netns, key.cookie) {
                    continue;
                }
                if let Some(record) = failure_from_entry(key, value) {
                    into.push(record);
                }
            }
            into.sort_by(|a, b| a.key().cmp(&b.key()));
        }
        // Each map by destination and, by namespace, what it had no room
        // for: together every failure, and every connect, of the namespace.
        for failure in &counts.failures {
            *counts
                .totals
                .entry((failure.netns, failure.kind, failure.protocol))
                .or_default() += failure.count;
        }
        for connect in &counts.connects {
            *counts
                .connect_totals
                .entry((connect.netns, connect.protocol))
                .or_default() += connect.count;
        }
        counts.unrecorded = self.unrecorded;
        counts.connects_unrecorded = self.connects_unrecorded;
        counts.attempts_unrecorded = self.attempts_unrecorded;
        Read {
            counts,
            stale: staleness.stale,
        }
    }
}

impl FailureMaps {
    /// The maps from their data, as made by the loader or opened by id, in
    /// the order of `MAP_NAMES`.
    fn new(
        [failures, totals, lost, connects, connect_totals, attempts]: [MapData; 6],
    ) -> Result<FailureMaps, BpfError> {
        let hash = |data| BatchedHash::new(data, false).map_err(|error| unavailable("maps", error));
        let totals_map =
            |data| BatchedHash::new(data, false).map_err(|error| unavailable("maps", error));
        Ok(FailureMaps {
            failures: hash(failures)?,
            totals: totals_map(totals)?,
            lost: Array::try_from(Map::Array(lost)).map_err(|error| unavailable("maps", error))?,
            connects: hash(connects)?,
            connect_totals: totals_map(connect_totals)?,
            attempts: totals_map(attempts)?,
        })
    }

    /// Every entry so far, of every namespace, in batches. The cost
    /// follows the number of map entries, which the maps bound, not the
    /// number of calls.
    fn read(&self) -> Result<RawCounts, BpfError> {
        let mut totals = Vec::new();
        for map in [&self.totals, &self.connect_totals, &self.attempts] {
            map.for_each(|key, count| totals.push((TotalKey::decode(key), *count)))
                .map_err(read_error)?;
        }
        let entries = |map: &BatchedHash<FailureKeyBytes, FailureValueBytes>| {
            let mut entries = Vec::new();
            map.for_each(|key, value| {
                entries.push((FailureKey::decode(key), FailureValue::decode(value)))
            })
            .map_err(read_error)
            .map(|()| entries)
        };
        Ok(RawCounts {
            totals,
            failures: entries(&self.failures)?,
            connects: entries(&self.connects)?,
            unrecorded: self.lost(UNRECORDED_FAILURE)?,
            connects_unrecorded: self.lost(UNRECORDED_CONNECT)?,
            attempts_unrecorded: self.lost(UNRECORDED_ATTEMPT)?,
        })
    }

    fn lost(&self, index: u32) -> Result<u64, BpfError> {
        self.lost.get(&index, 0).map_err(read_error)
    }
}

/// The map of connections and who connected them, with what the exporter
/// took out of it, to tell how many names it evicted.
struct NameMap {
    map: BatchedHash<NameKeyBytes, NameValueBytes>,
    /// The same map, asked by the namespaces' reads.
    lookups: Arc<NameLookups>,
    /// Names removed as their connection was gone.
    pruned: u64,
    /// Names the map evicted while their connection was still there, the
    /// most ever computed (the count only rises).
    evicted: u64,
    /// The cookies of the names last swept, by inode: used where the live
    /// namespace's cookie is not known.
    cookies: StdHashMap<u64, Vec<u64>>,
    /// The names whose connection the last sample did not find, by
    /// `fingerprint`.
    missed: HashSet<u64>,
}

/// The map of names as the namespaces' reads ask it, one connection at a
/// time, with the names each sample found, by `fingerprint`.
struct NameLookups {
    map: HashMap<MapData, NameKeyBytes, NameValueBytes>,
    found: Mutex<HashSet<u64>>,
}

/// A key's fingerprint: the sets of names found and missed hold these, 8
/// bytes a name, rather than the 56-byte keys.
fn fingerprint(key: &NameKey) -> u64 {
    use std::hash::{Hash, Hasher};
    // Fixed keys: the same key gives the same fingerprint at every sample.
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// The map of names for one sample: each namespace read asks it for the
/// connections of its sockets that no process holds (`namer`), and what
/// they found spares those names from `PortFailureCounter::sweep_names`.
pub struct Names {
    lookups: Arc<NameLookups>,
    cookies: StdHashMap<u64, Vec<u64>>,
}

impl Names {
    /// Who closed the connections of namespace `netns`, whose cookie is
    /// `cookie` where known, asked of the kernel's map itself.
    pub fn namer(&self, netns: u64, cookie: Option<u64>) -> Option<Box<dyn ConnectionNamer>> {
        let netns = u32::try_from(netns).ok()?;
        let cookies = match cookie {
            Some(cookie) => vec![cookie],
            None => self
                .cookies
                .get(&u64::from(netns))
                .cloned()
                .unwrap_or_else(|| vec![0]),
        };
        Some(Box::new(KernelNamer {
            lookups: self.lookups.clone(),
            netns,
            cookies,
        }))
    }
}

/// Names one namespace's connections from the kernel's map: one look-up a
/// socket, under its own family (an AF_INET6 socket's IPv4-mapped
/// addresses, as every source reads them, are the map's FAMILY_MAPPED).
struct KernelNamer {
    lookups: Arc<NameLookups>,
    netns: u32,
    cookies: Vec<u64>,
}

impl ConnectionNamer for KernelNamer {
    fn name(&mut self, local: SocketAddr, remote: SocketAddr) -> Option<Connector> {
        let connection = Connection::between(local, remote);
        let mapped = matches!(local.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
        for &cookie in &self.cookies {
            let key = name_key(u64::from(self.netns), cookie, &connection, mapped)?;
            if let Ok(value) = self.lookups.map.get(&key.encode(), 0) {
                let value = NameValue::decode(&value);
                self.lookups
                    .found
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(fingerprint(&key));
                return Some(Connector {
                    tgid: value.tgid,
                    comm: value.comm,
                    ipv4_mapped: mapped,
                });
            }
        }
        None
    }
}

/// The programs, attached, and their maps.
pub struct PortFailureCounter {
    // Detaches when dropped.
    _program: LoadedProgram,
    maps: FailureMaps,
    names: NameMap,
    /// The namespaces the programs record, by inode.
    sampled: HashMap<MapData, u32, u32>,
    /// What `sampled` holds, as last written.
    admitted: HashSet<u32>,
    /// How many namespaces `sampled` has room for.
    sampled_capacity: u32,
}

/// How many connections the map of names holds for a range of `ports`:
/// twice the range, so that each port's newest connections to two
/// destinations fit.
pub const fn names_capacity(ports: u32) -> u32 {
    let twice = ports.saturating_mul(2);
    if twice < 1024 {
        1024
    } else if twice > 1 << 17 {
        1 << 17
    } else {
        twice
    }
}

/// What the failure counter counts besides TCP connect() failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counting {
    /// bind() to port 0 and UDP failures, at the cost of a program run at
    /// the exit of every system call on the host.
    pub autobind: bool,
    /// Connects, and who connected each connection, for its TIME_WAIT.
    pub connects: bool,
}

/// The maps only connects use, made with one entry where connects are not
/// counted: together several MiB for the default range. (The notes that
/// spill out of `portstat_notes` go to socket-local storage, which takes
/// no memory but the sockets' own.)
const CONNECT_MAPS: [&str; 3] = ["portstat_notes", "portstat_conns", "portstat_ctots"];

impl PortFailureCounter {
    /// Loads the programs and attaches them: from now on the TCP connect()
    /// failures of the namespaces given to `sample_namespaces` (at most
    /// `namespaces` of them) are counted, and what `counting` asks for.
    /// Connections are named in a map of `names_capacity` entries.
    pub fn load(
        counting: Counting,
        names_capacity: u32,
        namespaces: u32,
    ) -> Result<PortFailureCounter, BpfError> {
        let namespaces = namespaces.max(1);
        let Counting { autobind, connects } = counting;
        let connect = (
            if connects {
                CONNECTS_PROGRAM
            } else {
                CONNECT_PROGRAM
            },
            AttachPoint::RawTracepoint(CONNECT_TRACEPOINT),
        );
        let mut sizes: Vec<(&str, u32)> = if connects {
            vec![(NAMES_MAP, names_capacity)]
        } else {
            CONNECT_MAPS
                .iter()
                .chain([&NAMES_MAP])
                .map(|&map| (map, 1))
                .collect()
        };
        sizes.push((NETS_MAP, namespaces));
        let autobind_program = (
            AUTOBIND_PROGRAM,
            AttachPoint::RawTracepoint(AUTOBIND_TRACEPOINT),
        );
        let programs = if autobind {
            &[connect, autobind_program][..]
        } else {
            &[connect][..]
        };
        let mut program = LoadedProgram::load_sized(PORT_FAILURES_OBJECT, programs, &sizes)
            .map_err(|error| unavailable(error.stage, error.reason))?;
        let mut take = |name: &str| {
            program
                .take_map(name)
                .ok_or_else(|| unavailable("maps", format!("the object has no {name} map")))
        };
        let maps = FailureMaps::new([
            take(MAP_NAMES[0])?,
            take(MAP_NAMES[1])?,
            take(MAP_NAMES[2])?,
            take(MAP_NAMES[3])?,
            take(MAP_NAMES[4])?,
            take(MAP_NAMES[5])?,
        ])?;
        let names_data = take(NAMES_MAP)?;
        // A second descriptor of the map, for the reads' look-ups.
        let lookups = names_data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|error| unavailable("maps", error))
            .and_then(|fd| MapData::from_fd(fd).map_err(|error| unavailable("maps", error)))
            .and_then(|data| {
                HashMap::try_from(Map::LruHashMap(data)).map_err(|error| unavailable("maps", error))
            })?;
        let names =
            BatchedHash::new(names_data, true).map_err(|error| unavailable("maps", error))?;
        let sampled = HashMap::try_from(Map::HashMap(take(NETS_MAP)?))
            .map_err(|error| unavailable("maps", error))?;
        Ok(PortFailureCounter {
            _program: program,
            maps,
            sampled,
            admitted: HashSet::new(),
            sampled_capacity: namespaces,
            names: NameMap {
                map: names,
                lookups: Arc::new(NameLookups {
                    map: lookups,
                    found: Mutex::new(HashSet::new()),
                }),
                pruned: 0,
                evicted: 0,
                cookies: StdHashMap::new(),
                missed: HashSet::new(),
            },
        })
    }

    /// Every entry so far, of every namespace.
    pub fn read(&self) -> Result<RawCounts, BpfError> {
        self.maps.read()
    }

    /// Makes the namespaces of `inodes` the ones the programs record, from
    /// now on: those not among them are recorded no more (their entries
    /// stay until `forget`), and those new are recorded from now. Past the
    /// room made at load, the first ones are kept.
    pub fn sample_namespaces(&mut self, inodes: &[u64]) -> Result<(), BpfError> {
        let wanted: HashSet<u32> = inodes
            .iter()
            .filter_map(|&inode| u32::try_from(inode).ok())
            .take(self.sampled_capacity as usize)
            .collect();
        if wanted == self.admitted {
            return Ok(());
        }
        let write_error = |error: aya::maps::MapError| {
            BpfError::Read(std::io::Error::other(format!("{NETS_MAP}: {error}")))
        };
        for gone in self.admitted.difference(&wanted) {
            match self.sampled.remove(gone) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(error) => return Err(write_error(error)),
            }
        }
        self.admitted.retain(|inode| wanted.contains(inode));
        for &new in wanted.difference(&self.admitted.clone()) {
            self.sampled.insert(new, 1, 0).map_err(write_error)?;
            self.admitted.insert(new);
        }
        Ok(())
    }

    /// Removes every entry of the namespaces `gone` (by inode) and `stale`
    /// (by inode and cookie), so that the room they held in the maps goes
    /// to the namespaces still there, and a namespace given one of their
    /// inodes finds none of their counts.
    pub fn forget(&mut self, gone: &[u64], stale: &[(u32, u64)]) -> Result<(), BpfError> {
        let is_gone = |netns: u32, cookie: u64| {
            gone.contains(&u64::from(netns)) || stale.contains(&(netns, cookie))
        };
        let failure_gone = |key: &FailureKeyBytes| {
            let key = FailureKey::decode(key);
            is_gone(key.netns, key.cookie)
        };
        let total_gone = |key: &TotalKeyBytes| {
            let key = TotalKey::decode(key);
            is_gone(key.netns, key.cookie)
        };
        remove_keys(&mut self.maps.failures, failure_gone)?;
        remove_keys(&mut self.maps.connects, failure_gone)?;
        remove_keys(&mut self.maps.totals, total_gone)?;
        remove_keys(&mut self.maps.attempts, total_gone)?;
        remove_keys(&mut self.maps.connect_totals, total_gone)
    }

    /// The map of names for the sample about to be read: nothing is read
    /// here; the reads ask it one connection at a time (`Names::namer`).
    pub fn names(&mut self) -> Names {
        self.names
            .lookups
            .found
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        Names {
            lookups: self.names.lookups.clone(),
            cookies: self.names.cookies.clone(),
        }
    }

    /// After a sample that succeeded, goes through the map's keys once:
    /// removes the names of namespaces `live` shows gone, and the names no
    /// socket of the sample asked for where the sample before missed them
    /// too (their connection is gone: the room goes to new connections, so
    /// that the map evicts a name only when the connections still there
    /// outgrow it); counts, from the names recorded, those present and
    /// those removed, how many the map evicted.
    ///
    /// A name missed once is kept: a walk without locks (the one walk of
    /// the host's tables) can miss a socket that moves in its chain
    /// meanwhile, as one turning TIME_WAIT does, and a name removed for
    /// that would leave the socket `none` for its 60 s.
    pub fn sweep_names(&mut self, live: &mut dyn LiveCookies) -> Result<(), BpfError> {
        let recorded = self.maps.lost(NAMES_RECORDED)?;
        let found = std::mem::take(
            &mut *self
                .names
                .lookups
                .found
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut staleness = Staleness {
            live,
            asked: StdHashMap::new(),
            stale: Vec::new(),
        };
        let mut present = 0u64;
        let mut stale = Vec::new();
        let mut unfound = Vec::new();
        self.names.cookies.clear();
        let cookies = &mut self.names.cookies;
        self.names
            .map
            .for_each(|bytes, _| {
                present += 1;
                let key = &NameKey::decode(bytes);
                if staleness.is_stale(key.netns, key.cookie) {
                    stale.push(*bytes);
                    return;
                }
                let cookies = cookies.entry(u64::from(key.netns)).or_default();
                if !cookies.contains(&key.cookie) {
                    cookies.push(key.cookie);
                }
                let print = fingerprint(key);
                if !found.contains(&print) {
                    unfound.push((print, *bytes));
                }
            })
            .map_err(read_error)?;
        let (due, missed) = missed_twice(&self.names.missed, unfound.into_iter());
        self.names.missed = missed;
        // Names recorded after `recorded` was read may be among those
        // present: then the count is low, and the next sample's makes up.
        let evicted = recorded.saturating_sub(present + self.names.pruned);
        self.names.evicted = self.names.evicted.max(evicted);
        for key in stale.iter().chain(&due) {
            if self.names.map.map.remove(key).is_ok() {
                self.names.pruned += 1;
            }
        }
        Ok(())
    }

    /// Runs of the programs the kernel skipped because one was already
    /// running on that CPU: each may have been a connect, a failure or a
    /// close that nothing counted.
    pub fn runs_missed(&self) -> Result<u64, BpfError> {
        self._program.recursion_misses().map_err(BpfError::Read)
    }

    /// Names the map evicted while their connection was still there: every
    /// one recorded that is neither in the map nor removed by `prune`.
    pub fn names_evicted(&self) -> u64 {
        self.names.evicted
    }
}

/// Of the names a sample missed (`now`, each with its fingerprint), those
/// the sample before missed too (`before`), to remove; and the
/// fingerprints of the others, to weigh at the next sample.
fn missed_twice<K>(
    before: &HashSet<u64>,
    now: impl Iterator<Item = (u64, K)>,
) -> (Vec<K>, HashSet<u64>) {
    let mut due = Vec::new();
    let mut missed = HashSet::new();
    for (print, key) in now {
        if before.contains(&print) {
            due.push(key);
        } else {
            missed.insert(print);
        }
    }
    (due, missed)
}

/// Removes the keys of `map` that `remove` picks.
fn remove_keys<K: aya::Pod, V: aya::Pod>(
    map: &mut BatchedHash<K, V>,
    remove: impl Fn(&K) -> bool,
) -> Result<(), BpfError> {
    let mut keys: Vec<K> = Vec::new();
    map.for_each(|key, _| {
        if remove(key) {
            keys.push(*key);
        }
    })
    .map_err(read_error)?;
    for key in &keys {
        map.map.remove(key).map_err(read_error)?;
    }
    Ok(())
}

fn read_error(error: aya::maps::MapError) -> BpfError {
    BpfError::Read(std::io::Error::other(error.to_string()))
}

#[cfg(test)]
mod tests;

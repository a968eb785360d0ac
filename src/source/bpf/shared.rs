//! One walk of the host's TCP tables for every namespace that shares them
//! (`shared_tables.bpf.c`): each socket tagged with its namespace, so that
//! sampling a node's pods costs one walk of the table they share rather
//! than one walk each.
//!
//! `SharedTables::walk` is read in the namespace whose table is to be
//! walked; `SharedTables::on_host_table` says whether the calling thread's
//! namespace is on the host's table, for namespaces whose
//! `tcp_ehash_entries` does not say (the host's own namespace shows a
//! positive count, as one with a table of its own does).

use std::collections::HashSet;
use std::io::Read;

use aya::maps::{Array, HashMap, Map, MapData, RingBuf};

use super::{BpfError, InodeReading, loader, monotonic_ms, unavailable};
use portstat_core::model::{PortRange, SocketRecord};
use portstat_core::parse::bpf::sockets::{
    MARKER_PART, MARKER_TRAILER, Marker, NamespaceEntry, TRAILER_WALKED,
};
use portstat_core::parse::bpf::{marker, namespace_entry};

/// The compiled program, built from `shared_tables.bpf.c` by `build.sh`.
pub const SHARED_TABLES_OBJECT: &[u8] = include_bytes!("shared_tables.bpf.o");

/// The program's name in the object.
pub(super) const PROGRAM: &str = "walk_tables";

/// Where `settings` holds the next part to walk.
const NEXT_PART: u32 = 4;

/// More parts than any table has (a part is 4,096 slots): a walk that
/// does not end by then is not trusted.
const PARTS_MAX: u32 = 1 << 16;

/// A part's flags: walked to its end; the ring was full; the kernel lacks
/// what the walk reads; a layout the walk does not read; a socket could
/// not be read; the calling thread's namespace has a table of its own; the
/// probe's answer that it has not.
const PART_WALKED: u8 = 1;
const PART_UNSUPPORTED: u8 = 4;
const PART_NOT_SHARED: u8 = 32;
const PART_SHARED: u8 = 64;
/// In a probe's marker: the walk can read UDP sockets (Linux 6.2+).
const PART_READS_UDP: u8 = 128;

/// Settings beside those of `tcp_ports.bpf.c` (`super::SETTING_*`).
const SETTING_PROBE: u32 = 8;
const SETTING_READ_UDP: u32 = 16;

/// A namespace a walk reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedNamespace {
    /// The inode of its namespace file.
    pub inode: u32,
    /// Its ephemeral range: its TCP sockets outside it are left out, but
    /// for listeners.
    pub range: PortRange,
    /// Whether its UDP sockets are read too.
    pub udp: bool,
}

/// What the probe of a namespace found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Whether the namespace keeps its TCP sockets in the host's tables.
    pub on_host_table: bool,
    /// Whether the kernel names each namespace's UDP table (Linux 6.2+),
    /// so that the walk can read the host's.
    pub reads_udp: bool,
}

/// How a walk went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkOutcome {
    /// Whether every part of the connection and listening tables was
    /// walked to its end, with every socket found handed over. Where not,
    /// what was handed over is incomplete.
    pub complete: bool,
    /// Whether the walk of the bind hash for sockets bound but neither
    /// listening nor connected was asked for and complete.
    pub bound_inactive_walked: bool,
}

/// The walk's program, loaded, with its maps.
pub struct Loaded {
    program: loader::LoadedProgram,
    settings: Array<MapData, u32>,
    namespaces: HashMap<MapData, u32, [u8; namespace_entry::SIZE]>,
    ring: RingBuf<MapData>,
    /// The namespaces now in `namespaces`.
    listed: HashSet<u32>,
}

/// The shared-table walk, loaded at first use.
#[derive(Default)]
pub struct SharedTables {
    loaded: Option<Loaded>,
    /// Whether the walk can read UDP here, once a probe has said.
    reads_udp: Option<bool>,
}

impl SharedTables {
    /// A walk not loaded yet.
    pub fn new() -> SharedTables {
        SharedTables::default()
    }

    /// Loads the program where it is not loaded yet: proves that the walk
    /// can run here.
    pub fn load_once(&mut self) -> Result<(), BpfError> {
        self.loaded_program().map(|_| ())
    }

    /// Uses `loaded`, loaded elsewhere (`background::ProgramLoad`), from
    /// now on.
    pub fn install(&mut self, loaded: Loaded) {
        self.loaded = Some(loaded);
    }

    fn loaded_program(&mut self) -> Result<&mut Loaded, BpfError> {
        match &mut self.loaded {
            Some(loaded) => Ok(loaded),
            slot => Ok(slot.insert(load()?)),
        }
    }

    /// Whether the calling thread's namespace keeps its TCP sockets in the
    /// host's tables, which this walk reads, and whether the walk can read
    /// UDP. Runs the program on its first part only, walking nothing.
    pub fn probe(&mut self) -> Result<Probe, BpfError> {
        let loaded = self.loaded_program()?;
        set(&mut loaded.settings, 1, SETTING_PROBE)?;
        let Marker { kind, flags, .. } = read_marker(&loaded.program)?;
        // A namespace with tables of its own is an answer here, not an error.
        unsupported(if kind == MARKER_PART {
            flags & !PART_NOT_SHARED
        } else {
            PART_UNSUPPORTED
        })?;
        let probe = Probe {
            on_host_table: flags & PART_SHARED != 0 && flags & PART_NOT_SHARED == 0,
            reads_udp: flags & PART_READS_UDP != 0,
        };
        self.reads_udp = Some(probe.reads_udp);
        Ok(probe)
    }

    /// Whether the walk can read UDP sockets on this kernel (Linux 6.2+),
    /// from the first probe.
    pub fn reads_udp(&mut self) -> Result<bool, BpfError> {
        match self.reads_udp {
            Some(reads) => Ok(reads),
            None => self.probe().map(|probe| probe.reads_udp),
        }
    }

    /// Walks the calling thread's namespace's TCP tables once, handing
    /// `each` every socket of the `namespaces` (by the inode of their
    /// namespace file) with the namespace's inode: listeners on any port,
    /// other sockets within the namespace's range, and with
    /// `bound_inactive` the sockets bound but neither listening nor
    /// connected. Inodes are read as `inodes` says. Fails as unavailable
    /// where the calling thread's namespace has a table of its own.
    ///
    /// With `read_udp`, the calling thread's namespace's UDP table is
    /// walked too, for the namespaces whose UDP sockets are asked for: it
    /// must be the host's, which they share.
    pub fn walk(
        &mut self,
        namespaces: &[SharedNamespace],
        read_udp: bool,
        inodes: InodeReading,
        bound_inactive: bool,
        each: &mut dyn FnMut(u32, &SocketRecord),
    ) -> Result<WalkOutcome, BpfError> {
        let loaded = self.loaded_program()?;
        loaded.list(namespaces)?;
        let (inode_setting, port) = inodes.settings();
        let walk = if bound_inactive {
            super::SETTING_WALK_BIND_HASH
        } else {
            0
        };
        let udp = if read_udp { SETTING_READ_UDP } else { 0 };
        set(&mut loaded.settings, 1, walk | inode_setting | udp)?;
        set(&mut loaded.settings, 2, u32::from(port))?;
        set(&mut loaded.settings, NEXT_PART, 0)?;
        let now_ms = monotonic_ms();
        let mut complete = true;
        let mut failure = None;
        // One iterator a part, until the trailer.
        let trailer = loop {
            let marker = read_marker(&loaded.program);
            // What the part found, whether or not it read well.
            drain(&mut loaded.ring, now_ms, each, &mut failure);
            let Marker { kind, flags, index } = marker?;
            if let Some(failure) = failure {
                return Err(failure);
            }
            match kind {
                MARKER_PART => {
                    unsupported(flags)?;
                    complete &= flags == PART_WALKED;
                    if index >= PARTS_MAX {
                        return Err(BpfError::Malformed(format!(
                            "the walk did not end after {PARTS_MAX} parts"
                        )));
                    }
                }
                MARKER_TRAILER => break flags,
                kind => return Err(BpfError::Malformed(format!("marker kind {kind}"))),
            }
        };
        Ok(WalkOutcome {
            complete,
            bound_inactive_walked: bound_inactive && trailer == TRAILER_WALKED,
        })
    }
}

/// Runs the program once with a new iterator, and returns what it wrote:
/// one marker.
fn read_marker(program: &loader::LoadedProgram) -> Result<Marker, BpfError> {
    let mut iterator = program
        .open()
        .map_err(|error| unavailable("iterator", error))?;
    let mut marker = [0u8; marker::SIZE];
    iterator.read_exact(&mut marker).map_err(BpfError::Read)?;
    Ok(Marker::decode(&marker))
}

/// Fails as unavailable where a part's `flags` say the walk cannot run in
/// the calling thread's namespace.
fn unsupported(flags: u8) -> Result<(), BpfError> {
    if flags & PART_UNSUPPORTED != 0 {
        return Err(unavailable(
            "shared tables",
            "this kernel does not name each namespace's TCP tables (Linux 6.1+)",
        ));
    }
    if flags & PART_NOT_SHARED != 0 {
        return Err(unavailable(
            "shared tables",
            "the namespace walked from has TCP tables of its own",
        ));
    }
    Ok(())
}

impl Loaded {
    /// Makes `namespaces` hold exactly these namespaces, as
    /// `struct namespace_entry`: the range, first port in the low 16 bits,
    /// then whether to read UDP.
    fn list(&mut self, namespaces: &[SharedNamespace]) -> Result<(), BpfError> {
        let wanted: HashSet<u32> = namespaces.iter().map(|namespace| namespace.inode).collect();
        for gone in self.listed.difference(&wanted) {
            // A key already gone is no error.
            let _ = self.namespaces.remove(gone);
        }
        self.listed.clear();
        for namespace in namespaces {
            let entry = NamespaceEntry {
                range: namespace.range,
                udp: namespace.udp,
            }
            .encode();
            self.namespaces
                .insert(namespace.inode, entry, 0)
                .map_err(|error| unavailable("namespaces", error))?;
            self.listed.insert(namespace.inode);
        }
        Ok(())
    }
}

/// Hands over every record in the ring; the first malformed one is kept in
/// `failure`, and the ring is drained all the same.
fn drain(
    ring: &mut RingBuf<MapData>,
    now_ms: u64,
    each: &mut dyn FnMut(u32, &SocketRecord),
    failure: &mut Option<BpfError>,
) {
    while let Some(item) = ring.next() {
        if failure.is_some() {
            continue;
        }
        if let Err(error) = super::parse_tagged_records(&item, now_ms, each) {
            *failure = Some(error.into());
        }
    }
}

fn set(settings: &mut Array<MapData, u32>, index: u32, value: u32) -> Result<(), BpfError> {
    settings
        .set(index, value, 0)
        .map_err(|error| unavailable("settings", error))
}

/// Loads the walk's program and its maps.
pub fn load() -> Result<Loaded, BpfError> {
    let mut program = loader::LoadedProgram::load(
        SHARED_TABLES_OBJECT,
        &[(PROGRAM, loader::AttachPoint::Iterator("bpf_map"))],
    )
    .map_err(|error| unavailable(error.stage, error.reason))?;
    let mut take = |name: &'static str| {
        program
            .take_map(name)
            .ok_or_else(|| unavailable("maps", format!("the object has no {name} map")))
    };
    let settings = Array::try_from(Map::Array(take("settings")?))
        .map_err(|error| unavailable("settings", error))?;
    let namespaces = HashMap::try_from(Map::HashMap(take("namespaces")?))
        .map_err(|error| unavailable("namespaces", error))?;
    let ring = RingBuf::try_from(Map::RingBuf(take("bound")?))
        .map_err(|error| unavailable("ring buffer", error))?;
    Ok(Loaded {
        program,
        settings,
        namespaces,
        ring,
        listed: HashSet::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_object_is_a_bpf_elf() {
        assert_eq!(&SHARED_TABLES_OBJECT[..4], b"\x7fELF");
        assert_eq!(
            u16::from_le_bytes([SHARED_TABLES_OBJECT[18], SHARED_TABLES_OBJECT[19]]),
            247
        );
    }
}

//! The BPF source for TCP: an `iter/tcp` program (`bpf/tcp_ports.bpf.c`)
//! that reports, for every TCP socket of the namespace that opens it, what
//! sock_diag cannot: whether `bind()` made its port's bind bucket, and for
//! TIME_WAIT when it began and whether it carried timestamps.
//!
//! The program walks the listening and connection tables. Sockets bound but
//! neither listening nor connected are in neither: after the last socket
//! the program walks the bind hash for them (Linux 6.8+) and writes them to
//! a ring buffer. Where that walk cannot run or is incomplete, they come
//! from a netlink dump of `TCP_BOUND_INACTIVE` instead, which walks every
//! socket of the namespace twice more.
//!
//! The compiled object is committed next to its source and embedded here,
//! so building needs no clang; `bpf/build.sh --check` keeps the two in step.
//! Loading needs kernel BTF and `CAP_BPF` with `CAP_PERFMON` (or
//! `CAP_SYS_ADMIN`). Whatever stops it, the reader falls back to netlink.
//!
//! Record parsing is a pure function over bytes; only `BpfSockets` touches
//! the kernel.

pub mod background;
pub mod batch;
pub mod btf;
mod clock;
pub mod failures;
mod loader;
pub mod owners;
pub mod shared;

use clock::monotonic_ms;
use portstat_core::parse::bpf::sockets::TRAILER_WALKED;
pub use portstat_core::parse::bpf::sockets::{parse_records, parse_tagged_records};
use portstat_core::parse::bpf::{RecordError, record};

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, RingBuf};

use crate::source::netlink::{NetlinkError, NetlinkSockets};
use portstat_core::model::{PortRange, SocketSink};

/// The compiled program, built from `bpf/tcp_ports.bpf.c` by `bpf/build.sh`.
pub const TCP_PORTS_OBJECT: &[u8] = include_bytes!("bpf/tcp_ports.bpf.o");

/// Where the kernel keeps its BTF, which CO-RE relocates the program against.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The helper number a CO-RE loader writes in place of an access it could
/// not relocate (0xbad2310), so that the verifier stops there.
const POISONED_RELOCATION: u32 = 0x0bad_2310;

/// The program's name in the object.
const PROGRAM: &str = "dump_tcp";

/// `SETTING_WALK_BIND_HASH`: walk the bind hash for bound sockets.
const SETTING_WALK_BIND_HASH: u32 = 1;
/// `SETTING_READ_INODES`: read each socket's inode, for its owner.
const SETTING_READ_INODES: u32 = 2;
/// `SETTING_MARK_FILES`: mark sockets a file holds, reading the inodes of
/// listeners and of the kept port's sockets only.
const SETTING_MARK_FILES: u32 = 4;

/// Which inodes the program reads: each costs two cache misses a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InodeReading {
    /// None: no owner is looked for; every inode is 0.
    None,
    /// Every socket's, for owners found by inode.
    All,
    /// Those of listeners and of sockets on `port`, if any; the others
    /// are only marked as held by a file (`INODE_NOT_READ`), for owners
    /// counted from the owners program's records.
    Listeners { port: Option<u16> },
}

impl InodeReading {
    /// The program's `SETTING_*` flag for these inodes, and the port whose
    /// sockets' inodes are always read (0: none).
    fn settings(self) -> (u32, u16) {
        match self {
            InodeReading::None => (0, 0),
            InodeReading::All => (SETTING_READ_INODES, 0),
            InodeReading::Listeners { port } => (SETTING_MARK_FILES, port.unwrap_or(0)),
        }
    }
}

/// The ring buffer of bound-but-inactive sockets, `bound` in the C source.
const BOUND_RING: &str = "bound";

/// Why the BPF source could not read.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The program cannot run here: no BTF, a kernel without what it reads,
    /// no capability, or the verifier refused it. Readers fall back.
    #[error("BPF {stage}: {reason}")]
    Unavailable {
        /// What was being done.
        stage: &'static str,
        /// What went wrong, shortened to its last lines for a verifier log.
        reason: String,
    },
    /// Reading the iterator failed.
    #[error("reading the BPF iterator: {0}")]
    Read(io::Error),
    /// The iterator wrote something that is not whole records.
    #[error("malformed BPF record stream: {0}")]
    Malformed(String),
    /// A record is not one the program writes.
    #[error("malformed BPF record: {0}")]
    Record(#[from] RecordError),
    /// The netlink dump of bound-but-inactive sockets failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

impl BpfError {
    /// Whether the error means that this source cannot serve here, so that
    /// another should be used.
    pub fn is_unsupported(&self) -> bool {
        match self {
            BpfError::Unavailable { .. } => true,
            BpfError::Netlink(error) => super::netlink::Unsupported::is_unsupported(error),
            BpfError::Read(_) | BpfError::Malformed(_) | BpfError::Record(_) => false,
        }
    }
}

fn unavailable(stage: &'static str, error: impl std::fmt::Display) -> BpfError {
    // A verifier log runs to hundreds of lines; its end says why.
    let text = error.to_string();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let reason = if lines.len() > 6 {
        format!("{} ... {}", lines[0], lines[lines.len() - 5..].join(" | "))
    } else {
        lines.join(" | ")
    };
    BpfError::Unavailable { stage, reason }
}

pub use loader::{AttachPoint, LoadedProgram, VerifierCost};

/// An object the exporter loads: its name, its bytes, and its programs with
/// where each attaches.
pub type ObjectToLoad = (
    &'static str,
    &'static [u8],
    &'static [(&'static str, AttachPoint<'static>)],
);

/// Every object the exporter can load.
pub const OBJECTS: [ObjectToLoad; 4] = [
    (
        "tcp_ports",
        TCP_PORTS_OBJECT,
        &[(PROGRAM, AttachPoint::Iterator("tcp"))],
    ),
    (
        "shared_tables",
        shared::SHARED_TABLES_OBJECT,
        &[(shared::PROGRAM, AttachPoint::Iterator("bpf_map"))],
    ),
    (
        "socket_owners",
        owners::SOCKET_OWNERS_OBJECT,
        &[(owners::PROGRAM, AttachPoint::Iterator("task_file"))],
    ),
    (
        "port_failures",
        failures::PORT_FAILURES_OBJECT,
        &[
            (
                failures::CONNECT_PROGRAM,
                AttachPoint::RawTracepoint(failures::CONNECT_TRACEPOINT),
            ),
            (
                failures::CONNECTS_PROGRAM,
                AttachPoint::RawTracepoint(failures::CONNECT_TRACEPOINT),
            ),
            (
                failures::AUTOBIND_PROGRAM,
                AttachPoint::RawTracepoint(failures::AUTOBIND_TRACEPOINT),
            ),
        ],
    ),
];

/// Copies out of one read of the kernel's BTF what every object the
/// exporter can load needs, before any is loaded: the loads that follow
/// then never hold the whole BTF beside the maps of those before, and the
/// exporter's peak memory (its cgroup's charge, the maps included) is one
/// read of it. Where the BTF cannot be read, each load says why.
pub fn prepare_kernel_types() {
    let objects: Vec<loader::ObjectPrograms<'_>> = OBJECTS
        .iter()
        .map(|&(_, object, programs)| (object, programs))
        .collect();
    if let Err(error) = loader::read_kernel_btf().and_then(|btf| loader::prepare(&objects, btf)) {
        tracing::debug!(stage = error.stage, reason = %error.reason, "kernel types not prepared");
    }
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What verifying every program the exporter can load costs on this
/// kernel, by object: each object loaded whole (its programs, maps and
/// links) and dropped at once. A refusal gives the verifier's reason.
pub fn verify_every_program() -> Vec<(&'static str, Result<Vec<VerifierCost>, BpfError>)> {
    OBJECTS
        .into_iter()
        .map(|(name, object, programs)| {
            let costs = loader::LoadedProgram::load(object, programs)
                .map_err(|error| unavailable(error.stage, error.reason))
                .map(|loaded| loaded.costs().to_vec());
            (name, costs)
        })
        .collect()
}

/// The loaded program, kept across samples and namespaces: an iterator
/// reads the namespace of the thread that creates it.
pub struct Loaded {
    program: loader::LoadedProgram,
    /// The program's settings: the range, and what to read.
    settings: Array<MapData, u32>,
    /// Where the program writes the bound-but-inactive sockets it finds.
    bound: RingBuf<MapData>,
}

/// Reads TCP sockets with the BPF program, loading it at first use.
pub struct BpfSockets {
    /// An object to load instead of the embedded one.
    object: Option<PathBuf>,
    /// Which sockets' inodes are read.
    inodes: InodeReading,
    loaded: Option<Loaded>,
    /// The iterator's output, reused.
    buffer: Vec<u8>,
}

impl BpfSockets {
    /// A source that loads `object`, or the embedded program when `None`,
    /// reading the inodes `inodes` says.
    pub fn new(object: Option<PathBuf>, inodes: InodeReading) -> BpfSockets {
        BpfSockets {
            object,
            inodes,
            loaded: None,
            buffer: Vec::new(),
        }
    }

    /// Reads the inodes `inodes` says from the next pass on.
    pub fn set_inode_reading(&mut self, inodes: InodeReading) {
        self.inodes = inodes;
    }

    /// Appends every TCP socket the exporter needs: listeners anywhere,
    /// every other socket whose local port is inside `range`, with bindings
    /// and TIME_WAIT detail; bound-but-inactive sockets come from `netlink`.
    ///
    /// `bound_inactive`: whether to look for sockets bound but neither
    /// listening nor connected (see `census`). Returns whether the
    /// program's walk found them; where it did not run or was incomplete,
    /// they come from netlink, which reports them from Linux 6.5 on.
    pub fn read_sockets(
        &mut self,
        range: PortRange,
        bound_inactive: bool,
        netlink: &mut NetlinkSockets,
        sink: &mut dyn SocketSink,
    ) -> Result<bool, BpfError> {
        let walked = self.read_iterator(range, bound_inactive, sink)?;
        if bound_inactive && !walked {
            netlink.read_bound_inactive(range, sink)?;
        }
        Ok(walked)
    }

    /// The object loaded instead of the embedded one, if any.
    pub fn object(&self) -> Option<&Path> {
        self.object.as_deref()
    }

    /// Uses `loaded`, loaded elsewhere (`background::ProgramLoad`), from
    /// now on.
    pub fn install(&mut self, loaded: Loaded) {
        self.loaded = Some(loaded);
    }

    /// Loads the program where it is not loaded yet: proves that this source
    /// can run here without reading.
    pub fn load_once(&mut self) -> Result<(), BpfError> {
        if self.loaded.is_none() {
            self.loaded = Some(load(self.object.as_deref())?);
        }
        Ok(())
    }

    /// Reads the iterator a chunk at a time, then the ring buffer of
    /// bound-but-inactive sockets; returns whether the program's walk for
    /// those was complete.
    fn read_iterator(
        &mut self,
        range: PortRange,
        bound_inactive: bool,
        sink: &mut dyn SocketSink,
    ) -> Result<bool, BpfError> {
        self.load_once()?;
        let Some(loaded) = self.loaded.as_mut() else {
            unreachable!("loaded just above");
        };
        let walk = if bound_inactive {
            SETTING_WALK_BIND_HASH
        } else {
            0
        };
        let (inodes, port) = self.inodes.settings();
        loaded
            .settings
            .set(0, u32::from(range.start) | (u32::from(range.end) << 16), 0)
            .and_then(|()| loaded.settings.set(1, walk | inodes, 0))
            .and_then(|()| loaded.settings.set(2, u32::from(port), 0))
            .map_err(|error| unavailable("settings", error))?;
        // The iterator is created here, in this thread's namespace.
        let mut iterator = loaded
            .program
            .open()
            .map_err(|error| unavailable("iterator", error))?;
        let now_ms = monotonic_ms();
        let read = read_records(&mut iterator, &mut self.buffer, now_ms, sink);
        // The walk of the bind hash is used only when it was complete;
        // otherwise netlink reads those sockets. The ring is drained either
        // way, so that the next pass starts empty.
        let walked = matches!(read, Ok(Some(TRAILER_WALKED)));
        let mut ring = Ok(None);
        while let Some(item) = loaded.bound.next() {
            if walked && ring.is_ok() {
                ring = parse_records(&item, now_ms, sink).map_err(BpfError::from);
            }
        }
        read?;
        ring?;
        Ok(walked)
    }
}

/// Loads the TCP program from `object`, or the embedded one, with its maps.
pub fn load(object: Option<&Path>) -> Result<Loaded, BpfError> {
    let bytes = match object {
        Some(path) => std::fs::read(path)
            .map_err(|error| unavailable("object", format!("{}: {error}", path.display())))?,
        None => TCP_PORTS_OBJECT.to_vec(),
    };
    let mut program =
        loader::LoadedProgram::load(&bytes, &[(PROGRAM, loader::AttachPoint::Iterator("tcp"))])
            .map_err(|error| {
                // Where CO-RE could not relocate an access, the loader leaves
                // a call to this poison value, which the verifier then refuses.
                if error.stage == "verify"
                    && error.reason.contains(&POISONED_RELOCATION.to_string())
                {
                    unavailable(
                        "relocate",
                        format!(
                            "this kernel lacks a field or type the program reads \
                         (iter/tcp needs Linux 5.9+ with BTF): {}",
                            error.reason
                        ),
                    )
                } else {
                    unavailable(error.stage, error.reason)
                }
            })?;
    let settings = program
        .take_map("settings")
        .ok_or_else(|| unavailable("settings", "the object has no settings map"))?;
    let settings =
        Array::try_from(Map::Array(settings)).map_err(|error| unavailable("settings", error))?;
    let ring = program
        .take_map(BOUND_RING)
        .ok_or_else(|| unavailable("ring buffer", "the object has no bound ring buffer"))?;
    let bound =
        RingBuf::try_from(Map::RingBuf(ring)).map_err(|error| unavailable("ring buffer", error))?;
    Ok(Loaded {
        program,
        settings,
        bound,
    })
}

/// How much of the iterator's output is read at a time: whole records, so
/// that memory stays the same whatever the number of sockets, and about 16
/// KiB, so that each read() returns within a fraction of a millisecond: the
/// kernel runs the program without a preemption point until the buffer is
/// full, and a scrape waiting for the CPU waits that long.
const READ_CHUNK: usize = record::SIZE * 227;

/// Reads the iterator's output a chunk at a time into `buffer`, handing each
/// socket to `sink`; returns the flags of its trailer, as `parse_records`.
fn read_records(
    iterator: &mut impl Read,
    buffer: &mut Vec<u8>,
    now_ms: u64,
    sink: &mut dyn SocketSink,
) -> Result<Option<u8>, BpfError> {
    let mut trailer = None;
    read_whole_records(iterator, buffer, record::SIZE, READ_CHUNK, &mut |records| {
        if trailer.is_some() {
            return Err(BpfError::Malformed("records after the trailer".into()));
        }
        trailer = parse_records(records, now_ms, sink)?;
        Ok(())
    })?;
    Ok(trailer)
}

/// Reads an iterator to its end, `chunk` bytes at a time into `buffer`,
/// handing `each` the whole `record_length`-byte records of every read; a
/// record cut by a read is completed by the next. Output that ends inside a
/// record is an error.
///
/// A read that visits a million objects (`MAX_ITER_OBJECTS`) with nothing
/// written fails with EAGAIN: a million sockets in a row outside the range,
/// on a server holding that many accepted connections. The iterator keeps
/// its place, and the next read goes on from there.
fn read_whole_records(
    iterator: &mut impl Read,
    buffer: &mut Vec<u8>,
    record_length: usize,
    chunk: usize,
    each: &mut dyn FnMut(&[u8]) -> Result<(), BpfError>,
) -> Result<(), BpfError> {
    buffer.resize(chunk, 0);
    // Bytes of a record cut by the end of the last read.
    let mut carried = 0;
    loop {
        let read = match iterator.read(&mut buffer[carried..]) {
            Ok(read) => read,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) =>
            {
                continue;
            }
            Err(error) => return Err(BpfError::Read(error)),
        };
        if read == 0 {
            if carried != 0 {
                return Err(BpfError::Malformed(format!(
                    "the output ends in a {carried}-byte part of a {record_length}-byte record"
                )));
            }
            return Ok(());
        }
        let filled = carried + read;
        let whole = filled - filled % record_length;
        if whole > 0 {
            each(&buffer[..whole])?;
        }
        buffer.copy_within(whole..filled, 0);
        carried = filled - whole;
    }
}

#[cfg(test)]
mod tests;

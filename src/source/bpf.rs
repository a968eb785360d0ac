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
pub mod failures;
mod loader;
pub mod owners;
pub mod shared;

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, RingBuf};

use crate::source::netlink::{NetlinkError, NetlinkSockets};
use portstat_core::model::{
    INODE_NOT_READ, ListenQueue, PortBinding, PortRange, SocketRecord, SocketSink, SocketState,
    TcpState, TimeWait, UdpState,
};

/// The compiled program, built from `bpf/tcp_ports.bpf.c` by `bpf/build.sh`.
pub const TCP_PORTS_OBJECT: &[u8] = include_bytes!("bpf/tcp_ports.bpf.o");

/// The size of one record, `struct record` in the C source.
pub const RECORD_LENGTH: usize = 72;

/// Where the kernel keeps its BTF, which CO-RE relocates the program against.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The helper number a CO-RE loader writes in place of an access it could
/// not relocate (0xbad2310), so that the verifier stops there.
const POISONED_RELOCATION: u32 = 0x0bad_2310;

/// The program's name in the object.
const PROGRAM: &str = "dump_tcp";

/// `RECORD_HAS_BUCKET`: the socket had a bind bucket to read.
const HAS_BUCKET: u8 = 1;
/// `RECORD_HAS_ENTRY_STAMP`: `tw_entry_stamp` exists (Linux 6.13+).
const HAS_ENTRY_STAMP: u8 = 2;
/// `RECORD_HAS_FILE`: a file holds the socket, whose inode may be unread.
const HAS_FILE: u8 = 4;
/// `RECORD_UDP`: a UDP socket, from the walk of shared tables.
const UDP: u8 = 8;

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

/// `TRAILER_WALKED`: the walk of the bind hash reached its end.
const TRAILER_WALKED: u8 = 1;

/// `TCP_BOUND_INACTIVE`, the state the program gives the bound-but-inactive
/// sockets it finds in the bind hash.
const BOUND_INACTIVE: u8 = 13;

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
            BpfError::Read(_) | BpfError::Malformed(_) => false,
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
                ring = parse_records(&item, now_ms, sink);
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

/// `CLOCK_MONOTONIC` as the kernel reads it, in milliseconds: the clock of
/// `tcp_clock_ms()` that stamps TIME_WAIT entry. Inside a time namespace
/// (Linux 5.6) the exporter's own clock runs ahead or behind the kernel's
/// by the namespace's offset, which is taken back out.
fn monotonic_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` outlives the call; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let own_ns = i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec);
    let kernel_ns = own_ns - i128::from(*time_namespace_offset_ns());
    u64::try_from(kernel_ns / 1_000_000).unwrap_or(0)
}

/// The offset of the exporter's time namespace on `CLOCK_MONOTONIC`, in
/// nanoseconds: read once, as a process stays in its time namespace; 0
/// outside one, or where the kernel has none (before Linux 5.6).
fn time_namespace_offset_ns() -> &'static i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    OFFSET.get_or_init(|| {
        std::fs::read_to_string("/proc/self/timens_offsets")
            .ok()
            .and_then(|text| monotonic_offset_ns(&text))
            .unwrap_or(0)
    })
}

/// The `monotonic` offset of a `/proc/<pid>/timens_offsets` text, in
/// nanoseconds: lines of a clock's name (or number, 1 for
/// `CLOCK_MONOTONIC`), seconds and nanoseconds.
fn monotonic_offset_ns(text: &str) -> Option<i64> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let clock = fields.next()?;
        if clock != "monotonic" && clock != "1" {
            return None;
        }
        let seconds: i64 = fields.next()?.parse().ok()?;
        let nanoseconds: i64 = fields.next()?.parse().ok()?;
        seconds.checked_mul(1_000_000_000)?.checked_add(nanoseconds)
    })
}

/// How much of the iterator's output is read at a time: whole records, so
/// that memory stays the same whatever the number of sockets, and about 16
/// KiB, so that each read() returns within a fraction of a millisecond: the
/// kernel runs the program without a preemption point until the buffer is
/// full, and a scrape waiting for the CPU waits that long.
const READ_CHUNK: usize = RECORD_LENGTH * 227;

/// Reads the iterator's output a chunk at a time into `buffer`, handing each
/// socket to `sink`; returns the flags of its trailer, as `parse_records`.
fn read_records(
    iterator: &mut impl Read,
    buffer: &mut Vec<u8>,
    now_ms: u64,
    sink: &mut dyn SocketSink,
) -> Result<Option<u8>, BpfError> {
    let mut trailer = None;
    read_whole_records(
        iterator,
        buffer,
        RECORD_LENGTH,
        READ_CHUNK,
        &mut |records| {
            if trailer.is_some() {
                return Err(BpfError::Malformed("records after the trailer".into()));
            }
            trailer = parse_records(records, now_ms, sink)?;
            Ok(())
        },
    )?;
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

/// How long a TIME_WAIT socket has waited, in milliseconds, at `now_ms`
/// (`tcp_clock_ms()`): from its entry stamp where the kernel has one (Linux
/// 6.13+), else as the reuse rule before it counts, from the last timestamp
/// seen, in whole seconds.
fn time_wait_age_ms(
    has_entry_stamp: bool,
    now_ms: u64,
    entry_stamp: u32,
    recent_stamp: u32,
) -> u32 {
    // A stamp from after `now` (read before the walk), as the kernel's
    // 32-bit comparisons tell it, is age 0.
    if has_entry_stamp {
        // Both are tcp_clock_ms(), which wraps at 32 bits.
        let age = (now_ms as u32).wrapping_sub(entry_stamp);
        if age > i32::MAX as u32 { 0 } else { age }
    } else {
        // Before Linux 6.13 reuse was timed from the last timestamp
        // seen, in whole seconds of the same clock: `tcp_twsk_unique`
        // reuses once the second has changed (`now > stamp`), a second
        // after it at most. The age is counted to the end of the
        // second the stamp names, so that the rule's `age > 1000 ms`
        // holds exactly when the kernel's `now > stamp` does.
        // An older stamp than the milliseconds can hold (24.9 days)
        // stays the oldest they can: reusable, as the kernel has it
        // (`time_after32`).
        let seconds = ((now_ms / 1000) as u32).wrapping_sub(recent_stamp);
        if seconds > i32::MAX as u32 {
            0
        } else {
            seconds
                .saturating_mul(1000)
                .saturating_add(999)
                .min(i32::MAX as u32)
        }
    }
}

/// Parses records of the iterator's output into sockets, and returns the
/// flags of its trailer, the record of family 0 that ends a complete pass.
/// `now_ms` is `CLOCK_MONOTONIC` when the iterator was read, in milliseconds.
pub fn parse_records(
    bytes: &[u8],
    now_ms: u64,
    sink: &mut dyn SocketSink,
) -> Result<Option<u8>, BpfError> {
    if !bytes.len().is_multiple_of(RECORD_LENGTH) {
        return Err(BpfError::Malformed(format!(
            "{} bytes is not a whole number of {RECORD_LENGTH}-byte records",
            bytes.len()
        )));
    }
    let mut records = bytes.chunks_exact(RECORD_LENGTH).peekable();
    while let Some(record) = records.next() {
        if record[0] == 0 {
            if records.peek().is_some() {
                return Err(BpfError::Malformed("records after the trailer".into()));
            }
            return Ok(Some(record[2]));
        }
        sink.add(&parse_record(record, now_ms)?);
    }
    Ok(None)
}

/// Parses tagged records (`struct tagged_record`: a record, then the inode
/// of its socket's namespace), handing each socket to `each` with it.
pub fn parse_tagged_records(
    bytes: &[u8],
    now_ms: u64,
    each: &mut dyn FnMut(u32, &SocketRecord),
) -> Result<(), BpfError> {
    if !bytes.len().is_multiple_of(shared::TAGGED_RECORD_LENGTH) {
        return Err(BpfError::Malformed(format!(
            "{} bytes is not a whole number of {}-byte tagged records",
            bytes.len(),
            shared::TAGGED_RECORD_LENGTH
        )));
    }
    for tagged in bytes.chunks_exact(shared::TAGGED_RECORD_LENGTH) {
        let (record, tag) = tagged.split_at(RECORD_LENGTH);
        let netns = u32::from_ne_bytes([tag[0], tag[1], tag[2], tag[3]]);
        each(netns, &parse_record(record, now_ms)?);
    }
    Ok(())
}

/// Parses one `struct record`.
fn parse_record(record: &[u8], now_ms: u64) -> Result<SocketRecord, BpfError> {
    let u16_at = |offset: usize| u16::from_ne_bytes([record[offset], record[offset + 1]]);
    let u32_at = |offset: usize| {
        u32::from_ne_bytes([
            record[offset],
            record[offset + 1],
            record[offset + 2],
            record[offset + 3],
        ])
    };
    let family = i32::from(record[0]);
    let state_number = record[1];
    let flags = record[2];
    let (fastreuse, fastreuseport) = (record[4] as i8, record[5] as i8);
    let local_port = u16_at(6);
    let remote_port = u16_at(8);
    let bound_device = u32_at(12) as i32;
    let inode = match u64::from(u32_at(32)) | (u64::from(u32_at(36)) << 32) {
        0 if flags & HAS_FILE != 0 => INODE_NOT_READ,
        inode => inode,
    };
    let address = |offset: usize| -> Result<IpAddr, BpfError> {
        let bytes: [u8; 16] = record[offset..offset + 16]
            .try_into()
            .map_err(|_| BpfError::Malformed("short address".into()))?;
        match family {
            libc::AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            libc::AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(bytes))),
            other => Err(BpfError::Malformed(format!("address family {other}"))),
        }
    };
    let state = if flags & UDP != 0 {
        // As sock_diag reports them: TCP_ESTABLISHED is connected.
        SocketState::Udp(if state_number == 1 {
            UdpState::Connected
        } else {
            UdpState::Unconnected
        })
    } else if state_number == BOUND_INACTIVE {
        SocketState::Tcp(TcpState::BoundInactive)
    } else {
        SocketState::Tcp(
            TcpState::from_kernel(state_number)
                .ok_or_else(|| BpfError::Malformed(format!("unknown TCP state {state_number}")))?,
        )
    };
    let mut socket = SocketRecord::new(
        state,
        SocketAddr::new(address(40)?, local_port),
        SocketAddr::new(address(56)?, remote_port),
        inode,
    );
    socket.interface = u32::try_from(bound_device).unwrap_or(0);
    if flags & HAS_BUCKET != 0 {
        // `__inet_hash_connect` skips a port whose bucket has either field
        // at 0 or more: bind() set them; connect() sets both to -1.
        socket.binding = if fastreuse >= 0 || fastreuseport >= 0 {
            PortBinding::Bind
        } else {
            PortBinding::Connect
        };
    }
    if state == SocketState::Tcp(TcpState::Listen) {
        socket.listen_queue = Some(ListenQueue {
            waiting: u32_at(16),
            limit: u32_at(20),
        });
    }
    if state == SocketState::Tcp(TcpState::TimeWait) {
        let entry_stamp = u32_at(24);
        let recent_stamp = u32_at(28);
        let age_ms = time_wait_age_ms(
            flags & HAS_ENTRY_STAMP != 0,
            now_ms,
            entry_stamp,
            recent_stamp,
        );
        socket.time_wait = Some(TimeWait {
            age_ms,
            timestamps: Some(recent_stamp != 0),
            bound_device: Some(bound_device),
        });
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_namespace_s_monotonic_offset_is_read_in_nanoseconds() {
        let text = "monotonic      3600         0\nboottime          0         0\n";
        assert_eq!(monotonic_offset_ns(text), Some(3_600_000_000_000));
        assert_eq!(
            monotonic_offset_ns("1 -5 250\n7 0 0\n"),
            Some(-4_999_999_750)
        );
        assert_eq!(monotonic_offset_ns("boottime 10 0\n"), None);
        assert_eq!(monotonic_offset_ns(""), None);
    }

    /// A record as the program writes it.
    #[allow(clippy::too_many_arguments)]
    fn record(
        family: u8,
        state: u8,
        flags: u8,
        fastreuse: i8,
        local: (&[u8], u16),
        remote: (&[u8], u16),
        tw: (u32, u32),
        inode: u64,
    ) -> Vec<u8> {
        let mut bytes = vec![0u8; RECORD_LENGTH];
        bytes[0] = family;
        bytes[1] = state;
        bytes[2] = flags;
        bytes[4] = fastreuse as u8;
        bytes[5] = -1i8 as u8;
        bytes[6..8].copy_from_slice(&local.1.to_ne_bytes());
        bytes[8..10].copy_from_slice(&remote.1.to_ne_bytes());
        bytes[12..16].copy_from_slice(&1i32.to_ne_bytes());
        bytes[16..20].copy_from_slice(&3u32.to_ne_bytes());
        bytes[20..24].copy_from_slice(&128u32.to_ne_bytes());
        bytes[24..28].copy_from_slice(&tw.0.to_ne_bytes());
        bytes[28..32].copy_from_slice(&tw.1.to_ne_bytes());
        bytes[32..40].copy_from_slice(&inode.to_ne_bytes());
        bytes[40..40 + local.0.len()].copy_from_slice(local.0);
        bytes[56..56 + remote.0.len()].copy_from_slice(remote.0);
        bytes
    }

    #[test]
    fn records_carry_bindings_queues_and_time_wait() {
        let mut bytes = record(
            2,
            10,
            HAS_BUCKET,
            0,
            (&[0, 0, 0, 0], 8080),
            (&[0, 0, 0, 0], 0),
            (0, 0),
            77,
        );
        bytes.extend(record(
            2,
            1,
            HAS_BUCKET,
            1,
            (&[10, 0, 0, 1], 40001),
            (&[10, 0, 0, 9], 80),
            (0, 0),
            1 << 40,
        ));
        bytes.extend(record(
            2,
            1,
            HAS_BUCKET,
            -1,
            (&[10, 0, 0, 1], 40002),
            (&[10, 0, 0, 9], 80),
            (0, 0),
            5,
        ));
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        bytes.extend(record(
            10,
            6,
            HAS_BUCKET | HAS_ENTRY_STAMP,
            -1,
            (&v6, 40003),
            (&v6, 8080),
            (98_500, 7),
            0,
        ));
        // A request socket: no bucket read.
        bytes.extend(record(
            2,
            12,
            0,
            0,
            (&[127, 0, 0, 1], 8080),
            (&[127, 0, 0, 1], 40009),
            (0, 0),
            0,
        ));
        let mut sockets = Vec::new();
        parse_records(&bytes, 100_000, &mut sockets).unwrap();
        assert_eq!(sockets.len(), 5);
        let [listener, bound, shared, time_wait, request] = sockets.as_slice() else {
            panic!("five records");
        };
        assert_eq!(listener.state, SocketState::Tcp(TcpState::Listen));
        assert_eq!(listener.local, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(
            listener.listen_queue,
            Some(ListenQueue {
                waiting: 3,
                limit: 128
            })
        );
        assert_eq!(listener.inode, 77);
        assert_eq!(bound.binding, PortBinding::Bind);
        assert_eq!(bound.inode, 1 << 40);
        assert_eq!(bound.remote, "10.0.0.9:80".parse().unwrap());
        assert_eq!(shared.binding, PortBinding::Connect);
        assert_eq!(shared.listen_queue, None);
        assert_eq!(time_wait.local, "[::1]:40003".parse().unwrap());
        assert_eq!(
            time_wait.time_wait,
            Some(TimeWait {
                age_ms: 1500,
                timestamps: Some(true),
                bound_device: Some(1)
            })
        );
        assert_eq!(request.state, SocketState::Tcp(TcpState::SynRecv));
        assert_eq!(request.binding, PortBinding::Unseen);
    }

    #[test]
    fn time_wait_age_before_6_13_and_across_the_clock_wrap() {
        // No entry stamp: seconds since the last timestamp; none means none
        // were used.
        let at = |stamp: u32, now_ms: u64| {
            let record = record(
                2,
                6,
                HAS_BUCKET,
                -1,
                (&[1, 2, 3, 4], 40001),
                (&[5, 6, 7, 8], 80),
                (0, stamp),
                0,
            );
            let mut sockets = Vec::new();
            parse_records(&record, now_ms, &mut sockets).unwrap();
            sockets.remove(0)
        };
        let detail = at(98, 100_400).time_wait.unwrap();
        // Two seconds after the stamp's, to the end of the stamp's.
        assert_eq!(detail.age_ms, 2999);
        // The kernel reuses once the second has changed since the stamp,
        // and not within it: so does the rule, at its 1 s delay.
        let reuse = portstat_core::model::TimeWaitReuse {
            mode: 1,
            ..portstat_core::model::TimeWaitReuse::default()
        };
        for (stamp, reusable) in [(99, true), (100, false)] {
            assert_eq!(
                portstat_core::rules::tcp_twsk_unique(&at(stamp, 100_400), &reuse),
                reusable,
                "stamp {stamp}, now 100.4 s"
            );
        }
        // A stamp 30 days old is the oldest age the milliseconds hold, and
        // reusable; one a second ahead of `now` is age 0, and not.
        for (stamp, age, reusable) in [
            (3_000_000 - 30 * 86_400, i32::MAX as u32, true),
            (3_000_001, 0, false),
        ] {
            let socket = at(stamp, 3_000_000_400);
            assert_eq!(socket.time_wait.unwrap().age_ms, age, "stamp {stamp}");
            assert_eq!(
                portstat_core::rules::tcp_twsk_unique(&socket, &reuse),
                reusable,
                "stamp {stamp}"
            );
        }
        assert_eq!(detail.timestamps, Some(true));
        // The 32-bit millisecond clock wraps every 49.7 days.
        let wrapped = record(
            2,
            6,
            HAS_ENTRY_STAMP,
            -1,
            (&[1, 2, 3, 4], 40001),
            (&[5, 6, 7, 8], 80),
            (u32::MAX - 999, 0),
            0,
        );
        let mut sockets = Vec::new();
        parse_records(&wrapped, 1u64 << 32, &mut sockets).unwrap();
        let detail = sockets[0].time_wait.unwrap();
        assert_eq!(detail.age_ms, 1000);
        assert_eq!(detail.timestamps, Some(false));
        // Stamped after the clock was read: age 0, not 49 days.
        let later = record(
            2,
            6,
            HAS_ENTRY_STAMP,
            -1,
            (&[1, 2, 3, 4], 40001),
            (&[5, 6, 7, 8], 80),
            (5_010, 1),
            0,
        );
        sockets.clear();
        parse_records(&later, 5_000, &mut sockets).unwrap();
        assert_eq!(sockets[0].time_wait.unwrap().age_ms, 0);
    }

    #[test]
    fn rejects_what_is_not_records() {
        let mut sockets = Vec::new();
        assert!(parse_records(&[0; 71], 0, &mut sockets).is_err());
        let bad_family = record(3, 1, 0, 0, (&[], 1), (&[], 1), (0, 0), 0);
        assert!(parse_records(&bad_family, 0, &mut sockets).is_err());
        let bad_state = record(2, 99, 0, 0, (&[], 1), (&[], 1), (0, 0), 0);
        assert!(parse_records(&bad_state, 0, &mut sockets).is_err());
        assert!(sockets.is_empty());
        assert_eq!(parse_records(&[], 0, &mut sockets).unwrap(), None);
    }

    #[test]
    fn a_trailer_ends_the_stream_and_bound_sockets_parse() {
        let mut sockets = Vec::new();
        let mut bytes = record(
            2,
            BOUND_INACTIVE,
            0,
            0,
            (&[0, 0, 0, 0], 40001),
            (&[0, 0, 0, 0], 0),
            (0, 0),
            9,
        );
        let mut trailer = vec![0u8; RECORD_LENGTH];
        trailer[2] = TRAILER_WALKED;
        bytes.extend(&trailer);
        assert_eq!(
            parse_records(&bytes, 0, &mut sockets).unwrap(),
            Some(TRAILER_WALKED)
        );
        assert_eq!(sockets.len(), 1);
        assert_eq!(sockets[0].state, SocketState::Tcp(TcpState::BoundInactive));
        assert_eq!(sockets[0].local.port(), 40001);
        // A trailer says the stream is whole: nothing may follow it.
        trailer.extend(record(2, 1, 0, 0, (&[], 1), (&[], 1), (0, 0), 0));
        assert!(parse_records(&trailer, 0, &mut sockets).is_err());
    }

    #[test]
    fn tagged_records_carry_their_namespace() {
        let mut bytes = record(
            2,
            1,
            HAS_BUCKET,
            -1,
            (&[10, 0, 0, 1], 40001),
            (&[10, 0, 0, 9], 80),
            (0, 0),
            5,
        );
        bytes.extend(4_026_532_175u32.to_ne_bytes());
        bytes.extend([0; 4]);
        bytes.extend(record(
            2,
            BOUND_INACTIVE,
            0,
            0,
            (&[0, 0, 0, 0], 40002),
            (&[0, 0, 0, 0], 0),
            (0, 0),
            9,
        ));
        bytes.extend(4_026_531_833u32.to_ne_bytes());
        bytes.extend([0; 4]);
        let mut sockets = Vec::new();
        parse_tagged_records(&bytes, 0, &mut |netns, socket| {
            sockets.push((netns, *socket))
        })
        .unwrap();
        assert_eq!(sockets.len(), 2);
        assert_eq!(sockets[0].0, 4_026_532_175);
        assert_eq!(sockets[0].1.remote, "10.0.0.9:80".parse().unwrap());
        assert_eq!(sockets[0].1.binding, PortBinding::Connect);
        assert_eq!(sockets[1].0, 4_026_531_833);
        assert_eq!(
            sockets[1].1.state,
            SocketState::Tcp(TcpState::BoundInactive)
        );
        // A plain record is no tagged one.
        assert!(parse_tagged_records(&bytes[..RECORD_LENGTH], 0, &mut |_, _| {}).is_err());
    }

    #[test]
    fn the_embedded_object_is_a_bpf_elf() {
        assert_eq!(&TCP_PORTS_OBJECT[..4], b"\x7fELF");
        // e_machine 247: EM_BPF.
        assert_eq!(
            u16::from_le_bytes([TCP_PORTS_OBJECT[18], TCP_PORTS_OBJECT[19]]),
            247
        );
    }

    /// What an iterator's reads return, one step a read.
    enum Step {
        Bytes(&'static [u8]),
        Again,
    }

    struct Scripted(std::collections::VecDeque<Step>);

    impl Read for Scripted {
        fn read(&mut self, into: &mut [u8]) -> io::Result<usize> {
            match self.0.pop_front() {
                None => Ok(0),
                Some(Step::Again) => Err(io::ErrorKind::WouldBlock.into()),
                Some(Step::Bytes(bytes)) => {
                    into[..bytes.len()].copy_from_slice(bytes);
                    Ok(bytes.len())
                }
            }
        }
    }

    #[test]
    fn a_read_that_visited_a_million_sockets_with_no_output_is_read_again() {
        // As the kernel's bpf_seq_read answers after MAX_ITER_OBJECTS
        // objects with nothing written: EAGAIN, then the rest.
        let mut iterator = Scripted(
            [
                Step::Again,
                Step::Bytes(&[1, 2, 3]),
                Step::Again,
                Step::Bytes(&[4, 5, 6, 7, 8]),
            ]
            .into(),
        );
        let mut records = Vec::new();
        read_whole_records(&mut iterator, &mut Vec::new(), 4, 64, &mut |whole| {
            records.extend(whole.chunks(4).map(<[u8]>::to_vec));
            Ok(())
        })
        .expect("EAGAIN is not the end of the walk");
        assert_eq!(records, [vec![1, 2, 3, 4], vec![5, 6, 7, 8]]);
    }
}

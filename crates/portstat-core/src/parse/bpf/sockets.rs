//! The socket records of `iter/tcp` and of the walk of shared tables
//! (`struct record`, `struct tagged_record`), decoded into `SocketRecord`s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Fields, FieldsMut, RecordError, marker, namespace_entry, record, tagged_record};
use crate::linux::{AF_INET, AF_INET6};
use crate::model::{
    INODE_NOT_READ, ListenQueue, PortBinding, PortRange, SocketRecord, SocketSink, SocketState,
    TcpState, TimeWait, UdpState,
};

/// `RECORD_HAS_BUCKET`: the socket had a bind bucket to read.
pub const HAS_BUCKET: u8 = 1;
/// `RECORD_HAS_ENTRY_STAMP`: `tw_entry_stamp` exists (Linux 6.13+).
pub const HAS_ENTRY_STAMP: u8 = 2;
/// `RECORD_HAS_FILE`: a file holds the socket, whose inode may be unread.
pub const HAS_FILE: u8 = 4;
/// `RECORD_UDP`: a UDP socket, from the walk of shared tables.
pub const UDP: u8 = 8;

/// `TCP_BOUND_INACTIVE`, the state the program gives the bound-but-inactive
/// sockets it finds in the bind hash.
pub const BOUND_INACTIVE: u8 = 13;

/// `TRAILER_WALKED`: the walk of the bind hash reached its end.
pub const TRAILER_WALKED: u8 = 1;

/// `MARKER_PART`: a marker that ends one part of the walk of shared tables.
pub const MARKER_PART: u8 = 1;
/// `MARKER_TRAILER`: the marker that ends the walk.
pub const MARKER_TRAILER: u8 = 2;

/// A `struct marker`: what the walk of shared tables says of one of its
/// parts (`MARKER_PART`), or of its end (`MARKER_TRAILER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// `MARKER_*`.
    pub kind: u8,
    /// `PART_*` for a part, `TRAILER_*` for the end.
    pub flags: u8,
    /// The part's index.
    pub index: u32,
}

impl Marker {
    /// The marker the program wrote as `bytes`.
    pub fn decode(bytes: &[u8; marker::SIZE]) -> Marker {
        let fields = Fields(bytes);
        Marker {
            kind: fields.u8(marker::kind),
            flags: fields.u8(marker::flags),
            index: fields.u32(marker::index),
        }
    }
}

/// A `struct namespace_entry`: a namespace the walk of shared tables is to
/// report, with its range, and whether its UDP sockets are read too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceEntry {
    /// Its ephemeral range.
    pub range: PortRange,
    /// Whether its UDP sockets are read too.
    pub udp: bool,
}

impl NamespaceEntry {
    /// The entry as the map holds it: the range with its first port in the
    /// low 16 bits, as index 0 of `settings` has it.
    pub fn encode(&self) -> [u8; namespace_entry::SIZE] {
        let mut bytes = [0; namespace_entry::SIZE];
        let range = u32::from(self.range.start) | (u32::from(self.range.end) << 16);
        let mut fields = FieldsMut(&mut bytes);
        fields.put(namespace_entry::range, &range.to_ne_bytes());
        fields.put(namespace_entry::udp, &u32::from(self.udp).to_ne_bytes());
        bytes
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
) -> Result<Option<u8>, RecordError> {
    if !bytes.len().is_multiple_of(record::SIZE) {
        return Err(RecordError(format!(
            "{} bytes is not a whole number of {}-byte records",
            bytes.len(),
            record::SIZE
        )));
    }
    let mut records = bytes.chunks_exact(record::SIZE).peekable();
    while let Some(bytes) = records.next() {
        let fields = Fields(bytes);
        if fields.u8(record::family) == 0 {
            if records.peek().is_some() {
                return Err(RecordError("records after the trailer".into()));
            }
            return Ok(Some(fields.u8(record::flags)));
        }
        sink.add(&parse_record(fields, now_ms)?);
    }
    Ok(None)
}

/// Parses tagged records (`struct tagged_record`: a record, then the inode
/// of its socket's namespace), handing each socket to `each` with it.
pub fn parse_tagged_records(
    bytes: &[u8],
    now_ms: u64,
    each: &mut dyn FnMut(u32, &SocketRecord),
) -> Result<(), RecordError> {
    if !bytes.len().is_multiple_of(tagged_record::SIZE) {
        return Err(RecordError(format!(
            "{} bytes is not a whole number of {}-byte tagged records",
            bytes.len(),
            tagged_record::SIZE
        )));
    }
    for tagged in bytes.chunks_exact(tagged_record::SIZE) {
        let fields = Fields(tagged);
        let record = Fields(&tagged[tagged_record::record..tagged_record::record + record::SIZE]);
        each(
            fields.u32(tagged_record::netns),
            &parse_record(record, now_ms)?,
        );
    }
    Ok(())
}

/// Parses one `struct record`, of `record::SIZE` bytes.
fn parse_record(record: Fields<'_>, now_ms: u64) -> Result<SocketRecord, RecordError> {
    let family = i32::from(record.u8(record::family));
    let state_number = record.u8(record::state);
    let flags = record.u8(record::flags);
    let (fastreuse, fastreuseport) = (
        record.u8(record::fastreuse) as i8,
        record.u8(record::fastreuseport) as i8,
    );
    let bound_device = record.u32(record::bound_dev_if) as i32;
    let inode = match record.u64(record::inode) {
        0 if flags & HAS_FILE != 0 => INODE_NOT_READ,
        inode => inode,
    };
    let address = |offset: usize| -> Result<IpAddr, RecordError> {
        let bytes = record.bytes16(offset);
        match family {
            AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(bytes))),
            other => Err(RecordError(format!("address family {other}"))),
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
                .ok_or_else(|| RecordError(format!("unknown TCP state {state_number}")))?,
        )
    };
    let mut socket = SocketRecord::new(
        state,
        SocketAddr::new(address(record::local)?, record.u16(record::local_port)),
        SocketAddr::new(address(record::remote)?, record.u16(record::remote_port)),
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
            waiting: record.u32(record::queue_waiting),
            limit: record.u32(record::queue_limit),
        });
    }
    if state == SocketState::Tcp(TcpState::TimeWait) {
        let recent_stamp = record.u32(record::tw_ts_recent_stamp);
        let age_ms = time_wait_age_ms(
            flags & HAS_ENTRY_STAMP != 0,
            now_ms,
            record.u32(record::tw_entry_stamp),
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
mod tests;

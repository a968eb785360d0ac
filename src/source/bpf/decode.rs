//! The records of the socket programs (`struct record`, and
//! `struct tagged_record` of the shared walk) decoded into `SocketRecord`s:
//! pure, and tested on records built by hand.

use super::*;

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

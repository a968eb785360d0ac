//! The ctnetlink wire format, pure: the dump request built into bytes, reply
//! datagrams parsed into source-NAT entries. Nothing here touches a socket,
//! so every function is tested on bytes: constructed messages, and
//! datagrams recorded from a real kernel (`fixtures/`). The layouts are
//! those of `include/uapi/linux/netfilter/{nfnetlink,nfnetlink_conntrack}.h`
//! and `nf_conntrack_common.h`.
//!
//! Nothing is allocated per entry: attributes are walked in place, and each
//! entry that was source-NAT'd is handed to a callback as a `NatEntry`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::model::{NatEntry, Protocol};
use crate::source::netlink::wire::{HEADER_LENGTH, align4, read_i32, read_u16, read_u32};

/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET`: the dump request.
const CT_GET: u16 = 1 << 8 | 1;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW`: each entry of a dump.
const CT_NEW: u16 = 1 << 8;
/// `NLMSG_ERROR`: an error, or an acknowledgement when its code is 0.
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST | NLM_F_DUMP`.
const DUMP_REQUEST_FLAGS: u16 = 0x1 | 0x100 | 0x200;
/// `NLM_F_DUMP_INTR`: the dump saw the table change under it.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG_LENGTH: usize = 4;
/// `NLA_TYPE_MASK`: an attribute's type without its nested and
/// byte-order flags.
const ATTRIBUTE_TYPE_MASK: u16 = 0x3fff;

/// `enum ctattr_type`.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_MARK: u16 = 8;
const CTA_MARK_MASK: u16 = 21;
const CTA_STATUS_MASK: u16 = 26;
/// `enum ctattr_tuple`.
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
/// `enum ctattr_ip`.
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
/// `enum ctattr_l4proto`.
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// `IPS_SRC_NAT`: the kernel rewrote the entry's source.
pub const IPS_SRC_NAT: u32 = 1 << 4;

/// The receive buffer. The kernel fills a dump datagram up to the reader's
/// buffer, at most 32 KiB a datagram; each entry is about 250 bytes.
pub const RECEIVE_BUFFER_LENGTH: usize = 32 * 1024;

/// Only entries whose mark, masked, equals a value: `--collector.nat.mark`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkFilter {
    /// The mark wanted, after masking.
    pub value: u32,
    /// The bits of the mark compared.
    pub mask: u32,
}

/// Writes the dump request into `request`, replacing its content: every
/// entry with `IPS_SRC_NAT` set, of both address families, and with `mark`
/// only those it matches. Kernels since 6.1 filter on the status in the
/// kernel; older ones ignore the status attributes and send every entry,
/// which `parse_datagram` filters the same way.
pub fn build_request(sequence: u32, mark: Option<MarkFilter>, request: &mut Vec<u8>) {
    request.clear();
    // struct nlmsghdr, its length written last.
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&CT_GET.to_ne_bytes());
    request.extend_from_slice(&DUMP_REQUEST_FLAGS.to_ne_bytes());
    request.extend_from_slice(&sequence.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    // struct nfgenmsg: AF_UNSPEC (both families), NFNETLINK_V0, resource 0.
    request.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    let mut attribute = |kind: u16, value: u32| {
        request.extend_from_slice(&8u16.to_ne_bytes());
        request.extend_from_slice(&kind.to_ne_bytes());
        request.extend_from_slice(&value.to_be_bytes());
    };
    attribute(CTA_STATUS, IPS_SRC_NAT);
    attribute(CTA_STATUS_MASK, IPS_SRC_NAT);
    if let Some(mark) = mark {
        attribute(CTA_MARK, mark.value);
        attribute(CTA_MARK_MASK, mark.mask);
    }
    let length = request.len() as u32;
    request[..4].copy_from_slice(&length.to_ne_bytes());
}

/// What the kernel answered, or why reading failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// A system call failed.
    #[error("ctnetlink {call}: {source}")]
    System {
        /// The call that failed.
        call: &'static str,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// The kernel refused the dump with an error code.
    #[error("conntrack dump refused: {0}")]
    Refused(std::io::Error),
    /// A reply did not parse.
    #[error("malformed ctnetlink reply: {0}")]
    Malformed(String),
    /// The dump was interrupted by changes twice in a row.
    #[error("conntrack dump was interrupted twice (NLM_F_DUMP_INTR)")]
    Interrupted,
}

impl ConntrackError {
    /// Whether the error means that this namespace has no conntrack to read
    /// (no `nf_conntrack_netlink`, no netfilter netlink) or that reading it
    /// is not permitted (no `CAP_NET_ADMIN`), rather than a passing failure.
    pub fn is_unavailable(&self) -> bool {
        let code = match self {
            ConntrackError::System { source, .. } | ConntrackError::Refused(source) => {
                source.raw_os_error()
            }
            _ => None,
        };
        matches!(
            code,
            Some(
                libc::ENOENT
                    | libc::EPROTONOSUPPORT
                    | libc::EAFNOSUPPORT
                    | libc::EOPNOTSUPP
                    | libc::EPERM
                    | libc::EACCES
            )
        )
    }
}

/// Where a dump stands after one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` was seen; `interrupted` if any message of the dump
    /// carried `NLM_F_DUMP_INTR`.
    Done {
        /// Whether the kernel marked the dump interrupted.
        interrupted: bool,
    },
}

/// Parses one datagram of the dump answering `sequence`: hands `entry` each
/// entry that was source-NAT'd, over TCP or UDP. `interrupted` accumulates
/// `NLM_F_DUMP_INTR` across datagrams. Returns how many entries the datagram
/// carried, NAT'd or not, with where the dump stands.
pub fn parse_datagram(
    datagram: &[u8],
    sequence: u32,
    interrupted: &mut bool,
    entry: &mut dyn FnMut(&NatEntry),
) -> Result<(Progress, u64), ConntrackError> {
    let mut rest = datagram;
    let mut entries = 0;
    while !rest.is_empty() {
        if rest.len() < HEADER_LENGTH {
            return Err(ConntrackError::Malformed(format!(
                "{} bytes left, less than a message header",
                rest.len()
            )));
        }
        let length = read_u32(rest, 0) as usize;
        let kind = read_u16(rest, 4);
        let flags = read_u16(rest, 6);
        let message_sequence = read_u32(rest, 8);
        if length < HEADER_LENGTH || length > rest.len() {
            return Err(ConntrackError::Malformed(format!(
                "message length {length} with {} bytes left",
                rest.len()
            )));
        }
        let payload = &rest[HEADER_LENGTH..length];
        rest = &rest[align4(length).min(rest.len())..];
        if message_sequence != sequence {
            // Left over from an earlier, abandoned dump.
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            *interrupted = true;
        }
        match kind {
            NLMSG_DONE => {
                if payload.len() >= 4 {
                    let code = read_i32(payload, 0);
                    if code < 0 {
                        return Err(refused(code));
                    }
                }
                let progress = Progress::Done {
                    interrupted: *interrupted,
                };
                return Ok((progress, entries));
            }
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(ConntrackError::Malformed("short NLMSG_ERROR".into()));
                }
                let code = read_i32(payload, 0);
                if code < 0 {
                    return Err(refused(code));
                }
            }
            CT_NEW => {
                entries += 1;
                if let Some(nat) = parse_entry(payload)? {
                    entry(&nat);
                }
            }
            other => {
                return Err(ConntrackError::Malformed(format!(
                    "unexpected message type {other:#x}"
                )));
            }
        }
    }
    Ok((Progress::More, entries))
}

fn refused(code: i32) -> ConntrackError {
    ConntrackError::Refused(std::io::Error::from_raw_os_error(code.saturating_neg()))
}

/// One direction of a connection, as a tuple attribute carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tuple {
    source: Option<IpAddr>,
    destination: Option<IpAddr>,
    protocol: u8,
    source_port: Option<u16>,
    destination_port: Option<u16>,
}

/// Parses one entry (`struct nfgenmsg` and its attributes). Returns the
/// entry if the kernel rewrote its source, over TCP or UDP.
///
/// The entry was source-NAT'd when its reply tuple's destination (where
/// replies go: the translated source) differs from its original source. The
/// translated connection's destination is the reply tuple's source: the
/// original destination, or where destination NAT sent it, which is what
/// the kernel checks a translated source against for uniqueness.
fn parse_entry(payload: &[u8]) -> Result<Option<NatEntry>, ConntrackError> {
    if payload.len() < NFGENMSG_LENGTH {
        return Err(ConntrackError::Malformed(format!(
            "conntrack message of {} bytes",
            payload.len()
        )));
    }
    let mut original = None;
    let mut reply = None;
    let mut status = None;
    for (kind, value) in attributes(&payload[NFGENMSG_LENGTH..]) {
        match kind? {
            CTA_TUPLE_ORIG => original = Some(parse_tuple(value)?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(value)?),
            CTA_STATUS => status = Some(be_u32(value, "CTA_STATUS")?),
            _ => {}
        }
    }
    let (Some(original), Some(reply)) = (original, reply) else {
        return Err(ConntrackError::Malformed(
            "conntrack entry without both tuples".into(),
        ));
    };
    if status.is_some_and(|status| status & IPS_SRC_NAT == 0) {
        return Ok(None);
    }
    let protocol = match i32::from(original.protocol) {
        libc::IPPROTO_TCP => Protocol::Tcp,
        libc::IPPROTO_UDP => Protocol::Udp,
        _ => return Ok(None),
    };
    let address = |address: Option<IpAddr>, port: Option<u16>, what: &str| match (address, port) {
        (Some(address), Some(port)) => Ok(SocketAddr::new(address, port)),
        _ => Err(ConntrackError::Malformed(format!(
            "{} entry without its {what}",
            protocol.label()
        ))),
    };
    let original_source = address(original.source, original.source_port, "original source")?;
    let nat = address(
        reply.destination,
        reply.destination_port,
        "reply destination",
    )?;
    let remote = address(reply.source, reply.source_port, "reply source")?;
    if nat == original_source {
        return Ok(None);
    }
    Ok(Some(NatEntry {
        protocol,
        nat,
        remote,
    }))
}

/// Parses a `CTA_TUPLE_ORIG` or `CTA_TUPLE_REPLY` value.
fn parse_tuple(value: &[u8]) -> Result<Tuple, ConntrackError> {
    let mut tuple = Tuple::default();
    for (kind, value) in attributes(value) {
        match kind? {
            CTA_TUPLE_IP => {
                for (kind, value) in attributes(value) {
                    match kind? {
                        CTA_IP_V4_SRC => tuple.source = Some(ipv4(value)?),
                        CTA_IP_V4_DST => tuple.destination = Some(ipv4(value)?),
                        CTA_IP_V6_SRC => tuple.source = Some(ipv6(value)?),
                        CTA_IP_V6_DST => tuple.destination = Some(ipv6(value)?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (kind, value) in attributes(value) {
                    match kind? {
                        CTA_PROTO_NUM => {
                            tuple.protocol = *value.first().ok_or_else(|| {
                                ConntrackError::Malformed("empty CTA_PROTO_NUM".into())
                            })?;
                        }
                        CTA_PROTO_SRC_PORT => tuple.source_port = Some(be_u16(value)?),
                        CTA_PROTO_DST_PORT => tuple.destination_port = Some(be_u16(value)?),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(tuple)
}

/// The attributes (`struct nlattr`, type without flags, then value) laid
/// out one after another in `bytes`; an attribute that overruns its space
/// is an error, and ends the walk.
fn attributes(bytes: &[u8]) -> impl Iterator<Item = (Result<u16, ConntrackError>, &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            // Trailing padding shorter than a header is no attribute.
            return None;
        }
        let length = read_u16(rest, 0) as usize;
        let kind = read_u16(rest, 2) & ATTRIBUTE_TYPE_MASK;
        if length < 4 || length > rest.len() {
            let error = ConntrackError::Malformed(format!(
                "attribute {kind} of length {length} with {} bytes left",
                rest.len()
            ));
            rest = &[];
            return Some((Err(error), &[][..]));
        }
        let value = &rest[4..length];
        rest = &rest[align4(length).min(rest.len())..];
        Some((Ok(kind), value))
    })
}

fn ipv4(value: &[u8]) -> Result<IpAddr, ConntrackError> {
    let bytes: [u8; 4] = value
        .try_into()
        .map_err(|_| ConntrackError::Malformed(format!("IPv4 address of {} bytes", value.len())))?;
    Ok(IpAddr::V4(Ipv4Addr::from(bytes)))
}

fn ipv6(value: &[u8]) -> Result<IpAddr, ConntrackError> {
    let bytes: [u8; 16] = value
        .try_into()
        .map_err(|_| ConntrackError::Malformed(format!("IPv6 address of {} bytes", value.len())))?;
    Ok(IpAddr::V6(Ipv6Addr::from(bytes)))
}

fn be_u16(value: &[u8]) -> Result<u16, ConntrackError> {
    let bytes: [u8; 2] = value
        .try_into()
        .map_err(|_| ConntrackError::Malformed(format!("port of {} bytes", value.len())))?;
    Ok(u16::from_be_bytes(bytes))
}

fn be_u32(value: &[u8], what: &str) -> Result<u32, ConntrackError> {
    let bytes: [u8; 4] = value
        .try_into()
        .map_err(|_| ConntrackError::Malformed(format!("{what} of {} bytes", value.len())))?;
    Ok(u32::from_be_bytes(bytes))
}

//! The ctnetlink wire format, pure: the dump request built into bytes, reply
//! datagrams parsed into source-NAT entries. Nothing here touches a socket,
//! so every function is tested on bytes: constructed messages, and
//! datagrams recorded from a real kernel (`fixtures/conntrack/`). The layouts are
//! those of `include/uapi/linux/netfilter/{nfnetlink,nfnetlink_conntrack}.h`
//! and `nf_conntrack_common.h`.
//!
//! Nothing is allocated per entry: attributes are walked in place, and each
//! entry that was source-NAT'd is handed to a callback as a `NatEntry`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use super::netlink::Progress;
use super::netlink::{DatagramError, align4, read_u16, walk_datagram};
use crate::model::{NatEntry, Protocol};

/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET`: the dump request.
const CT_GET: u16 = 1 << 8 | 1;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW`: each entry of a dump.
const CT_NEW: u16 = 1 << 8;
/// `NLM_F_REQUEST | NLM_F_DUMP`.
const DUMP_REQUEST_FLAGS: u16 = 0x1 | 0x100 | 0x200;
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
    request.extend_from_slice(&[crate::linux::AF_UNSPEC as u8, 0, 0, 0]);
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
    let mut entries = 0;
    let progress = walk_datagram(datagram, sequence, interrupted, |kind, payload| {
        if kind != CT_NEW {
            return Err(ConntrackError::Malformed(format!(
                "unexpected message type {kind:#x}"
            )));
        }
        entries += 1;
        if let Some(nat) = parse_entry(payload)? {
            entry(&nat);
        }
        Ok(())
    })
    .map_err(|error| match error {
        DatagramError::Malformed(reason) => ConntrackError::Malformed(reason),
        DatagramError::Refused(code) => refused(code),
        DatagramError::Message(error) => error,
    })?;
    Ok((progress, entries))
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
        crate::linux::IPPROTO_TCP => Protocol::Tcp,
        crate::linux::IPPROTO_UDP => Protocol::Udp,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::netlink::{
        HEADER_LENGTH, pseudo_random_datagrams, read_u32, recorded_datagrams,
    };

    /// `NLMSG_ERROR`, `NLMSG_DONE` and `NLM_F_DUMP_INTR`.
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const NLM_F_DUMP_INTR: u16 = 0x10;

    /// An attribute: header then value, padded to 4 bytes.
    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(value);
        bytes.resize(align4(bytes.len()), 0);
        bytes
    }

    /// A nested attribute, flagged as the kernel flags them.
    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attribute(kind | 0x8000, &parts.concat())
    }

    fn tuple(kind: u16, protocol: u8, source: &str, destination: &str) -> Vec<u8> {
        let source: SocketAddr = source.parse().unwrap();
        let destination: SocketAddr = destination.parse().unwrap();
        let address = |kind_v4: u16, kind_v6: u16, address: IpAddr| match address {
            IpAddr::V4(address) => attribute(kind_v4, &address.octets()),
            IpAddr::V6(address) => attribute(kind_v6, &address.octets()),
        };
        nested(
            kind,
            &[
                nested(
                    CTA_TUPLE_IP,
                    &[
                        address(CTA_IP_V4_SRC, CTA_IP_V6_SRC, source.ip()),
                        address(CTA_IP_V4_DST, CTA_IP_V6_DST, destination.ip()),
                    ],
                ),
                nested(
                    CTA_TUPLE_PROTO,
                    &[
                        attribute(CTA_PROTO_NUM, &[protocol]),
                        attribute(CTA_PROTO_SRC_PORT, &source.port().to_be_bytes()),
                        attribute(CTA_PROTO_DST_PORT, &destination.port().to_be_bytes()),
                    ],
                ),
            ],
        )
    }

    /// A netlink message of `kind` with `flags`, sequence 7.
    fn message(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((HEADER_LENGTH + payload.len()) as u32).to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&7u32.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(payload);
        bytes.resize(align4(bytes.len()), 0);
        bytes
    }

    /// An entry: protocol, the original direction (source, destination),
    /// the reply direction, and the status bits.
    fn entry(protocol: u8, original: (&str, &str), reply: (&str, &str), status: u32) -> Vec<u8> {
        let mut payload = vec![crate::linux::AF_INET as u8, 0, 0, 0];
        payload.extend(tuple(CTA_TUPLE_ORIG, protocol, original.0, original.1));
        payload.extend(tuple(CTA_TUPLE_REPLY, protocol, reply.0, reply.1));
        payload.extend(attribute(CTA_STATUS, &status.to_be_bytes()));
        message(CT_NEW, 2, &payload)
    }

    fn done() -> Vec<u8> {
        message(NLMSG_DONE, 2, &0i32.to_ne_bytes())
    }

    /// Parses datagrams to the end of the dump.
    fn parse_all(
        datagrams: &[Vec<u8>],
        sequence: u32,
    ) -> Result<(Vec<NatEntry>, u64), ConntrackError> {
        let mut entries = Vec::new();
        let mut sent = 0;
        let mut interrupted = false;
        for datagram in datagrams {
            let (progress, count) =
                parse_datagram(datagram, sequence, &mut interrupted, &mut |entry| {
                    entries.push(*entry)
                })?;
            sent += count;
            if let Progress::Done { .. } = progress {
                return Ok((entries, sent));
            }
        }
        panic!("the dump did not end");
    }

    const TCP: u8 = crate::linux::IPPROTO_TCP as u8;
    const UDP: u8 = crate::linux::IPPROTO_UDP as u8;

    #[test]
    fn the_request_asks_for_source_nat_in_both_families() {
        let mut request = Vec::new();
        build_request(9, None, &mut request);
        assert_eq!(read_u32(&request, 0) as usize, request.len());
        assert_eq!(request.len(), HEADER_LENGTH + NFGENMSG_LENGTH + 16);
        assert_eq!(read_u16(&request, 4), 0x0101);
        assert_eq!(read_u16(&request, 6), 0x301);
        assert_eq!(read_u32(&request, 8), 9);
        assert_eq!(request[16], crate::linux::AF_UNSPEC as u8);
        let sent: Vec<(u16, Vec<u8>)> = attributes(&request[20..])
            .map(|(kind, value)| (kind.unwrap(), value.to_vec()))
            .collect();
        let nat = IPS_SRC_NAT.to_be_bytes().to_vec();
        assert_eq!(
            sent,
            [(CTA_STATUS, nat.clone()), (CTA_STATUS_MASK, nat.clone())]
        );
        let mark = MarkFilter {
            value: 0x10,
            mask: 0xf0,
        };
        build_request(10, Some(mark), &mut request);
        assert_eq!(read_u32(&request, 0) as usize, request.len());
        let kinds: Vec<u16> = attributes(&request[20..])
            .map(|(kind, _)| kind.unwrap())
            .collect();
        assert_eq!(
            kinds,
            [CTA_STATUS, CTA_STATUS_MASK, CTA_MARK, CTA_MARK_MASK]
        );
    }

    #[test]
    fn source_nat_is_told_by_the_reply_tuple() {
        let datagram = [
            // Masqueraded: replies go to the router's address and port.
            entry(
                TCP,
                ("10.0.1.2:40000", "10.0.9.9:443"),
                ("10.0.9.9:443", "10.0.2.1:45000"),
                IPS_SRC_NAT,
            ),
            // Only the port rewritten.
            entry(
                UDP,
                ("10.0.1.2:40000", "10.0.9.9:53"),
                ("10.0.9.9:53", "10.0.1.2:45001"),
                IPS_SRC_NAT,
            ),
            // Destination NAT only (a service address to a pod): no source
            // rewritten, though the status filter let it through.
            entry(
                TCP,
                ("10.0.1.2:40001", "10.96.0.1:443"),
                ("10.0.5.5:8443", "10.0.1.2:40001"),
                IPS_SRC_NAT,
            ),
            // Not translated, and not flagged so (a kernel that ignored the
            // status filter sends it).
            entry(
                TCP,
                ("127.0.0.1:40002", "127.0.0.1:7000"),
                ("127.0.0.1:7000", "127.0.0.1:40002"),
                0,
            ),
            // Both: to a service address, sent to a pod, masqueraded. The
            // destination is where the translated packets go: the pod.
            entry(
                TCP,
                ("10.0.1.2:40003", "10.96.0.1:443"),
                ("10.0.5.5:8443", "10.0.2.1:45002"),
                IPS_SRC_NAT | 1 << 5,
            ),
            // ICMP has no ports of the range.
            entry(
                1,
                ("10.0.1.2:0", "10.0.9.9:0"),
                ("10.0.9.9:0", "10.0.2.1:0"),
                IPS_SRC_NAT,
            ),
            done(),
        ]
        .concat();
        let (entries, sent) = parse_all(&[datagram], 7).unwrap();
        assert_eq!(sent, 6);
        let nat_entry = |protocol, nat: &str, remote: &str| NatEntry {
            protocol,
            nat: nat.parse().unwrap(),
            remote: remote.parse().unwrap(),
        };
        assert_eq!(
            entries,
            [
                nat_entry(Protocol::Tcp, "10.0.2.1:45000", "10.0.9.9:443"),
                nat_entry(Protocol::Udp, "10.0.1.2:45001", "10.0.9.9:53"),
                nat_entry(Protocol::Tcp, "10.0.2.1:45002", "10.0.5.5:8443"),
            ]
        );
    }

    #[test]
    fn ipv6_entries_parse() {
        let mut payload = vec![crate::linux::AF_INET6 as u8, 0, 0, 0];
        payload.extend(tuple(
            CTA_TUPLE_ORIG,
            TCP,
            "[fd00::2]:40000",
            "[fd00:9::9]:443",
        ));
        payload.extend(tuple(
            CTA_TUPLE_REPLY,
            TCP,
            "[fd00:9::9]:443",
            "[fd00:2::1]:45000",
        ));
        let datagram = [message(CT_NEW, 2, &payload), done()].concat();
        let (entries, _) = parse_all(&[datagram], 7).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].nat, "[fd00:2::1]:45000".parse().unwrap());
        assert_eq!(entries[0].remote, "[fd00:9::9]:443".parse().unwrap());
    }

    #[test]
    fn errors_and_interruptions_are_reported() {
        let error = message(NLMSG_ERROR, 0, &(-crate::linux::EPERM).to_ne_bytes());
        let refused = parse_all(&[error], 7).unwrap_err();
        let code = |error: &ConntrackError| match error {
            ConntrackError::Refused(source) => source.raw_os_error(),
            _ => None,
        };
        assert_eq!(code(&refused), Some(crate::linux::EPERM), "{refused}");
        let failed_done = message(NLMSG_DONE, 2, &(-crate::linux::EBUSY).to_ne_bytes());
        let failed = parse_all(&[failed_done], 7).unwrap_err();
        assert_eq!(code(&failed), Some(crate::linux::EBUSY), "{failed}");

        // An earlier dump's leftovers are skipped; NLM_F_DUMP_INTR is kept.
        let mut stale = entry(
            TCP,
            ("10.0.1.2:1", "10.0.9.9:443"),
            ("10.0.9.9:443", "10.0.2.1:45000"),
            IPS_SRC_NAT,
        );
        stale[8..12].copy_from_slice(&6u32.to_ne_bytes());
        let interrupted = message(NLMSG_DONE, 2 | NLM_F_DUMP_INTR, &0i32.to_ne_bytes());
        let mut flag = false;
        let mut entries = 0;
        let (progress, sent) =
            parse_datagram(&[stale, interrupted].concat(), 7, &mut flag, &mut |_| {
                entries += 1
            })
            .unwrap();
        assert_eq!(
            (progress, sent, entries),
            (Progress::Done { interrupted: true }, 0, 0)
        );
    }

    #[test]
    fn malformed_entries_are_errors_not_panics() {
        let good = entry(
            TCP,
            ("10.0.1.2:40000", "10.0.9.9:443"),
            ("10.0.9.9:443", "10.0.2.1:45000"),
            IPS_SRC_NAT,
        );
        // Every cut of a good message is refused or skipped, never a panic.
        for length in 0..good.len() {
            let mut cut = good[..length].to_vec();
            if length >= 4 {
                cut[..4].copy_from_slice(&(length as u32).to_ne_bytes());
            }
            let _ = parse_datagram(&cut, 7, &mut false, &mut |_| {});
        }
        // An entry without its reply tuple.
        let mut payload = vec![crate::linux::AF_INET as u8, 0, 0, 0];
        payload.extend(tuple(CTA_TUPLE_ORIG, TCP, "10.0.1.2:1", "10.0.9.9:443"));
        let lonely = message(CT_NEW, 2, &payload);
        assert!(matches!(
            parse_datagram(&lonely, 7, &mut false, &mut |_| {}),
            Err(ConntrackError::Malformed(_))
        ));
        // A TCP tuple without ports.
        let mut payload = vec![crate::linux::AF_INET as u8, 0, 0, 0];
        for kind in [CTA_TUPLE_ORIG, CTA_TUPLE_REPLY] {
            payload.extend(nested(
                kind,
                &[nested(CTA_TUPLE_PROTO, &[attribute(CTA_PROTO_NUM, &[TCP])])],
            ));
        }
        let portless = message(CT_NEW, 2, &payload);
        assert!(parse_datagram(&portless, 7, &mut false, &mut |_| {}).is_err());
        // Pseudo-random bytes.
        for bytes in pseudo_random_datagrams() {
            let _ = parse_datagram(&bytes, 7, &mut false, &mut |_| {});
        }
    }

    fn recorded(name: &str) -> Vec<Vec<u8>> {
        recorded_datagrams("src/parse/fixtures/conntrack", name)
    }

    fn described(entries: &[NatEntry]) -> Vec<String> {
        let mut described: Vec<String> = entries
            .iter()
            .map(|entry| {
                format!(
                    "{} {} {}",
                    entry.protocol.label(),
                    entry.nat.ip(),
                    entry.remote
                )
            })
            .collect();
        described.sort();
        described
    }

    #[test]
    fn a_recorded_dump_gives_the_masqueraded_connections() {
        let (entries, sent) = parse_all(&recorded("nat"), 1).unwrap();
        // The kernel filtered on the status: only the five translated.
        assert_eq!(sent, 5);
        assert_eq!(
            described(&entries),
            [
                "tcp 10.77.2.1 10.77.2.2:8080",
                "tcp 10.77.2.1 10.77.2.2:8080",
                "tcp 10.77.2.1 10.77.2.2:8080",
                "udp 10.77.2.1 10.77.2.2:53",
                "udp 10.77.2.1 10.77.2.2:53",
            ]
        );
        assert!(
            entries
                .iter()
                .all(|entry| (45000..=45019).contains(&entry.nat.port()))
        );
        let mut ports: Vec<(Protocol, u16)> = entries
            .iter()
            .map(|entry| (entry.protocol, entry.nat.port()))
            .collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 5, "{ports:?}");
    }

    #[test]
    fn an_unfiltered_dump_is_filtered_here_the_same() {
        let (unfiltered, sent) = parse_all(&recorded("unfiltered"), 1).unwrap();
        // The loopback connection's entry came too, and was left out.
        assert_eq!(sent, 6);
        let (filtered, _) = parse_all(&recorded("nat"), 1).unwrap();
        assert_eq!(described(&unfiltered), described(&filtered));
    }
}

//! The conntrack collector (`--collector.nat`): the source NAT of each
//! namespace, from conntrack's entries whose source the kernel translated
//! and the table's counters (`source::NatSource`), read inside the
//! namespace after its sockets. It keeps, across samples, the namespaces
//! where source NAT was seen, whose figures are then written at zero too.

use portstat_core::model::PortRange;
use portstat_core::status::Collector;

use super::{CollectError, InNamespace, NamespaceCollector, Registration};
use crate::source::conntrack::wire::MarkFilter;
use crate::source::{NatError, NatRead, NatSource};

/// Runs where NAT is read; a failure is its own, and the namespace's other
/// figures stand.
pub const REGISTRATION: Registration = Registration {
    collector: Collector::Conntrack,
    runs: |plan| plan.nat,
    messages: Some((
        "reading conntrack failed; no NAT figures until it works again",
        "reading conntrack works again",
    )),
    fails_the_read: false,
};

/// The conntrack collector's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ConntrackFlags {
    /// Read source NAT from conntrack: the ports NAT rules picked per NAT
    /// address and destination, and the table's fill and failures (needs
    /// CAP_NET_ADMIN; without it, or without conntrack, no NAT series).
    #[arg(
        long = "collector.nat",
        global = true,
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub nat: bool,

    /// The ports NAT rules pick from, FIRST-LAST: the capacity of each (NAT
    /// address, destination). Set it to a rule's --to-ports where rules
    /// narrow it.
    #[arg(
        long = "collector.nat.port-range",
        global = true,
        value_name = "FIRST-LAST",
        default_value = "1024-65535",
        value_parser = parse_port_range,
    )]
    pub ports: PortRange,

    /// Only conntrack entries whose mark, masked, is VALUE (decimal or
    /// 0x hexadecimal; MASK defaults to every bit), filtered in the kernel.
    #[arg(
        long = "collector.nat.mark",
        global = true,
        value_name = "VALUE[/MASK]",
        value_parser = parse_mark,
    )]
    pub mark: Option<MarkFilter>,
}

/// Why NAT may be unavailable, logged once.
const UNAVAILABLE: &str =
    "conntrack cannot be read (it needs CAP_NET_ADMIN and nf_conntrack_netlink); no NAT figures";

/// Source NAT, namespace by namespace.
pub struct Conntrack {
    source: NatSource,
}

impl Conntrack {
    /// Reads NAT from `source`.
    pub fn new(source: NatSource) -> Conntrack {
        Conntrack { source }
    }
}

impl NamespaceCollector for Conntrack {
    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }

    fn read_namespace(&mut self, namespace: &mut InNamespace<'_>) -> Result<(), CollectError> {
        match self.source.read(namespace.aggregator) {
            Ok(NatRead::Figures { counters }) => {
                namespace.aggregator.show_nat(counters);
                Ok(())
            }
            Ok(NatRead::Nothing) => Ok(()),
            Err(NatError::Unavailable(error)) => Err(CollectError::Unavailable {
                reason: error.to_string(),
                why: UNAVAILABLE,
            }),
            Err(NatError::Failed(reason)) => Err(CollectError::Failed(reason)),
        }
    }

    fn leave_namespace(&mut self) {
        self.source.leave_namespace();
    }
}

/// Parses a port range, `FIRST-LAST`, both ends inclusive and at least 1.
pub fn parse_port_range(text: &str) -> Result<PortRange, String> {
    const FORM: &str = "expected FIRST-LAST, such as 1024-65535";
    let (start, end) = text.split_once('-').ok_or(FORM)?;
    // No space is trimmed: every other numeric flag refuses one too.
    let port = |text: &str| -> Result<u16, String> {
        match text.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(format!("{text:?} is not a port number (1 to 65535)")),
        }
    };
    let (start, end) = (port(start)?, port(end)?);
    if start > end {
        return Err(format!("{FORM}: {start} is above {end}"));
    }
    Ok(PortRange { start, end })
}

/// Parses a conntrack mark filter, `VALUE[/MASK]`, each decimal or `0x`
/// hexadecimal.
pub fn parse_mark(text: &str) -> Result<MarkFilter, String> {
    let number = |text: &str| {
        match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => text.parse(),
        }
        .map_err(|_| format!("{text:?} is not a 32-bit number"))
    };
    let (value, mask) = match text.split_once('/') {
        Some((value, mask)) => (number(value)?, number(mask)?),
        None => (number(text)?, u32::MAX),
    };
    // A mark is taken when `mark & mask == value`: a value with bits the
    // mask clears could never be.
    if value & !mask != 0 {
        return Err(format!(
            "the value {value:#x} has bits outside the mask {mask:#x}, so no mark would match"
        ));
    }
    Ok(MarkFilter { value, mask })
}

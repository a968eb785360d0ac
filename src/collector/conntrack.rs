//! The conntrack collector (`--collector.nat`): the source NAT of each
//! namespace, from conntrack's entries whose source the kernel translated
//! and the table's counters (`source::NatSource`), read inside the
//! namespace after its sockets. It keeps, across samples, the namespaces
//! where source NAT was seen, whose figures are then written at zero too.

use portstat_core::status::Collector;

use super::{CollectError, InNamespace, NamespaceCollector, Registration};
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

//! The namespaces a sample covered, with `--collector.netns` other than
//! `self`: how many were sampled, left out or failed, and what their
//! dumps cost.

use crate::exposition::MetricFamily;

use super::{Family, single_gauge};
use crate::status::NamespaceCounts;

/// Writes the namespace families.
pub fn render(counts: &NamespaceCounts, out: &mut Vec<MetricFamily>) {
    single_gauge(
        out,
        &[],
        "portstat_netns_sampled",
        "Network namespaces sampled in the last sample.",
        counts.sampled as f64,
    );
    single_gauge(
        out,
        &[],
        "portstat_netns_omitted",
        "Network namespaces beyond --collector.netns.max, not sampled.",
        counts.omitted as f64,
    );
    single_gauge(
        out,
        &[],
        "portstat_netns_failed",
        "Network namespaces that could not be read in the last sample.",
        counts.failed as f64,
    );
    single_gauge(
        out,
        &[],
        "portstat_netns_sharing_host_tcp_table",
        "Sampled network namespaces that share the host's TCP hash table (net.ipv4.tcp_ehash_entries negative inside them): a dump of any of them walks the sockets of all. net.ipv4.tcp_child_ehash_entries gives namespaces created after it is set their own.",
        counts.sharing_host_tcp_table as f64,
    );
    single_gauge(
        out,
        &[],
        "portstat_netns_read_in_one_walk",
        "Sampled network namespaces whose TCP sockets came from one walk of the host's shared TCP tables for all of them in the last sample (BPF source, --collector.netns.one-walk), rather than from a walk each.",
        counts.one_walk as f64,
    );
    let mut skipped = Family::new(
        "portstat_netns_dumps_skipped",
        "Sampled network namespaces whose sockets of a protocol were not dumped in the last sample, because their socket counts (sockstat) showed none to find.",
        &[],
    );
    for (protocol, count) in counts.skipped.by_protocol() {
        skipped.gauge(&[("protocol", protocol.label())], *count as f64);
    }
    skipped.finish(out);
}

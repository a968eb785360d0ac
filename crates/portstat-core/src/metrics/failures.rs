//! The failures themselves: `connect()` calls (and, with
//! `--collector.failures.autobind`, `bind()` calls to port 0) that found no
//! free local port, counted in the kernel as they happen
//! (`source::bpf::failures`), so that a burst between two samples is
//! counted in full; and, of the TCP connect failures, the ones the last
//! prediction said could not happen (which `aggregate::failures` tells,
//! from the counts it keeps from one sample to the next).
//!
//! Every family here is a counter since the exporter started. The kernel's
//! maps drop no entry of a namespace that exists, so a series, once
//! written, is written at every sample until the exporter restarts or the
//! namespace is gone, and only rises: `rate()` and `increase()` see no
//! series come and go.

use std::collections::BTreeMap;

use crate::exposition::MetricFamily;

use super::{BaseLabels, Family};
use crate::model::{FailureKind, NamespaceFailures, PortFailure, Protocol};
use crate::rules::Destination;
use crate::status::FailureCounting;

/// `connect()` calls of `records` (failures, or connects) by protocol and
/// destination, over processes.
pub fn by_destination(records: &[PortFailure]) -> BTreeMap<(Protocol, Destination), u64> {
    let mut destinations = BTreeMap::new();
    for failure in records {
        if failure.kind == FailureKind::Connect {
            *destinations
                .entry((
                    failure.protocol,
                    Destination {
                        local_address: failure.local_address,
                        remote_address: failure.remote_address,
                        remote_port: failure.remote_port,
                    },
                ))
                .or_default() += failure.count;
        }
    }
    destinations
}

/// Calls of `records` by kind, protocol and process, over destinations.
pub fn by_process(records: &[PortFailure]) -> BTreeMap<(FailureKind, Protocol, &str), u64> {
    let mut processes = BTreeMap::new();
    for failure in records {
        *processes
            .entry((failure.kind, failure.protocol, failure.process.as_str()))
            .or_default() += failure.count;
    }
    processes
}

/// The processes behind one process name's failed calls of `kind` and
/// `protocol`: the last pid of each of its destinations, the one with the
/// most failures first, and whether calls came from other processes too
/// (the kernel keeps the last caller of each destination only).
pub fn failing_pids(
    figures: &NamespaceFailures,
    kind: FailureKind,
    protocol: Protocol,
    process: &str,
) -> FailingPids {
    let mut entries: Vec<&PortFailure> = figures
        .by_destination_and_process
        .iter()
        .filter(|failure| {
            failure.kind == kind && failure.protocol == protocol && failure.process == process
        })
        .collect();
    entries.sort_by_key(|failure| std::cmp::Reverse(failure.count));
    let mut pids: Vec<u32> = Vec::new();
    for failure in &entries {
        if !pids.contains(&failure.last_pid) {
            pids.push(failure.last_pid);
        }
    }
    FailingPids {
        pids,
        others: entries.iter().any(|failure| failure.several_pids),
    }
}

/// The pids behind failed calls, as far as the kernel kept them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FailingPids {
    /// Distinct pids, the busiest destination's first.
    pub pids: Vec<u32>,
    /// Whether other processes of the name failed too, whose pids the
    /// kernel did not keep: `pids` are then examples.
    pub others: bool,
}

impl FailingPids {
    /// The pid of the busiest destination's last call, where known.
    pub fn first(&self) -> Option<u32> {
        self.pids.first().copied()
    }

    /// "pid 12", "pids 12, 40", "e.g. pid 12" where others failed too,
    /// with at most `PIDS_SHOWN` listed; empty when none is known.
    pub fn describe(&self) -> String {
        let shown: Vec<String> = self
            .pids
            .iter()
            .take(crate::aggregate::processes::PIDS_SHOWN)
            .map(u32::to_string)
            .collect();
        let more = self.pids.len().saturating_sub(shown.len());
        let example = if self.others || more > 0 { "e.g. " } else { "" };
        match shown.len() {
            0 => String::new(),
            1 => format!("{example}pid {}", shown[0]),
            _ => format!("{example}pids {}", shown.join(", ")),
        }
    }
}

/// The `top` entries of `counts` with the most failures, most first (ties
/// in key order), for people: the metrics write every entry.
pub fn most<K: Clone>(counts: &BTreeMap<K, u64>, top: usize) -> Vec<(K, u64)> {
    let mut entries: Vec<(K, u64)> = counts
        .iter()
        .map(|(key, count)| (key.clone(), *count))
        .collect();
    entries.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    entries.truncate(top);
    entries
}

/// Adds to `family` a counter of the calls of `records` for each protocol
/// and destination, over processes.
pub fn add_by_destination(family: &mut Family, records: &[PortFailure]) {
    for ((protocol, destination), count) in &by_destination(records) {
        family.counter(
            &[
                ("protocol", protocol.label()),
                ("local_address", &destination.local_address.to_string()),
                ("remote_address", &destination.remote_address.to_string()),
                ("remote_port", &destination.remote_port.to_string()),
            ],
            *count as f64,
        );
    }
}

/// Writes the failure families of one namespace.
pub fn render(figures: &NamespaceFailures, base: &BaseLabels, out: &mut Vec<MetricFamily>) {
    for (kind, name, help) in [
        (
            FailureKind::Connect,
            "portstat_ephemeral_connect_failures_total",
            "connect() calls that found no free local port of the range (TCP EADDRNOTAVAIL; UDP, with --collector.failures.autobind, EAGAIN from connect(), sendto() or sendmsg()), counted in the kernel as they happened, since the exporter started.",
        ),
        (
            FailureKind::Bind,
            "portstat_ephemeral_bind_failures_total",
            "bind() calls to port 0 that found no free port of the range (EADDRINUSE), counted in the kernel as they happened, since the exporter started; with --collector.failures.autobind.",
        ),
    ] {
        let mut totals = Family::new(name, help, base);
        for ((counted_kind, protocol), count) in &figures.totals {
            if *counted_kind == kind {
                totals.counter(&[("protocol", protocol.label())], *count as f64);
            }
        }
        totals.finish(out);
    }

    let mut destinations = Family::new(
        "portstat_ephemeral_destination_connect_failures_total",
        "connect() calls that found no free local port, by destination (IPv4-mapped peers as IPv4), since the exporter started; the kernel keeps 1,024 (destination, process) pairs, the rest are in portstat_ephemeral_failures_unrecorded_total.",
        base,
    );
    add_by_destination(&mut destinations, &figures.by_destination_and_process);
    destinations.finish(out);

    let mut unrecorded = Family::new(
        "portstat_ephemeral_failures_unrecorded_total",
        "Failures of the namespace that the kernel's map had no room to record by destination and process, since the exporter started: counted in its totals, and here, so that its totals are its destination series plus this.",
        base,
    );
    unrecorded.counter(&[], figures.failures_unrecorded() as f64);
    unrecorded.finish(out);

    let processes = by_process(&figures.by_destination_and_process);
    for (kind, name, help) in [
        (
            FailureKind::Connect,
            "portstat_ephemeral_process_connect_failures_total",
            "connect() calls that found no free local port, by the calling process's name (comm), since the exporter started.",
        ),
        (
            FailureKind::Bind,
            "portstat_ephemeral_process_bind_failures_total",
            "bind() calls to port 0 that found no free port, by the calling process's name (comm), since the exporter started.",
        ),
    ] {
        let mut by_process = Family::new(name, help, base);
        for ((counted_kind, protocol, process), count) in &processes {
            if *counted_kind == kind {
                by_process.counter(
                    &[("protocol", protocol.label()), ("process", process)],
                    *count as f64,
                );
            }
        }
        by_process.finish(out);
    }

    let mut unpredicted = Family::new(
        "portstat_ephemeral_connect_failures_unpredicted_total",
        "TCP connect() failures toward a destination whose exact headroom at the sample before exceeded the connect() calls made since: the prediction disagreed with the kernel.",
        base,
    );
    unpredicted.counter(
        &[("protocol", Protocol::Tcp.label())],
        figures.unpredicted as f64,
    );
    unpredicted.finish(out);
}

/// Writes the exporter-wide failure families: where failures are counted
/// from, and how many runs of the counting programs the kernel skipped.
pub fn render_counting(counting: &FailureCounting, runs_missed: u64, out: &mut Vec<MetricFamily>) {
    let mut source = Family::new(
        "portstat_failures_source_info",
        "A constant 1, labelled with where connect() failures are counted: bpf (reason loaded), or none with the reason, the stage at which the BPF program could not load (the failure families are then absent).",
        &[],
    );
    match counting {
        FailureCounting::Off => return,
        FailureCounting::Bpf { .. } => {
            source.gauge(&[("source", "bpf"), ("reason", "loaded")], 1.0)
        }
        FailureCounting::Unavailable { stage } => {
            source.gauge(&[("source", "none"), ("reason", stage)], 1.0)
        }
    }
    source.finish(out);
    if matches!(counting, FailureCounting::Bpf { .. }) {
        let mut missed = Family::new(
            "portstat_failures_runs_missed_total",
            "Runs of the programs that count failures and connects which the kernel skipped because one was already running on that CPU (an interrupt raising the same tracepoint meanwhile), since the exporter started: each may have been a failure, a connect or a close that nothing counted.",
            &[],
        );
        missed.counter(&[], runs_missed as f64);
        missed.finish(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::failures::{FailureHistory, counted};

    use crate::aggregate::fixtures::{
        counts_of as counts, exact_ten_port_snapshot as snapshot, tcp_connect_mapped as failure,
    };

    const DESTINATION: &str = "127.0.0.2";

    #[test]
    fn the_pids_behind_a_process_s_failures_say_when_they_are_examples() {
        let with_pid = |mut failure: PortFailure, pid, several| {
            failure.last_pid = pid;
            failure.several_pids = several;
            failure
        };
        let figures = |failures: Vec<PortFailure>| {
            FailureHistory::default().figures(
                7,
                &counts(failures, 100),
                &counted(false),
                true,
                None,
                &snapshot(10),
            )
        };
        let pids = |figures: &NamespaceFailures| {
            failing_pids(figures, FailureKind::Connect, Protocol::Tcp, "python3").describe()
        };
        // One process toward one destination.
        let one = figures(vec![with_pid(
            failure("python3", DESTINATION, false, 8),
            14592,
            false,
        )]);
        assert_eq!(pids(&one), "pid 14592");
        // Two processes, each the last toward its destination: both, the
        // busiest destination's first.
        let two = figures(vec![
            with_pid(failure("python3", DESTINATION, false, 8), 14592, false),
            with_pid(failure("python3", "127.0.0.3", false, 26), 14600, false),
        ]);
        assert_eq!(pids(&two), "pids 14600, 14592");
        // Two processes toward one destination: the kernel kept the last.
        let shared = figures(vec![with_pid(
            failure("python3", DESTINATION, false, 34),
            14600,
            true,
        )]);
        assert_eq!(pids(&shared), "e.g. pid 14600");
        // IPv4 and IPv4-mapped calls of two processes, merged.
        let merged = figures(vec![
            with_pid(failure("python3", DESTINATION, false, 8), 14592, false),
            with_pid(failure("python3", DESTINATION, true, 26), 14600, false),
        ]);
        assert_eq!(pids(&merged), "e.g. pid 14600");
        assert_eq!(
            failing_pids(&merged, FailureKind::Connect, Protocol::Tcp, "curl").describe(),
            ""
        );
    }
}

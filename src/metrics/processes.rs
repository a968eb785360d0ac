//! The processes that hold the most ports of the range, and those holding
//! ports bound before `connect()`.
//!
//! `aggregate` decides which (process, protocol, port) triples count; this
//! module counts them per process and keeps the top ones.

use prometheus::proto::MetricFamily;

use super::{BaseLabels, Family};
use crate::model::Protocol;

/// How many ports of the range one process holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessUsage {
    /// The process's `comm`, `unknown`, or `none` for sockets no process holds.
    pub process: String,
    /// Distinct (protocol, port) pairs, unreserved and inside the range.
    pub ports_used: u32,
}

/// Counts distinct (protocol, port) pairs per process, and keeps the `top`
/// most first (ties by name).
pub fn top_processes(mut ports: Vec<(&str, Protocol, u16)>, top: usize) -> Vec<ProcessUsage> {
    ports.sort_unstable();
    ports.dedup();
    let mut usage: Vec<ProcessUsage> = Vec::new();
    for (process, _, _) in ports {
        match usage.last_mut() {
            Some(last) if last.process == process => last.ports_used += 1,
            _ => usage.push(ProcessUsage {
                process: process.to_string(),
                ports_used: 1,
            }),
        }
    }
    keep_top(usage, top)
}

/// Keeps the `top` processes holding the most ports, most first (ties by
/// name).
pub fn keep_top(mut usage: Vec<ProcessUsage>, top: usize) -> Vec<ProcessUsage> {
    usage.sort_by(|a, b| {
        b.ports_used
            .cmp(&a.ports_used)
            .then(a.process.cmp(&b.process))
    });
    usage.truncate(top);
    usage
}

/// Writes the process families of one namespace: `processes` holding the
/// most ports, and `bind_before_connect` holding the most ports bound
/// before `connect()`.
pub fn render(
    processes: &[ProcessUsage],
    bind_before_connect: &[ProcessUsage],
    base: &BaseLabels,
    out: &mut Vec<MetricFamily>,
) {
    let mut process_ports = Family::new(
        "portstat_ephemeral_process_ports_used",
        "Distinct unreserved (protocol, port) pairs inside the range held by a process's sockets, for the processes that hold the most; none for sockets no process holds (TIME_WAIT).",
        base,
    );
    for usage in processes {
        process_ports.gauge(&[("process", &usage.process)], f64::from(usage.ports_used));
    }
    process_ports.finish(out);

    let mut bind_first = Family::new(
        "portstat_ephemeral_process_bind_before_connect_ports",
        "Distinct ports inside the range a process holds with TCP sockets bound before connect(), exclusive to it, for the processes that hold the most (BPF source only); none for TIME_WAIT.",
        base,
    );
    for usage in bind_before_connect {
        bind_first.gauge(&[("process", &usage.process)], f64::from(usage.ports_used));
    }
    bind_first.finish(out);
}

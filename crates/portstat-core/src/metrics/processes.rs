//! The processes that hold the most ports of the range, and those holding
//! ports bound before `connect()`, as `aggregate::processes` counts them.

use crate::aggregate::processes::ProcessUsage;
use crate::exposition::MetricFamily;

use super::{BaseLabels, Family};

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
        "Distinct unreserved (protocol, port) pairs inside the range held by a process's sockets, for the processes that hold the most; sockets no process holds (TIME_WAIT, orphans) count under the process that closed them where the kernel recorded it (BPF), else under none.",
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

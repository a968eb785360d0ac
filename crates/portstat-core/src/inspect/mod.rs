//! `portstat_exporter inspect`: the figures of a `Snapshot`, and who holds one
//! port, as a report for a terminal (80 columns) or as JSON for scripts.

use std::fmt::Write as _;

mod json;

use crate::aggregate::nat::NatFigures;
use crate::aggregate::processes::{Pids, ProcessUsage};
use crate::aggregate::{ExclusiveReason, NO_PROCESS, Snapshot, UNKNOWN_PROCESS};
use crate::metrics::failures;
use crate::model::{
    Connection, ConnectionNames, NamespaceFailures, Protocol, SocketOwners, SocketRecord,
    SocketState, TcpState,
};

/// Who holds a connection that no process has accepted yet.
const WAITING_IN_ACCEPT_QUEUE: &str = "waiting in accept queue";

/// One socket on the port asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// The socket's state label.
    pub state: &'static str,
    /// Local address and port.
    pub local: String,
    /// Remote address and port.
    pub remote: String,
    /// The owning process, `unknown`, or `none`.
    pub process: String,
    /// Its pid, where known: the owner's, or the pid of who closed a
    /// socket no process holds.
    pub pid: Option<u32>,
    /// Whether that process has exited since it closed the socket.
    pub exited: bool,
}

/// The sockets on `port`, TCP first, each with its owner, and its pid
/// where known; `running(pid, comm)` tells whether the process that closed
/// a socket no process holds still runs.
///
/// Without `attribution` the sources may leave inodes unread, so only
/// TIME_WAIT, which no process ever holds, is known to be held by none.
pub fn port_holders<'a>(
    sockets: impl Iterator<Item = &'a SocketRecord>,
    owners: &SocketOwners,
    names: &ConnectionNames,
    port: u16,
    attribution: bool,
    running: &dyn Fn(u32, &[u8; 16]) -> bool,
) -> Vec<PortHolder> {
    let connector = |socket: &SocketRecord| {
        names
            .get(&Connection::between(socket.local, socket.remote))
            .filter(|_| socket.inode == 0)
    };
    let mut holders: Vec<PortHolder> = sockets
        .filter(|socket| socket.local.port() == port)
        .map(|socket| PortHolder {
            protocol: socket.state.protocol().label(),
            state: socket.state.label(),
            local: socket.local.to_string(),
            remote: socket.remote.to_string(),
            pid: match connector(socket) {
                Some(connector) => Some(connector.tgid),
                None if attribution && socket.inode != 0 => {
                    owners.pid_by_inode.get(&socket.inode).copied()
                }
                None => None,
            },
            exited: connector(socket)
                .is_some_and(|connector| !running(connector.tgid, &connector.comm)),
            process: if let Some(connector) = connector(socket) {
                // TIME_WAIT or an orphan, named after who closed it.
                connector.label()
            } else if socket.state == SocketState::Tcp(TcpState::TimeWait) {
                NO_PROCESS.to_string()
            } else if !attribution {
                UNKNOWN_PROCESS.to_string()
            } else if socket.inode == 0 {
                // Connected with no file: not accepted yet. Any other
                // state with no file is TIME_WAIT or an orphan.
                match socket.state {
                    SocketState::Tcp(
                        TcpState::Established | TcpState::SynRecv | TcpState::CloseWait,
                    ) => WAITING_IN_ACCEPT_QUEUE.to_string(),
                    _ => NO_PROCESS.to_string(),
                }
            } else {
                owners
                    .process_name(socket.inode)
                    .unwrap_or(UNKNOWN_PROCESS)
                    .to_string()
            },
        })
        .collect();
    holders.sort_by(|a, b| {
        (a.protocol, a.state, &a.local, &a.remote).cmp(&(b.protocol, b.state, &b.local, &b.remote))
    });
    holders
}

/// A bar of `width` cells, filled in proportion to `ratio`.
fn bar(ratio: f64, width: usize) -> String {
    let filled = ((ratio.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// `text` made printable and cut to `width` characters, a cut marked `~`.
fn fit(text: &str, width: usize) -> String {
    let text = &printable(text);
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('~');
    cut
}

/// `text` with each control character written as an escape (`\x1b`,
/// `\u{85}`), so that a process name cannot drive the operator's terminal.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match u32::from(c) {
            code if code < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{code:02x}");
            }
            code if c.is_control() => {
                let _ = write!(out, "\\u{{{code:x}}}");
            }
            _ => out.push(c),
        }
    }
    out
}

/// One row per process: its name and the ports it holds.
/// The built-in `none` reads, in a list of processes, as if nothing held
/// the ports: say what does.
fn process_rows(out: &mut String, processes: &[ProcessUsage]) {
    for usage in processes {
        let name = if usage.process == NO_PROCESS {
            "none (TIME_WAIT, orphans, accept queues)".to_string()
        } else {
            named_with_pids(&usage.process, &usage.pids)
        };
        let _ = writeln!(out, "  {:<56}{:>6}", fit(&name, 56), usage.ports_used);
    }
}

/// A process name with its pids, as in `python3 (pid 812)`: two processes
/// of one name are told apart.
fn named_with_pids(name: &str, pids: &Pids) -> String {
    let pids = pids.describe();
    if pids.is_empty() {
        name.to_string()
    } else {
        format!("{name} ({pids})")
    }
}

/// The report as text, at most 80 columns wide.
pub fn text_report(snapshot: &Snapshot, port: Option<(u16, &[PortHolder])>) -> String {
    let mut out = String::new();
    occupancy_text(&mut out, snapshot);
    let _ = writeln!(out);
    headroom_text(&mut out, snapshot);
    let _ = writeln!(out);
    destinations_text(&mut out, snapshot);
    let _ = writeln!(out);
    processes_text(&mut out, snapshot);
    let _ = writeln!(out);
    listeners_text(&mut out, snapshot);
    if let Some(failures) = &snapshot.failures {
        failures_text(&mut out, failures);
    }
    if let Some(nat) = &snapshot.nat {
        nat_text(&mut out, nat);
    }
    if let Some((port, holders)) = port {
        port_text(&mut out, port, holders);
    }
    out
}

/// The range, and how much of it each protocol uses.
fn occupancy_text(out: &mut String, snapshot: &Snapshot) {
    let range = snapshot.range;
    let _ = writeln!(
        out,
        "Ephemeral range {}-{}: {} ports, {} reserved, capacity {}",
        range.start,
        range.end,
        range.port_count(),
        snapshot.reserved_in_range,
        snapshot.capacity
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<8}{:>8}{:>10}{:>8}",
        "protocol", "used", "capacity", "fill"
    );
    for occupancy in &snapshot.occupancy {
        let _ = writeln!(
            out,
            "{:<8}{:>8}{:>10}{:>7.1}%  {}",
            occupancy.protocol.label(),
            occupancy.ports_used,
            snapshot.capacity,
            occupancy.used_ratio * 100.0,
            bar(occupancy.used_ratio, 30)
        );
    }
}

/// The busiest destination, the exclusive ports, and a new destination's
/// headroom.
fn headroom_text(out: &mut String, snapshot: &Snapshot) {
    let _ = writeln!(
        out,
        "Busiest destination: {} + {} exclusive = {:.1}% of capacity",
        count_of(snapshot.busiest_destination_ports as usize, "port"),
        snapshot.exclusive.total(),
        snapshot.destination_max_used_ratio * 100.0
    );
    let _ = writeln!(
        out,
        "{}  (connect() to it fails at 100%)",
        bar(snapshot.destination_max_used_ratio, 30)
    );
    let _ = writeln!(
        out,
        "Exclusive: {}",
        ExclusiveReason::ALL
            .iter()
            .map(|&reason| format!("{} {}", snapshot.exclusive.get(reason), reason.label()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // The reason for "at most" goes on a line of its own, within 80
    // columns.
    let _ = writeln!(
        out,
        "A new destination can get {} ports{}{}",
        snapshot.new_destination_headroom,
        if snapshot.headroom_exact() {
            ""
        } else {
            " at most"
        },
        if snapshot.headroom_slack > 0 {
            " (or one more: an odd-sized range)"
        } else {
            ""
        },
    );
    if !snapshot.headroom_exact() {
        let _ = writeln!(out, "  (ports bound before connect() need BPF to be seen)");
    }
    if snapshot.time_wait_reusable > 0 {
        let _ = writeln!(
            out,
            "TIME_WAIT that connect() may take over (not counted as used): {}",
            snapshot.time_wait_reusable
        );
    }
}

/// The destinations using the most ports.
fn destinations_text(out: &mut String, snapshot: &Snapshot) {
    let _ = writeln!(
        out,
        "{:<58}{:>6}{:>10}",
        format!("Top destinations ({} in all)", snapshot.destination_count),
        "used",
        "headroom"
    );
    if snapshot.destinations.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for usage in &snapshot.destinations {
        let destination = usage.destination;
        let remote = std::net::SocketAddr::new(destination.remote_address, destination.remote_port);
        let name = format!("{} -> {remote}", destination.local_address);
        let _ = writeln!(
            out,
            "  {:<56}{:>6}{:>10}",
            fit(&name, 56),
            usage.ports_used,
            usage.headroom
        );
    }
}

/// The processes holding the most ports, and those holding ports bound
/// before `connect()`.
fn processes_text(out: &mut String, snapshot: &Snapshot) {
    let _ = writeln!(
        out,
        "{:<58}{:>6}",
        "Top processes (ports held in the range)", "ports"
    );
    if snapshot.processes.is_empty() {
        let _ = writeln!(out, "  none");
    }
    process_rows(out, &snapshot.processes);
    if !snapshot.bind_before_connect_processes.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Ports bound before connect() are exclusive; IP_BIND_ADDRESS_NO_PORT frees them."
        );
        let _ = writeln!(out, "{:<58}{:>6}", "Bound before connect()", "ports");
        process_rows(out, &snapshot.bind_before_connect_processes);
    }
}

/// The listeners.
fn listeners_text(out: &mut String, snapshot: &Snapshot) {
    let _ = writeln!(
        out,
        "Listeners (* inside the ephemeral range: may fail to restart)"
    );
    let _ = writeln!(
        out,
        "  {:<4} {:<34} {:<24} {:>7}",
        "", "address", "process", "sockets"
    );
    for listener in &snapshot.listeners {
        let address = listener.endpoint();
        let _ = writeln!(
            out,
            "{} {:<4} {:<34} {:<24} {:>7}",
            if listener.in_ephemeral_range {
                "*"
            } else {
                " "
            },
            listener.protocol.label(),
            fit(&address, 34),
            fit(&named_with_pids(&listener.process, &listener.pids), 24),
            listener.sockets
        );
    }
    if snapshot.listeners_omitted > 0 {
        let _ = writeln!(
            out,
            "  ... and {} more",
            count_of(snapshot.listeners_omitted as usize, "socket")
        );
    }
}

/// The width of the process column of a port's sockets: the rest of 80.
const PROCESS_WIDTH: usize = 80 - 2 - 5 - 12 - 16 - 22;

/// Every socket on `port`, with its owner.
fn port_text(out: &mut String, port: u16, holders: &[PortHolder]) {
    let _ = writeln!(out);
    if holders.is_empty() {
        let _ = writeln!(out, "Port {port}: no socket");
        return;
    }
    let _ = writeln!(out, "Port {port}: {}", count_of(holders.len(), "socket"));
    // The local port is the one asked for: the address alone leaves
    // the process room to be read whole.
    // The pid is never cut: it takes the first 7 columns of the process's
    // 23, then a mark, `*` for a process that has exited since it closed
    // the socket, then its name in the 15 left, which hold any `comm`.
    let _ = writeln!(
        out,
        "  {:<4} {:<12}{:<16}{:<22}{:>7} process",
        "", "state", "address", "remote", "pid"
    );
    for holder in holders {
        let address = holder
            .local
            .rsplit_once(':')
            .map_or(holder.local.as_str(), |(address, _)| address);
        let process = match holder.pid {
            Some(pid) => format!(
                "{pid:>7}{}{}",
                if holder.exited { '*' } else { ' ' },
                fit(&holder.process, PROCESS_WIDTH - 8)
            ),
            None => fit(&holder.process, PROCESS_WIDTH),
        };
        let _ = writeln!(
            out,
            "  {:<4} {:<12}{:<16}{:<22}{process}",
            holder.protocol,
            holder.state,
            fit(address, 15),
            fit(&holder.remote, 21),
        );
    }
    if holders.iter().any(|holder| holder.exited) {
        let _ = writeln!(out, "  * the process has exited since it closed the socket");
    }
}

/// `count` things, in the singular for one: "1 socket", "2 sockets".
fn count_of(count: usize, thing: &str) -> String {
    if count == 1 {
        format!("1 {thing}")
    } else {
        format!("{count} {thing}s")
    }
}

/// How many destinations and processes the failures section lists.
const FAILURES_LISTED: usize = 5;

/// The failures the running exporter counted: totals, then the
/// destinations and processes with the most.
fn failures_text(out: &mut String, failures: &NamespaceFailures) {
    let _ = writeln!(out);
    let totals: Vec<String> = failures
        .totals
        .iter()
        .map(|((kind, protocol), count)| format!("{} {} {count}", protocol.label(), kind.call()))
        .collect();
    let _ = writeln!(
        out,
        "Failed calls since the exporter started: {}",
        totals.join(", ")
    );
    let _ = writeln!(
        out,
        "{:<64}{:>10}",
        "Top destinations of failed calls", "failed"
    );
    let destinations = failures::most(
        &failures::by_destination(&failures.by_destination_and_process),
        FAILURES_LISTED,
    );
    if destinations.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for ((protocol, destination), count) in destinations {
        let name = format!(
            "{} {} -> {}",
            protocol.label(),
            destination.local_address,
            std::net::SocketAddr::new(destination.remote_address, destination.remote_port)
        );
        let _ = writeln!(out, "  {:<62}{count:>10}", fit(&name, 62));
    }
    let _ = writeln!(
        out,
        "{:<64}{:>10}",
        "Top processes of failed calls", "failed"
    );
    let processes = failures::most(
        &failures::by_process(&failures.by_destination_and_process),
        FAILURES_LISTED,
    );
    if processes.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for ((kind, protocol, process), count) in processes {
        let pids = failures::failing_pids(failures, kind, protocol, process).describe();
        let process = if pids.is_empty() {
            process.to_string()
        } else {
            format!("{process} ({pids})")
        };
        let name = format!("{process} {} {}", protocol.label(), kind.call());
        let _ = writeln!(out, "  {:<62}{count:>10}", fit(&name, 62));
    }
}

/// The source NAT section: the busiest (NAT address, destination) pairs
/// against the NAT port capacity, and the conntrack table.
fn nat_text(out: &mut String, nat: &NatFigures) {
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Source NAT (conntrack): {} ports per (NAT address, destination)",
        nat.capacity
    );
    for protocol in Protocol::ALL {
        let ratio = nat.max_used_ratio(protocol);
        let _ = writeln!(
            out,
            "  {:<4} busiest {:>5.1}% {}  ({})",
            protocol.label(),
            ratio * 100.0,
            bar(ratio, 30),
            count_of(nat.pairs(protocol) as usize, "pair")
        );
    }
    let _ = writeln!(out, "{:<58}{:>6}{:>10}", "Top NAT pairs", "used", "left");
    if nat.destinations.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for usage in &nat.destinations {
        let destination = usage.destination;
        let name = format!(
            "{} {} -> {}",
            destination.protocol.label(),
            destination.nat_address,
            destination.remote
        );
        let _ = writeln!(
            out,
            "  {:<56}{:>6}{:>10}",
            fit(&name, 56),
            usage.ports_used,
            nat.capacity.saturating_sub(usage.ports_used)
        );
    }
    if let Some(counters) = &nat.counters {
        let limit = counters
            .limit
            .map_or_else(|| "?".to_string(), |limit| limit.to_string());
        let _ = writeln!(
            out,
            "conntrack: {} of {limit} entries; so far {} inserts failed, {} packets dropped",
            counters.entries, counters.insert_failed, counters.drop
        );
    }
}

/// The report as one JSON object (`inspect --json`), on one line.
pub fn json_report(snapshot: &Snapshot, port: Option<(u16, &[PortHolder])>) -> String {
    let mut text = serde_json::to_string(&json::Report::of(snapshot, port))
        .unwrap_or_else(|error| format!("{{\"error\":{:?}}}", error.to_string()));
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_cuts() {
        assert_eq!(bar(0.0, 4), "[....]");
        assert_eq!(bar(0.5, 4), "[##..]");
        assert_eq!(bar(1.5, 4), "[####]");
        assert_eq!(fit("abcdef", 4), "abc~");
        assert_eq!(fit("abc", 4), "abc");
    }

    #[test]
    fn json_keeps_its_order_and_escapes_names() {
        use crate::aggregate::{Limits, aggregate};
        use crate::model::{
            NamespaceSample, PerProtocol, PortRange, ReadReport, ReservedPorts, SourceKind,
        };
        let listener = SocketRecord::new(
            SocketState::Tcp(TcpState::Listen),
            "0.0.0.0:8080".parse().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
            7,
        );
        let mut owners = SocketOwners::default();
        owners.pid_by_inode.insert(7, 42);
        owners.comm_by_pid.insert(42, "a\"b\\c\u{1}".to_string());
        let sample = NamespaceSample {
            range: PortRange {
                start: 40000,
                end: 40099,
            },
            reserved: ReservedPorts::new(),
            time_wait_reuse: Default::default(),
            sockets: vec![listener],
            owners,
            report: ReadReport::complete(PerProtocol::both(SourceKind::Procfs)),
        };
        let snapshot = aggregate(&sample, &Limits::default());
        let text = json_report(&snapshot, None);
        assert!(text.starts_with(r#"{"range":{"start":40000,"end":40099},"reserved":0,"capacity":100,"protocols":[{"protocol":"tcp""#), "{text}");
        assert!(
            text.contains(r#""process":"a\"b\\c\u0001","pids":[42],"process_count":1"#),
            "{text}"
        );
        assert!(text.ends_with("}\n"));
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["listeners"][0]["port"], 8080);
        assert_eq!(json["exclusive_by_reason"]["listener"], 0);
        assert!(json.get("port").is_none() && json.get("nat").is_none());
    }
}

//! The figures of a namespace, computed in named steps once its sockets
//! are in: what each protocol holds, the listeners, the exclusive ports,
//! the headroom per destination, and the ports each process holds.

use super::*;

impl Aggregator {
    /// The figures of the sockets, named with `owners`.
    pub(super) fn figures(mut self, owners: &SocketOwners, report: &ReadReport) -> Snapshot {
        let range = self.range;
        let reserved_in_range = self.reserved.count_in(range);
        let capacity = range.port_count() - reserved_in_range;
        let occupancy = self.occupancy(report, capacity);
        let (listeners, listeners_omitted) = self.listeners(owners, &report.interfaces);
        let exclusive = self.exclusive_ports();
        let time_wait_reusable = self.time_wait_reusable(&exclusive.all);
        let headroom = self.headroom(capacity, &exclusive);
        let (processes, bind_before_connect_processes) =
            self.processes(owners, &exclusive.bind_first);
        let nat = self.nat_shown.map(|counters| {
            self.nat
                .unwrap_or_else(|| NatTable::new(self.limits.nat_ports))
                .finish(self.limits.destinations_top, counters)
        });
        Snapshot {
            range,
            reserved_in_range,
            capacity,
            occupancy,
            listeners,
            listeners_omitted,
            exclusive: exclusive.by_reason,
            time_wait_reusable,
            port_hold_ms: [
                port_hold_ms(&self.time_wait_reuse, true),
                port_hold_ms(&self.time_wait_reuse, false),
            ],
            bind_before_connect_processes,
            destinations: headroom.destinations,
            destination_count: headroom.destination_count,
            busiest_destination_ports: headroom.busiest,
            new_destination_headroom: headroom.new_destination,
            min_destination_headroom: headroom.min_destination,
            headroom_slack: headroom.slack,
            destination_max_used_ratio: headroom.max_used_ratio,
            processes,
            sources: report.sources,
            bound_inactive_seen: report.bound_inactive_seen,
            owner_lookup: self.lookup,
            namespace: None,
            nat,
            failures: None,
        }
    }

    /// How much of the range each protocol uses, and its sockets by state.
    fn occupancy(&self, report: &ReadReport, capacity: u32) -> PerProtocol<ProtocolOccupancy> {
        PerProtocol::from_fn(|protocol| {
            let tally = &self.tallies[protocol];
            let sockets_by_state = match protocol {
                Protocol::Tcp => {
                    // procfs cannot see bound-but-inactive sockets, nor
                    // netlink before Linux 6.5 where some may exist: report
                    // the state only where they were seen, rather than a
                    // false 0.
                    let sees_bound_inactive = report.bound_inactive_seen
                        && matches!(
                            report.sources[protocol],
                            SourceKind::Netlink | SourceKind::Bpf
                        );
                    TcpState::ALL
                        .iter()
                        .copied()
                        .chain(sees_bound_inactive.then_some(TcpState::BoundInactive))
                        .map(|state| (SocketState::Tcp(state), tally.states[state as usize]))
                        .collect()
                }
                Protocol::Udp => UdpState::ALL
                    .iter()
                    .map(|&state| (SocketState::Udp(state), tally.states[state as usize]))
                    .collect(),
            };
            let ports_used = tally.used.len();
            ProtocolOccupancy {
                protocol,
                ports_used,
                used_ratio: used_ratio(ports_used, capacity),
                sockets_by_state,
                sockets_scanned: tally.scanned,
            }
        })
    }

    /// The listener groups, at most `Limits::listeners_max`, and the
    /// sockets of those beyond.
    fn listeners(
        &self,
        owners: &SocketOwners,
        interfaces: &BTreeMap<u32, String>,
    ) -> (Vec<Listener>, u64) {
        let named = self.named_owners();
        let mut groups = ListenerGroups::default();
        for tally in &self.tallies {
            for socket in &tally.listeners {
                let process = owners
                    .process_name(socket.inode)
                    .or_else(|| named.process_name(socket.inode))
                    .unwrap_or(UNKNOWN_PROCESS);
                let pid = owners
                    .pid_by_inode
                    .get(&socket.inode)
                    .or_else(|| named.pid_by_inode.get(&socket.inode))
                    .copied();
                groups.add(socket, link_local_scope(interfaces, socket), process, pid);
            }
        }
        groups.finish(self.limits.listeners_max, |port| self.is_ephemeral(port))
    }

    /// The TCP ports no destination can share, each under its first
    /// reason only.
    fn exclusive_ports(&mut self) -> Exclusive {
        let tcp = &mut self.tallies.tcp;
        let [listener_ports, mut bound_ports, mut bind_first_ports] =
            std::mem::take(&mut tcp.exclusive);
        bound_ports.remove_all(&listener_ports);
        bind_first_ports.remove_all(&listener_ports);
        bind_first_ports.remove_all(&bound_ports);
        let by_reason = ExclusivePorts {
            by_reason: [
                listener_ports.len(),
                bound_ports.len(),
                bind_first_ports.len(),
            ],
        };
        let mut all = listener_ports;
        all.insert_all(&bound_ports);
        all.insert_all(&bind_first_ports);
        Exclusive {
            by_reason,
            all,
            bind_first: bind_first_ports,
        }
    }

    /// TIME_WAIT sockets `connect()` may take over now, on ports none of
    /// `exclusive` holds.
    fn time_wait_reusable(&self, exclusive: &PortSet) -> u64 {
        let start = self.range.start;
        self.tallies
            .tcp
            .reusable_by_port
            .iter()
            .enumerate()
            .filter(|(offset, _)| !exclusive.contains(start + *offset as u16))
            .map(|(_, &count)| u64::from(count))
            .sum()
    }

    /// The headroom of each destination and of a new one. `connect()`
    /// fills the free ports its scan reaches: those of the range, less the
    /// reserved, the exclusive and the destination's own; on a range of an
    /// odd length, maybe not an end port.
    fn headroom(&mut self, capacity: u32, exclusive: &Exclusive) -> Headroom {
        let scan = inet_hash_connect_scan(self.range);
        let mut edges = PortSet::new();
        for port in scan.edge_ports() {
            if !self.reserved.contains(port) && !exclusive.all.contains(port) {
                edges.insert(port);
            }
        }
        let shared = capacity.saturating_sub(exclusive.by_reason.total());
        let headroom = |used: u32, used_edges: u32| {
            scan.connects(shared.saturating_sub(used), edges.len() - used_edges)
                .0
        };
        let new_destination = headroom(0, 0);
        let mut usage: Vec<DestinationUsage> = self
            .tallies
            .tcp
            .destinations
            .drain()
            .filter_map(|(destination, mut ports)| {
                let ports_used = ports.count_without(&exclusive.all);
                (ports_used > 0).then(|| DestinationUsage {
                    destination,
                    ports_used,
                    // Most ranges are of an even length, with no edge.
                    headroom: headroom(
                        ports_used,
                        if edges.is_empty() {
                            0
                        } else {
                            ports.count_within(&edges)
                        },
                    ),
                })
            })
            .collect();
        let destination_count = usage.len() as u64;
        let busiest = usage
            .iter()
            .map(|usage| usage.ports_used)
            .max()
            .unwrap_or(0);
        let min_destination = usage
            .iter()
            .map(|usage| usage.headroom)
            .min()
            .unwrap_or(new_destination);
        usage.sort_by(|a, b| {
            b.ports_used
                .cmp(&a.ports_used)
                .then(a.destination.cmp(&b.destination))
        });
        usage.truncate(self.limits.destinations_top);
        Headroom {
            destinations: usage,
            destination_count,
            busiest,
            new_destination,
            min_destination,
            slack: scan.slack(),
            max_used_ratio: used_ratio(capacity.saturating_sub(min_destination), capacity),
        }
    }

    /// The processes holding the most ports, then those holding the most
    /// ports bound before `connect()` (`bind_first_ports`): from owner
    /// records, or from `owners` by inode.
    fn processes(
        &mut self,
        owners: &SocketOwners,
        bind_first_ports: &PortSet,
    ) -> (Vec<ProcessUsage>, Vec<ProcessUsage>) {
        let top = self.limits.processes_top;
        if top == 0 {
            return (Vec::new(), Vec::new());
        }
        let (mut holders, unknown) = if self.lookup == OwnerLookup::Records {
            self.holders_from_records()
        } else {
            self.holders_by_inode(owners)
        };
        // TIME_WAIT and orphans named after the process that closed them.
        for (tgid, (comm, ports)) in std::mem::take(&mut self.tallies.tcp.named) {
            holders.add_ports(
                &comm_label(&comm),
                PerProtocol {
                    tcp: ports,
                    udp: PortList::default(),
                },
                [tgid],
            );
        }
        let unheld = self.tallies.iter().map(|tally| tally.unheld.len()).sum();
        let unheld_bind_first = self
            .tallies
            .tcp
            .unheld_bind_first
            .iter()
            .filter(|&port| bind_first_ports.contains(port))
            .count() as u32;
        holders.figures(bind_first_ports, unheld, unheld_bind_first, unknown, top)
    }

    /// The ports each process holds from owner records, and the ports
    /// where more sockets are held than owners were found, which have a
    /// socket whose owner is not known.
    fn holders_from_records(&mut self) -> (Holders, u32) {
        for (_, (tgid, comm, protocol, port)) in std::mem::take(&mut self.records.shared) {
            self.records.count_owned(tgid, comm, protocol, port);
        }
        let mut holders = Holders::default();
        for (comm, ports, pids) in std::mem::take(&mut self.records.ports) {
            holders.add_ports(&comm_label(&comm), ports, pids);
        }
        let range = self.range;
        let mut unknown = 0;
        for (tally, owned_by_port) in self.tallies.iter().zip(&self.records.owned_by_port) {
            unknown += tally
                .held_by_port
                .iter()
                .enumerate()
                .filter(|&(offset, &held)| {
                    held > owned_by_port.get(offset).copied().unwrap_or(0)
                        && range.contains(range.start + offset as u16)
                })
                .count() as u32;
        }
        (holders, unknown)
    }

    /// The ports each process holds, from the owners of the sockets that
    /// hold them, and how many ports sockets whose owner was not found hold.
    fn holders_by_inode(&self, owners: &SocketOwners) -> (Holders, u32) {
        let mut unknown: PerProtocol<PortList> = Default::default();
        // The ports of each process, by pid: named once, below, rather than
        // a name hashed for every socket.
        let mut by_pid: HashMap<u32, PerProtocol<PortList>> = HashMap::new();
        for (protocol, tally) in self.tallies.by_protocol() {
            for held in &tally.held {
                let ports = match owners.pid_by_inode.get(&held.inode) {
                    Some(pid) if owners.comm_by_pid.contains_key(pid) => {
                        by_pid.entry(*pid).or_default()
                    }
                    _ => &mut unknown,
                };
                ports[protocol].insert(held.port);
            }
        }
        let mut holders = Holders::default();
        for (pid, ports) in by_pid {
            if let Some(comm) = owners.comm_by_pid.get(&pid) {
                holders.add_ports(comm, ports, [pid]);
            }
        }
        let none = PortSet::new();
        let unknown = unknown
            .iter_mut()
            .map(|ports| ports.count_without(&none))
            .sum();
        (holders, unknown)
    }
}

/// The exclusive TCP ports of a namespace.
struct Exclusive {
    /// How many, by reason.
    by_reason: ExclusivePorts,
    /// All of them.
    all: PortSet,
    /// Those exclusive only because they were bound before `connect()`.
    bind_first: PortSet,
}

/// The headroom figures of a namespace (`Snapshot` has their meaning).
struct Headroom {
    destinations: Vec<DestinationUsage>,
    destination_count: u64,
    busiest: u32,
    new_destination: u32,
    min_destination: u32,
    slack: u32,
    max_used_ratio: f64,
}

/// `used / capacity`. A range with no capacity cannot hand out a port, so it
/// counts as full.
pub(super) fn used_ratio(used: u32, capacity: u32) -> f64 {
    if capacity == 0 {
        1.0
    } else {
        f64::from(used) / f64::from(capacity)
    }
}

//! Owner records added up apart from the sockets they name.

use super::*;

/// Owner records (`OwnerLookup::Records`) added up apart from the sockets,
/// so that they may be read before, after or beside them: ports per
/// process, sockets owned per port, and the owners of the sockets whose
/// records carry inodes.
pub struct OwnerRecords {
    range: PortRange,
    reserved: ReservedPorts,
    /// Whether processes are counted (`Limits::processes_top` above 0).
    count_processes: bool,
    /// Owners of the sockets whose records carry inodes (listeners,
    /// unconnected UDP, the kept port), but for those shared on an
    /// ephemeral port, which are in `shared`: the first record wins, which
    /// is the lowest process id, as records come in process order.
    named: SocketOwners,
    /// Ports of the range each process holds, by `comm`, and the pids of
    /// the processes of that name that hold them.
    pub(super) ports: Vec<([u8; 16], PerProtocol<PortList>, HashSet<u32>)>,
    /// The process whose records came last: records come a process at a
    /// time, so its pid is noted once, not once a socket.
    last_pid: Option<u32>,
    /// Where each `comm` is in `ports`.
    index: HashMap<[u8; 16], usize>,
    /// The last `comm` seen and where it is: records come a process at a
    /// time, so most need no lookup.
    last: Option<([u8; 16], usize)>,
    /// Sockets referred to more than once, counted once at the end under
    /// their lowest process: by inode, (process, comm, protocol, port).
    pub(super) shared: HashMap<u64, (u32, [u8; 16], Protocol, u16)>,
    /// Sockets the records found on each port of the range (index from the
    /// range's start); sized at the first one.
    pub(super) owned_by_port: PerProtocol<Vec<u32>>,
}

impl OwnerRecords {
    /// Empty records for a namespace whose range and reserved ports are
    /// these, counting processes within `limits`.
    pub fn new(range: PortRange, reserved: ReservedPorts, limits: &Limits) -> OwnerRecords {
        OwnerRecords {
            range,
            reserved,
            count_processes: limits.processes_top > 0,
            named: SocketOwners::default(),
            ports: Vec::new(),
            index: HashMap::new(),
            last: None,
            last_pid: None,
            shared: HashMap::new(),
            owned_by_port: Default::default(),
        }
    }

    /// Takes the record of one socket a process holds; records of sockets
    /// outside this namespace are for the caller to leave out.
    pub fn add(&mut self, owned: &OwnedSocket) {
        // Records carry inodes only where a socket must be told apart.
        let inode = (owned.inode != 0 && owned.inode != INODE_NOT_READ).then_some(owned.inode);
        let counted = self.count_processes
            && self.range.contains(owned.port)
            && !self.reserved.contains(owned.port);
        match inode {
            Some(inode) if owned.shared && counted => {
                let entry = (owned.tgid, owned.comm, owned.protocol, owned.port);
                self.shared
                    .entry(inode)
                    .and_modify(|kept| {
                        if entry.0 < kept.0 {
                            *kept = entry;
                        }
                    })
                    .or_insert(entry);
                return;
            }
            Some(inode) if !self.named.pid_by_inode.contains_key(&inode) => {
                self.named.pid_by_inode.insert(inode, owned.tgid);
                self.named
                    .comm_by_pid
                    .entry(owned.tgid)
                    .or_insert_with(|| process_label(owned.comm()));
            }
            _ => {}
        }
        if counted {
            self.count_owned(owned.tgid, owned.comm, owned.protocol, owned.port);
        }
    }

    /// Counts one socket, on an ephemeral port, that process `tgid` holds.
    pub(super) fn count_owned(&mut self, tgid: u32, comm: [u8; 16], protocol: Protocol, port: u16) {
        let offset = usize::from(port - self.range.start);
        let owned = &mut self.owned_by_port[protocol];
        if owned.is_empty() {
            *owned = vec![0; self.range.port_count() as usize];
        }
        owned[offset] += 1;
        let at = match self.last {
            Some((last, at)) if last == comm => at,
            _ => {
                let ports = &mut self.ports;
                let at = *self.index.entry(comm).or_insert_with(|| {
                    ports.push((comm, Default::default(), HashSet::new()));
                    ports.len() - 1
                });
                self.last = Some((comm, at));
                at
            }
        };
        self.ports[at].1[protocol].insert(port);
        if self.last_pid != Some(tgid) {
            self.last_pid = Some(tgid);
            self.ports[at].2.insert(tgid);
        }
    }

    /// The owners of `inodes` that the records name.
    pub(super) fn owners_of(&self, inodes: &HashSet<u64>) -> SocketOwners {
        let mut owners = SocketOwners::default();
        for &inode in inodes {
            let owner = match self.named.pid_by_inode.get(&inode) {
                Some(&tgid) => self
                    .named
                    .comm_by_pid
                    .get(&tgid)
                    .map(|comm| (tgid, comm.clone())),
                None => self
                    .shared
                    .get(&inode)
                    .map(|&(tgid, comm, ..)| (tgid, comm_label(&comm))),
            };
            if let Some((tgid, comm)) = owner {
                owners.pid_by_inode.insert(inode, tgid);
                owners.comm_by_pid.entry(tgid).or_insert(comm);
            }
        }
        owners
    }
}

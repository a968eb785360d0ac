//! The processes that hold the most ports of the range, and those holding
//! ports bound before `connect()`.
//!
//! `aggregate` decides which ports each process holds (`Holders`); this
//! module counts them per process and keeps the top ones;
//! `metrics::processes` writes them.

use std::collections::HashMap;

use crate::model::{NO_PROCESS, PerProtocol, PortList, PortSet, UNKNOWN_PROCESS};

/// How many ports of the range one process holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessUsage {
    /// The process's `comm`, `unknown`, or `none` for sockets no process holds.
    pub process: String,
    /// Distinct (protocol, port) pairs, unreserved and inside the range.
    pub ports_used: u32,
    /// The processes of that name that hold them, for people (`inspect`,
    /// the landing page): metrics name processes by `comm` only.
    pub pids: Pids,
}

/// How many processes share a name, and the lowest of their pids: two
/// `python3` processes are told apart by pid.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pids {
    /// The lowest pids, at most `PIDS_SHOWN`, in order.
    pub lowest: Vec<u32>,
    /// How many processes in all.
    pub count: u32,
    /// Those of `lowest` known to have exited (`mark_exited`): a name
    /// given to sockets no process holds outlives its process.
    pub exited: Vec<u32>,
}

/// How many pids a name shows.
pub const PIDS_SHOWN: usize = 3;

impl Pids {
    /// The pids of `pids`, each counted once.
    pub fn of(pids: impl IntoIterator<Item = u32>) -> Pids {
        let mut all: Vec<u32> = pids.into_iter().collect();
        all.sort_unstable();
        all.dedup();
        let count = all.len() as u32;
        all.truncate(PIDS_SHOWN);
        Pids {
            lowest: all,
            count,
            exited: Vec::new(),
        }
    }

    /// "pid 12", "pids 12, 40", "pids 12, 40, 41 and 2 more"; empty when
    /// no process is known.
    pub fn describe(&self) -> String {
        // Where every pid listed has exited, it is said once; where some
        // have, each of those is marked.
        let all_exited =
            !self.lowest.is_empty() && self.lowest.iter().all(|pid| self.exited.contains(pid));
        let listed: Vec<String> = self
            .lowest
            .iter()
            .map(|pid| match self.exited.contains(pid) && !all_exited {
                true => format!("{pid} (exited)"),
                false => pid.to_string(),
            })
            .collect();
        let more = (self.count as usize).saturating_sub(listed.len());
        let described = match (listed.len(), more) {
            (0, _) => return String::new(),
            (1, 0) => format!("pid {}", listed[0]),
            (_, 0) => format!("pids {}", listed.join(", ")),
            (_, more) => format!("pids {} and {more} more", listed.join(", ")),
        };
        match (all_exited, more) {
            (false, _) => described,
            (true, 0) => format!("{described}, exited"),
            (true, _) => format!("{described}; those listed exited"),
        }
    }
}

/// The ports of the range each process holds, by name, with the pids of
/// the processes of that name: what the process figures are computed from,
/// however the owners were found (owner records, or `/proc/<pid>/fd`).
#[derive(Debug, Default)]
pub struct Holders {
    /// By name: its TCP ports, its UDP ports, and the pids.
    names: Vec<(String, PerProtocol<PortList>, Vec<u32>)>,
    /// Where each name is in `names`.
    index: HashMap<String, usize>,
}

impl Holders {
    fn at(&mut self, name: &str) -> &mut (String, PerProtocol<PortList>, Vec<u32>) {
        let names = &mut self.names;
        let at = match self.index.get(name) {
            Some(&at) => at,
            None => {
                names.push((name.to_string(), Default::default(), Vec::new()));
                self.index.insert(name.to_string(), names.len() - 1);
                names.len() - 1
            }
        };
        &mut names[at]
    }

    /// Notes that processes named `name`, `pids`, hold the ports `ports`.
    pub fn add_ports(
        &mut self,
        name: &str,
        ports: PerProtocol<PortList>,
        pids: impl IntoIterator<Item = u32>,
    ) {
        let entry = self.at(name);
        for (held, more) in entry.1.iter_mut().zip(ports) {
            held.extend(more);
        }
        entry.2.extend(pids);
    }

    /// The processes holding the most ports, then those holding the most
    /// TCP ports of `bind_first_ports` (every TCP socket on a port shares
    /// its bind bucket, so a process holds a port bound before `connect()`
    /// when it holds a TCP socket on a port whose only reason to be
    /// exclusive is that): at most `top` of each, most first. `unheld`
    /// ports are held by sockets no process holds (TIME_WAIT, orphans), of
    /// which `unheld_bind_first` were bound before `connect()`, and
    /// `unknown` ports by sockets whose owner was not found.
    pub fn figures(
        self,
        bind_first_ports: &PortSet,
        unheld: u32,
        unheld_bind_first: u32,
        unknown: u32,
        top: usize,
    ) -> (Vec<ProcessUsage>, Vec<ProcessUsage>) {
        let none = PortSet::new();
        let mut usages = Vec::with_capacity(self.names.len() + 2);
        let mut bind_first = Vec::new();
        for (process, PerProtocol { mut tcp, mut udp }, pids) in self.names {
            let pids = Pids::of(pids);
            let ports_used = tcp.count_without(&none) + udp.count_without(&none);
            let bound_first = tcp.count_within(bind_first_ports);
            if bound_first > 0 {
                bind_first.push(ProcessUsage {
                    process: process.clone(),
                    ports_used: bound_first,
                    pids: pids.clone(),
                });
            }
            if ports_used > 0 {
                usages.push(ProcessUsage {
                    process,
                    ports_used,
                    pids,
                });
            }
        }
        let nobody = |process: &str, ports_used| ProcessUsage {
            process: process.to_string(),
            ports_used,
            pids: Pids::default(),
        };
        // Under the name of a process so named, if there is one.
        let add = |usages: &mut Vec<ProcessUsage>, process: &str, ports| match usages
            .iter_mut()
            .find(|usage| usage.process == process)
        {
            Some(usage) => usage.ports_used += ports,
            None => usages.push(nobody(process, ports)),
        };
        for (process, ports) in [(NO_PROCESS, unheld), (UNKNOWN_PROCESS, unknown)] {
            if ports > 0 {
                add(&mut usages, process, ports);
            }
        }
        if unheld_bind_first > 0 {
            add(&mut bind_first, NO_PROCESS, unheld_bind_first);
        }
        (keep_top(usages, top), keep_top(bind_first, top))
    }
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

/// Marks, in each of `usages`, the pids listed whose process has exited:
/// `still_runs(pid, process)` says whether `pid` still runs under the name.
pub fn mark_exited(usages: &mut [ProcessUsage], still_runs: &dyn Fn(u32, &str) -> bool) {
    for usage in usages {
        let exited: Vec<u32> = usage
            .pids
            .lowest
            .iter()
            .copied()
            .filter(|&pid| !still_runs(pid, &usage.process))
            .collect();
        usage.pids.exited = exited;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exited_pids_are_said_so() {
        let usage = |pids: &[u32]| ProcessUsage {
            process: "curl".into(),
            ports_used: 7,
            pids: Pids::of(pids.iter().copied()),
        };
        let mut usages = vec![
            usage(&[20087, 20088]),
            usage(&[20087, 30000]),
            usage(&[1, 2, 3, 4]),
        ];
        mark_exited(&mut usages, &|pid, _| pid >= 30000);
        assert_eq!(usages[0].pids.describe(), "pids 20087, 20088, exited");
        assert_eq!(usages[1].pids.describe(), "pids 20087 (exited), 30000");
        assert_eq!(
            usages[2].pids.describe(),
            "pids 1, 2, 3 and 1 more; those listed exited"
        );
        mark_exited(&mut usages, &|_, _| true);
        assert_eq!(usages[0].pids.describe(), "pids 20087, 20088");
    }

    #[test]
    fn pids_are_described_for_people() {
        assert_eq!(Pids::default().describe(), "");
        assert_eq!(Pids::of([12]).describe(), "pid 12");
        assert_eq!(Pids::of([40, 12, 40]).describe(), "pids 12, 40");
        assert_eq!(
            Pids::of([50, 12, 40, 41, 7]).describe(),
            "pids 7, 12, 40 and 2 more"
        );
    }

    #[test]
    fn holders_count_distinct_ports_and_merge_the_names_of_nobody() {
        let ports = |tcp: &[u16], udp: &[u16]| {
            let mut lists: PerProtocol<PortList> = Default::default();
            for (list, ports) in lists.iter_mut().zip([tcp, udp]) {
                ports.iter().for_each(|&port| list.insert(port));
            }
            lists
        };
        let mut holders = Holders::default();
        holders.add_ports("nginx", ports(&[40001, 40002, 40002], &[40002]), [12]);
        holders.add_ports("nginx", ports(&[40003], &[]), [40]);
        // A process named as nobody is: counted under one name.
        holders.add_ports("unknown", ports(&[40009], &[]), []);
        let mut bind_first = PortSet::new();
        bind_first.insert(40001);
        let (usages, bound_first) = holders.figures(&bind_first, 2, 1, 3, 10);
        let figures: Vec<(&str, u32, String)> = usages
            .iter()
            .map(|usage| {
                (
                    usage.process.as_str(),
                    usage.ports_used,
                    usage.pids.describe(),
                )
            })
            .collect();
        assert_eq!(
            figures,
            [
                ("nginx", 4, "pids 12, 40".to_string()),
                ("unknown", 4, String::new()),
                ("none", 2, String::new())
            ]
        );
        let bound_first: Vec<(&str, u32)> = bound_first
            .iter()
            .map(|usage| (usage.process.as_str(), usage.ports_used))
            .collect();
        assert_eq!(bound_first, [("nginx", 1), ("none", 1)]);
    }
}

//! The processes that hold the most ports of the range, and those holding
//! ports bound before `connect()`.
//!
//! `aggregate` decides which (process, protocol, port) triples count; this
//! module counts them per process and keeps the top ones; `metrics::processes`
//! writes them.

use crate::model::Protocol;

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
        Pids { lowest: all, count }
    }

    /// "pid 12", "pids 12, 40", "pids 12, 40, 41 and 2 more"; empty when
    /// no process is known.
    pub fn describe(&self) -> String {
        let listed: Vec<String> = self.lowest.iter().map(u32::to_string).collect();
        let more = (self.count as usize).saturating_sub(listed.len());
        match (listed.len(), more) {
            (0, _) => String::new(),
            (1, 0) => format!("pid {}", listed[0]),
            (_, 0) => format!("pids {}", listed.join(", ")),
            (_, more) => format!("pids {} and {more} more", listed.join(", ")),
        }
    }
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
                pids: Pids::default(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! What the failure counts mean across samples: the counts of the last
//! sample, to tell what rose since, and the failures each namespace's last
//! prediction said could not happen. State the sampler keeps from one
//! sample to the next and hands to `Aggregator::finish_with`, which weighs
//! the failures against the figures of the snapshot it makes.

use std::collections::BTreeMap;

use crate::aggregate::Snapshot;
use crate::model::{FailureKind, NamespaceFailures, PortFailure, PortFailureCounts, Protocol};
use crate::rules::Destination;

/// What the failure counter said at the last sample, to tell what rose
/// since, and the unpredicted failures counted so far, by namespace.
#[derive(Debug, Default)]
pub struct FailureHistory {
    previous: Option<PortFailureCounts>,
    unpredicted: BTreeMap<u64, u64>,
    /// Namespaces with counts that were not on the host at the last look.
    missing: Vec<u64>,
}

impl FailureHistory {
    /// The figures of namespace `netns` from `counts`, read at the start of
    /// this sample, with a total for each of the `counted` kinds and
    /// protocols, and connects where `connects` are counted; `before` and
    /// `now` are the namespace's snapshots of the last sample and of this
    /// one, whose predictions the failures since are weighed against.
    pub fn figures(
        &mut self,
        netns: u64,
        counts: &PortFailureCounts,
        counted: &[(FailureKind, Protocol)],
        connects: bool,
        before: Option<&Snapshot>,
        now: &Snapshot,
    ) -> NamespaceFailures {
        let mut figures = NamespaceFailures::default();
        for &(kind, protocol) in counted {
            figures
                .totals
                .insert((kind, protocol), counts.total(netns, kind, protocol));
        }
        figures.by_destination_and_process = merged(
            counts
                .failures
                .iter()
                .filter(|failure| failure.netns == netns),
        );
        if connects {
            figures.connect_totals.insert(
                Protocol::Tcp,
                counts
                    .connect_totals
                    .get(&(netns, Protocol::Tcp))
                    .copied()
                    .unwrap_or(0),
            );
        }
        figures.connects = merged(
            counts
                .connects
                .iter()
                .filter(|connect| connect.netns == netns),
        );
        if let (Some(previous), Some(before)) = (&self.previous, before) {
            *self.unpredicted.entry(netns).or_default() +=
                unpredicted(netns, previous, counts, before, now);
        }
        figures.unpredicted = self.unpredicted.get(&netns).copied().unwrap_or(0);
        figures
    }

    /// The namespaces whose counts can be forgotten: those of `counts` not
    /// among the `live` ones now nor at the last look. Two looks, so that a
    /// namespace made after a look, whose process was not there yet, is not
    /// taken for gone.
    pub fn gone(&mut self, counts: &PortFailureCounts, live: &[u64]) -> Vec<u64> {
        let missing: Vec<u64> = counts
            .namespaces()
            .into_iter()
            .filter(|netns| !live.contains(netns))
            .collect();
        let gone = missing
            .iter()
            .copied()
            .filter(|netns| self.missing.contains(netns))
            .collect();
        self.missing = missing;
        gone
    }

    /// Keeps `counts` as the last sample's, once every namespace's figures
    /// were taken from them, and forgets the namespaces not among
    /// `sampled`: a namespace that is gone leaves nothing behind.
    pub fn remember(&mut self, counts: PortFailureCounts, sampled: &[u64]) {
        self.previous = Some(counts);
        self.unpredicted.retain(|netns, _| sampled.contains(netns));
    }
}

/// `failures` (of one namespace, sorted by key) with the entries that
/// share a key (IPv4 and IPv4-mapped calls) added up.
fn merged<'a>(failures: impl Iterator<Item = &'a PortFailure>) -> Vec<PortFailure> {
    let mut merged: Vec<PortFailure> = Vec::new();
    for failure in failures {
        match merged.last_mut() {
            Some(last) if last.key() == failure.key() => {
                last.count += failure.count;
                last.ipv4_mapped |= failure.ipv4_mapped;
                last.several_pids |= failure.several_pids || last.last_pid != failure.last_pid;
                last.last_pid = failure.last_pid;
            }
            _ => merged.push(failure.clone()),
        }
    }
    merged
}

/// TCP connect failures of namespace `netns` between the counts `previous`
/// and `counts` that the snapshot `before` did not allow for: toward a
/// destination whose headroom in `before` was more than the connect
/// attempts made since, each of which takes at most one port. Only where
/// `before` claimed its headroom exact, the range is the one `now` has, and
/// every attempt since was counted.
pub fn unpredicted(
    netns: u64,
    previous: &PortFailureCounts,
    counts: &PortFailureCounts,
    before: &Snapshot,
    now: &Snapshot,
) -> u64 {
    if !before.headroom_exact()
        || before.range != now.range
        || before.capacity != now.capacity
        || !counts.attempts_counted_since(previous, netns)
    {
        return 0;
    }
    let attempts = counts
        .connect_attempts(netns)
        .saturating_sub(previous.connect_attempts(netns));
    let by_destination = |counts: &PortFailureCounts| -> BTreeMap<Destination, u64> {
        let mut totals = BTreeMap::new();
        for failure in counts.failures.iter().filter(|failure| {
            failure.netns == netns
                && failure.kind == FailureKind::Connect
                && failure.protocol == Protocol::Tcp
        }) {
            *totals
                .entry(Destination {
                    local_address: failure.local_address,
                    remote_address: failure.remote_address,
                    remote_port: failure.remote_port,
                })
                .or_default() += failure.count;
        }
        totals
    };
    let old = by_destination(previous);
    by_destination(counts)
        .into_iter()
        .filter(|(destination, _)| u64::from(predicted_headroom(before, destination)) > attempts)
        .map(|(destination, count)| {
            count.saturating_sub(old.get(&destination).copied().unwrap_or(0))
        })
        .sum()
}

/// The fewest `connect()` calls to `destination` that `snapshot` said
/// would get a port: its own headroom where it is listed, else that of a
/// new destination less the most ports an unlisted destination may use.
pub fn predicted_headroom(snapshot: &Snapshot, destination: &Destination) -> u32 {
    if let Some(usage) = snapshot
        .destinations
        .iter()
        .find(|usage| usage.destination == *destination)
    {
        return usage.headroom;
    }
    let every_one_listed = snapshot.destinations.len() as u64 >= snapshot.destination_count;
    let most_unlisted = if every_one_listed {
        0
    } else {
        snapshot
            .destinations
            .last()
            .map_or(snapshot.busiest_destination_ports, |usage| usage.ports_used)
    };
    snapshot
        .new_destination_headroom
        .saturating_sub(most_unlisted)
}

/// The kinds and protocols counted: TCP connect() always, and with
/// `autobind` UDP connect() and bind() to port 0 of both protocols.
pub fn counted(autobind: bool) -> Vec<(FailureKind, Protocol)> {
    let mut counted = vec![(FailureKind::Connect, Protocol::Tcp)];
    if autobind {
        counted.extend([
            (FailureKind::Connect, Protocol::Udp),
            (FailureKind::Bind, Protocol::Tcp),
            (FailureKind::Bind, Protocol::Udp),
        ]);
    }
    counted
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    use crate::aggregate::fixtures::{
        counts_of as counts, exact_ten_port_snapshot as snapshot, tcp_connect_mapped as failure,
    };

    const DESTINATION: &str = "127.0.0.2";

    fn destination() -> Destination {
        Destination {
            local_address: "127.0.0.1".parse().unwrap(),
            remote_address: DESTINATION.parse::<IpAddr>().unwrap(),
            remote_port: 8080,
        }
    }

    #[test]
    fn mapped_and_ipv4_calls_to_one_destination_are_one_series() {
        let mut history = FailureHistory::default();
        let now = snapshot(10);
        let figures = history.figures(
            7,
            &counts(
                vec![
                    failure("java", DESTINATION, false, 2),
                    failure("java", DESTINATION, true, 3),
                    failure("curl", DESTINATION, false, 1),
                ],
                20,
            ),
            &counted(false),
            true,
            None,
            &now,
        );
        assert_eq!(figures.by_destination_and_process.len(), 2);
        let java = &figures.by_destination_and_process[1];
        assert_eq!((java.process.as_str(), java.count), ("java", 5));
        assert!(java.ipv4_mapped);
        assert_eq!(figures.totals[&(FailureKind::Connect, Protocol::Tcp)], 6);
        assert_eq!(figures.unpredicted, 0, "no sample before: nothing to weigh");
    }

    #[test]
    fn a_failure_is_unpredicted_only_past_every_attempt_since() {
        let before = snapshot(4);
        assert_eq!(predicted_headroom(&before, &destination()), 6);
        let now = snapshot(10);
        let previous = counts(vec![], 100);
        // Six attempts since: they may have taken the six ports.
        let after = counts(vec![failure("java", DESTINATION, false, 2)], 106);
        assert_eq!(unpredicted(7, &previous, &after, &before, &now), 0);
        // Five attempts since, and still failures: one port at least was
        // free by the prediction, so the model was wrong.
        let after = counts(vec![failure("java", DESTINATION, false, 2)], 105);
        assert_eq!(unpredicted(7, &previous, &after, &before, &now), 2);
        // Only what rose since counts.
        let previous = counts(vec![failure("java", DESTINATION, false, 1)], 100);
        assert_eq!(unpredicted(7, &previous, &after, &before, &now), 1);
        // Not where the headroom was not claimed exact.
        let mut inexact = before.clone();
        inexact.bound_inactive_seen = false;
        assert!(!inexact.headroom_exact());
        assert_eq!(unpredicted(7, &previous, &after, &inexact, &now), 0);
        // Nor across a change of the range.
        let mut moved = now.clone();
        moved.range.end += 1;
        assert_eq!(unpredicted(7, &previous, &after, &before, &moved), 0);
        // Nor where attempts since found the kernel's map full and the
        // namespace had no entry before: some of them went uncounted.
        let mut uncounted = after.clone();
        uncounted.attempts_unrecorded = 3;
        let mut no_entry = previous.clone();
        no_entry.attempts.clear();
        assert_eq!(unpredicted(7, &no_entry, &uncounted, &before, &now), 0);
        // An entry since before counts every attempt of its namespace.
        assert_eq!(unpredicted(7, &previous, &uncounted, &before, &now), 1);
    }

    #[test]
    fn unlisted_destinations_get_the_lower_bound() {
        let mut before = snapshot(4);
        let other = Destination {
            remote_address: "127.0.0.3".parse().unwrap(),
            ..destination()
        };
        // Every destination listed: one not listed uses no port yet.
        assert_eq!(predicted_headroom(&before, &other), 10);
        // A list cut short: an unlisted one may use as many as the last.
        before.destination_count = 2;
        assert_eq!(predicted_headroom(&before, &other), 6);
    }

    #[test]
    fn a_namespace_is_gone_once_missing_at_two_looks() {
        let mut history = FailureHistory::default();
        let mut counts = counts(vec![failure("java", DESTINATION, false, 1)], 3);
        counts.add_connect_attempts(8, 1);
        assert_eq!(history.gone(&counts, &[7, 8]), Vec::<u64>::new());
        // 8 is missing once: maybe made after the look.
        assert_eq!(history.gone(&counts, &[7]), Vec::<u64>::new());
        assert_eq!(history.gone(&counts, &[7]), vec![8]);
        // Back again: not gone.
        assert_eq!(history.gone(&counts, &[7, 8]), Vec::<u64>::new());
        assert_eq!(history.gone(&counts, &[]), Vec::<u64>::new());
        assert_eq!(history.gone(&counts, &[]), vec![7, 8]);
    }

    #[test]
    fn the_unpredicted_count_adds_up_across_samples() {
        let mut history = FailureHistory::default();
        let before = snapshot(4);
        history.remember(counts(vec![], 100), &[7]);
        let after = counts(vec![failure("java", DESTINATION, false, 2)], 101);
        assert_eq!(
            history
                .figures(7, &after, &counted(false), true, Some(&before), &before)
                .unpredicted,
            2
        );
        history.remember(after, &[7]);
        let later = counts(vec![failure("java", DESTINATION, false, 3)], 102);
        assert_eq!(
            history
                .figures(7, &later, &counted(false), true, Some(&before), &before)
                .unpredicted,
            3
        );
        history.remember(later.clone(), &[7]);
        assert_eq!(
            history
                .figures(7, &later, &counted(false), true, Some(&before), &before)
                .unpredicted,
            3
        );
    }
}

//! Unit tests of `failures`.

use super::*;
use portstat_core::model::{FailureKind, Protocol};
use portstat_core::parse::bpf::failures::{
    AF_INET, IPPROTO_TCP, KIND_CONNECT_ATTEMPT, KIND_CONNECT_FAILED,
};

#[test]
fn a_name_is_removed_only_when_two_samples_in_a_row_missed_it() {
    // Sample 1 misses a and b; sample 2 misses b and c (a was seen);
    // sample 3 misses a and c.
    let names = |names: [(u64, &'static str); 2]| names.into_iter();
    let (a, b, c) = ((1, "a"), (2, "b"), (3, "c"));
    let (due, missed) = missed_twice(&HashSet::new(), names([a, b]));
    assert!(due.is_empty());
    let (due, missed) = missed_twice(&missed, names([b, c]));
    assert_eq!(due, vec!["b"]);
    let (due, missed) = missed_twice(&missed, names([a, c]));
    assert_eq!(due, vec!["c"]);
    assert_eq!(missed, HashSet::from([1]));
}

#[test]
fn the_maps_names_fit_the_kernels_15_bytes() {
    // Longer names are cut, and `running_counts` would not find them.
    for name in MAP_NAMES.iter().chain([&NAMES_MAP]) {
        assert!(name.len() <= 15, "{name}");
    }
}

#[test]
fn a_namespace_on_a_reused_inode_reads_none_of_the_old_ones_counts() {
    let of = |cookie: u64, count: u64| {
        let mut key = FailureKey {
            netns: 7,
            kind: KIND_CONNECT_FAILED,
            protocol: IPPROTO_TCP,
            family: AF_INET,
            remote_port: 8080,
            cookie,
            ..FailureKey::default()
        };
        key.local[..4].copy_from_slice(&[127, 0, 0, 1]);
        key.remote[..4].copy_from_slice(&[127, 0, 0, 2]);
        (
            key,
            FailureValue {
                count,
                ..FailureValue::default()
            },
        )
    };
    let total = |cookie: u64, kind: u8, count: u64| {
        (
            TotalKey {
                netns: 7,
                kind,
                protocol: IPPROTO_TCP,
                cookie,
            },
            count,
        )
    };
    let raw = RawCounts {
        // The old namespace (cookie 1) failed 50 times and had 90
        // attempts; the new one (cookie 2) failed 3 times by destination
        // and 4 more with no room.
        totals: vec![
            total(1, KIND_CONNECT_FAILED, 20),
            total(1, KIND_CONNECT_ATTEMPT, 90),
            total(2, KIND_CONNECT_FAILED, 4),
            total(2, KIND_CONNECT_ATTEMPT, 9),
        ],
        failures: vec![of(1, 30), of(2, 3)],
        connects: vec![of(1, 8)],
        unrecorded: 24,
        connects_unrecorded: 0,
        attempts_unrecorded: 0,
    };
    let read = raw.resolve(&mut |netns| (netns == 7).then_some(2));
    assert_eq!(read.stale, vec![(7, 1)]);
    let counts = read.counts;
    assert_eq!(counts.total(7, FailureKind::Connect, Protocol::Tcp), 7);
    assert_eq!(counts.failures.len(), 1);
    assert_eq!(counts.failures[0].count, 3);
    assert_eq!(counts.connect_attempts(7), 9);
    assert!(counts.connects.is_empty());
    assert_eq!(counts.connect_totals.get(&(7, Protocol::Tcp)), None);

    // Where the live cookie is not known, every entry of the inode is
    // its; a cookie of 0 (no cookie in the kernel) is never stale.
    let read = raw.resolve(&mut |_| None);
    assert!(read.stale.is_empty());
    assert_eq!(
        read.counts.total(7, FailureKind::Connect, Protocol::Tcp),
        57
    );
    let read = raw.resolve(&mut |_| Some(0));
    assert!(read.stale.is_empty());
}

//! The whole pipeline on recorded kernel files, without root: procfs
//! fixtures through the procfs source, aggregate and render, for one
//! namespace and for several, compared with a reviewed exposition
//! (`tests/snapshots/`). Nothing here needs a network namespace, a
//! capability or the running kernel's sockets.

use std::path::{Path, PathBuf};

use portstat_core::aggregate::{Finishing, Limits};
use portstat_core::model::{NamespaceIdentity, SocketOwners};
use portstat_core::status::{Collector, NamespaceCounts, SampleStatus};
use portstat_exporter::collector::Collectors;
use portstat_exporter::collector::NamespaceReader;
use portstat_exporter::collector::read::{Reading, read_namespace};
use portstat_exporter::render::Renderer;
use portstat_exporter::source::SourceChoice;

/// A procfs tree made from the recorded fixtures, with `range` in place of
/// the recorded one when given; removed on drop.
struct Tree(PathBuf);

impl Tree {
    fn new(name: &str, range: Option<&str>) -> Tree {
        let root =
            std::env::temp_dir().join(format!("portstat-golden-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/netns");
        std::fs::create_dir_all(root.join("net")).unwrap();
        std::fs::create_dir_all(root.join("sys/net/ipv4")).unwrap();
        for table in ["tcp", "tcp6", "udp", "udp6"] {
            std::fs::copy(fixtures.join(table), root.join("net").join(table)).unwrap();
        }
        for setting in ["ip_local_port_range", "ip_local_reserved_ports"] {
            std::fs::copy(
                fixtures.join(setting),
                root.join("sys/net/ipv4").join(setting),
            )
            .unwrap();
        }
        if let Some(range) = range {
            std::fs::write(root.join("sys/net/ipv4/ip_local_port_range"), range).unwrap();
        }
        // Conntrack: an empty table, which is not dumped, and its counters.
        std::fs::create_dir_all(root.join("sys/net/netfilter")).unwrap();
        std::fs::write(root.join("sys/net/netfilter/nf_conntrack_count"), "0\n").unwrap();
        std::fs::create_dir_all(root.join("net/stat")).unwrap();
        std::fs::copy(
            fixtures.join("nf_conntrack"),
            root.join("net/stat/nf_conntrack"),
        )
        .unwrap();
        Tree(root)
    }

    /// Makes conntrack's counters unreadable: a table without its `drop`
    /// column.
    fn break_conntrack(&self) {
        std::fs::write(
            self.0.join("net/stat/nf_conntrack"),
            "entries  found\n00000000 00000000\n",
        )
        .unwrap();
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The exposition of the trees, each read as one namespace with source
/// NAT, its collectors' durations written as `DURATION`.
fn exposition(trees: &[(&Tree, Option<NamespaceIdentity>)]) -> String {
    let limits = Limits::default();
    let mut collectors = Collectors::new(&[Collector::Sockets, Collector::Conntrack]);
    collectors.start_sample();
    let snapshots: Vec<_> = trees
        .iter()
        .map(|(tree, identity)| {
            let mut reader =
                NamespaceReader::new(tree.0.clone(), SourceChoice::Procfs, false, false)
                    .with_nat(None);
            let read = read_namespace(&mut reader, Reading::alone(&limits), &mut collectors)
                .expect("the fixtures read");
            read.finish_with(Finishing {
                namespace: identity.clone(),
                ..Finishing::named_by(&SocketOwners::default())
            })
        })
        .collect();
    let status = SampleStatus {
        success: true,
        duration_seconds: 0.004,
        last_success_seconds: Some(1_795_737_600.0),
        errors: [0, 0],
        namespaces: (trees.len() > 1).then_some(NamespaceCounts {
            sampled: trees.len() as u64,
            ..NamespaceCounts::default()
        }),
        interval_seconds: Some(5.0),
        build: portstat_exporter::render::BUILD,
        collectors: collectors.finish_sample(),
        // No failure counter reads recorded tables.
        ..SampleStatus::default()
    };
    let text = Renderer::new(false, "/metrics")
        .render(&snapshots, &status)
        .unwrap()
        .replace(
            &format!("revision=\"{}\"", portstat_exporter::render::BUILD.revision),
            "revision=\"REVISION\"",
        );
    text.lines()
        .map(
            |line| match line.strip_prefix("portstat_collector_duration_seconds{") {
                Some(rest) => {
                    let labels = rest.split_once(' ').unwrap().0;
                    format!("portstat_collector_duration_seconds{{{labels} DURATION\n")
                }
                None => format!("{line}\n"),
            },
        )
        .collect()
}

#[test]
fn one_namespace_from_recorded_tables() {
    let tree = Tree::new("one", None);
    insta::assert_snapshot!(exposition(&[(&tree, None)]));
}

#[test]
fn two_namespaces_from_recorded_tables() {
    let first = Tree::new("first", None);
    let second = Tree::new("second", Some("40000\t40049\n"));
    // Conntrack fails in one namespace: its collector reads 0, and every
    // other figure of both namespaces stays.
    second.break_conntrack();
    let identity = |inode, name: &str| NamespaceIdentity {
        inode,
        name: Some(name.to_string()),
        container_id: None,
        pod_uid: None,
    };
    insta::assert_snapshot!(exposition(&[
        (&first, Some(identity(4026531840, "first"))),
        (&second, Some(identity(4026532001, "second"))),
    ]));
}

/// The `inspect` report of the recorded tables.
fn inspect_report(tree: &Tree) -> String {
    let mut reader = NamespaceReader::new(tree.0.clone(), SourceChoice::Procfs, false, false);
    let mut collectors = Collectors::new(&[Collector::Sockets]);
    let read = read_namespace(
        &mut reader,
        Reading::alone(&Limits::default()),
        &mut collectors,
    )
    .expect("the fixtures read");
    let snapshot = read.finish(&SocketOwners::default());
    portstat_core::inspect::text_report(&snapshot, None)
}

#[test]
fn inspect_report_from_recorded_tables() {
    let tree = Tree::new("inspect", None);
    let report = inspect_report(&tree);
    // From procfs, headroom is not exact: the report says why, within 80
    // columns as everywhere.
    for line in report.lines() {
        assert!(line.chars().count() <= 80, "over 80 columns: {line:?}");
    }
    insta::assert_snapshot!(report);
}

/// The sample of `inspect`'s report in docs/running.md is the golden
/// report above; `UPDATE_DOCS=1 cargo test --test golden` writes it there.
#[test]
fn the_inspect_sample_in_the_docs_is_the_golden_report() {
    let tree = Tree::new("inspect-docs", None);
    let report = inspect_report(&tree);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/running.md");
    let docs = std::fs::read_to_string(&path).unwrap();
    let marker = "<!-- The inspect sample below is tests/golden.rs's report of the recorded tables. -->\n```text\n";
    let start = docs.find(marker).expect("the marker before the sample") + marker.len();
    let end = start + docs[start..].find("```\n").expect("the end of the sample");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, format!("{}{report}{}", &docs[..start], &docs[end..])).unwrap();
        return;
    }
    assert_eq!(
        &docs[start..end],
        report,
        "docs/running.md's inspect sample differs from the report: \
         run UPDATE_DOCS=1 cargo test --test golden"
    );
}

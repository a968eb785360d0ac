//! The shape of the tree, as `docs/development.md` draws it:
//! - two crates, `portstat-core` (the pure stages) and `portstat_exporter`
//!   (the binary), and no crate of the workspace depends on one that
//!   depends on it back;
//! - `portstat-core` reaches nothing that reads the kernel or runs a
//!   server: none of `libc`, `aya`, `tokio` or `hyper`, directly or
//!   through another crate;
//! - in each crate, no module reaches, through the modules it imports, a
//!   module that reaches it back: at every depth, so `aggregate` importing
//!   `metrics::nat` while `metrics::headroom` imports `aggregate` is a
//!   circle between `aggregate` and `metrics`.
//!
//! Run alone with `cargo test --test architecture`; a failure names the
//! circle or the crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates of the workspace: name, folder.
fn crates() -> Vec<(&'static str, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    vec![
        ("portstat_exporter", root.to_path_buf()),
        ("portstat-core", root.join("crates/portstat-core")),
    ]
}

/// The names in the `[dependencies]` table of a manifest.
fn dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut names = BTreeSet::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if inside
            && !line.is_empty()
            && !line.starts_with('#')
            && let Some((name, _)) = line.split_once('=')
        {
            names.insert(name.trim().to_string());
        }
    }
    names
}

/// Every package of `Cargo.lock` with the names of the packages it depends
/// on (of any kind, for any feature the workspace enables: more than a
/// build of one crate uses, never less).
fn locked_packages() -> BTreeMap<String, BTreeSet<String>> {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock");
    let text = std::fs::read_to_string(lock).unwrap();
    let mut packages: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for block in text.split("[[package]]").skip(1) {
        let name = block
            .lines()
            .find_map(|line| line.strip_prefix("name = "))
            .unwrap()
            .trim_matches('"')
            .to_string();
        let mut dependencies = BTreeSet::new();
        if let Some((_, list)) = block.split_once("dependencies = [") {
            let list = list.split(']').next().unwrap();
            for entry in list.split(',') {
                // `"name"` or `"name version"`.
                let entry = entry.trim().trim_matches('"');
                if let Some(name) = entry.split_whitespace().next() {
                    dependencies.insert(name.to_string());
                }
            }
        }
        packages.entry(name).or_default().extend(dependencies);
    }
    packages
}

/// The packages `roots` reach in `packages`, `roots` included.
fn reached(
    roots: &BTreeSet<String>,
    packages: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<String> = roots.iter().cloned().collect();
    while let Some(name) = stack.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        stack.extend(packages.get(&name).into_iter().flatten().cloned());
    }
    seen
}

/// Every module below a crate's `src`, by path (`source::netlink`), with
/// its text.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut modules = BTreeMap::new();
    let mut folders = vec![src.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            if path.extension().is_none_or(|extension| extension != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let name = relative
                .to_string_lossy()
                .trim_end_matches("/mod")
                .replace('/', "::");
            if name != "main" && name != "lib" {
                modules.insert(name, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    modules
}

/// The paths a text names after `prefix` (`crate::` or `super::`), with a
/// brace group expanded: `crate::a::{b, c::d}` names `a::b` and `a::c::d`.
fn named_paths(text: &str, prefix: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for (at, _) in text.match_indices(prefix) {
        if text[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &text[at + prefix.len()..];
        let stem: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let after = &rest[stem.len()..];
        match after.strip_prefix('{') {
            Some(group) if stem.ends_with("::") || stem.is_empty() => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let item = item.trim().trim_start_matches("self");
                    let item = item.split_whitespace().next().unwrap_or("");
                    let path = format!("{stem}{item}");
                    paths.push(path.trim_end_matches(':').to_string());
                }
            }
            _ => paths.push(stem.trim_end_matches(':').to_string()),
        }
    }
    paths
}

/// The modules each module imports, as `crate::a::b` or `super::b`, taking
/// the longest path that is a module; a module's own parents and children
/// aside, which hold or are held by it.
fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    modules
        .iter()
        .map(|(name, text)| {
            let parent = name.rsplit_once("::").map_or("", |(parent, _)| parent);
            let absolute = named_paths(text, "crate::");
            let relative = named_paths(text, "super::").into_iter().map(|path| {
                if parent.is_empty() {
                    path
                } else {
                    format!("{parent}::{path}")
                }
            });
            let mut used = BTreeSet::new();
            for path in absolute.into_iter().chain(relative) {
                let parts: Vec<&str> = path.split("::").filter(|part| !part.is_empty()).collect();
                let target = (1..=parts.len())
                    .rev()
                    .map(|count| parts[..count].join("::"))
                    .find(|candidate| modules.contains_key(candidate));
                if let Some(target) = target {
                    let related = target == *name
                        || name.starts_with(&format!("{target}::"))
                        || target.starts_with(&format!("{name}::"));
                    if !related {
                        used.insert(target);
                    }
                }
            }
            (name.clone(), used)
        })
        .collect()
}

/// The edges with each module named by its first `depth` parts, a module's
/// edges to itself left out.
fn at_depth(
    edges: &BTreeMap<String, BTreeSet<String>>,
    depth: usize,
) -> BTreeMap<String, BTreeSet<String>> {
    let cut = |name: &str| name.split("::").take(depth).collect::<Vec<_>>().join("::");
    let mut collapsed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in edges {
        let from = cut(from);
        let entry = collapsed.entry(from.clone()).or_default();
        entry.extend(
            targets
                .iter()
                .map(|target| cut(target))
                .filter(|target| *target != from),
        );
    }
    for targets in edges.values() {
        for target in targets {
            collapsed.entry(cut(target)).or_default();
        }
    }
    collapsed
}

/// A path from `from` back to itself, if there is one.
fn circle_through(from: &str, edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in &edges[last] {
            if next == from {
                return Some(path.iter().cloned().chain([next.clone()]).collect());
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

/// Every circle of `edges`, at every depth, one line each.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let deepest = edges
        .keys()
        .map(|name| name.split("::").count())
        .max()
        .unwrap_or(1);
    let mut found = BTreeSet::new();
    for depth in 1..=deepest {
        let collapsed = at_depth(edges, depth);
        for module in collapsed.keys() {
            if let Some(circle) = circle_through(module, &collapsed) {
                found.insert(circle.join(" -> "));
            }
        }
    }
    found.into_iter().collect()
}

#[test]
fn no_crate_depends_on_one_that_depends_on_it_back() {
    let crates = crates();
    let names: BTreeSet<String> = crates.iter().map(|(name, _)| name.to_string()).collect();
    let edges: BTreeMap<String, BTreeSet<String>> = crates
        .iter()
        .map(|(name, folder)| {
            let inside = dependencies(&folder.join("Cargo.toml"))
                .into_iter()
                .filter(|dependency| names.contains(dependency))
                .collect();
            (name.to_string(), inside)
        })
        .collect();
    // The check itself works: the binary's use of the core is seen.
    assert!(
        edges["portstat_exporter"].contains("portstat-core"),
        "{edges:?}"
    );
    let found: Vec<String> = names
        .iter()
        .filter_map(|name| circle_through(name, &edges))
        .map(|circle| circle.join(" -> "))
        .collect();
    assert!(found.is_empty(), "crate circles:\n{}", found.join("\n"));
}

#[test]
fn the_core_reaches_nothing_that_reads_the_kernel_or_serves() {
    let (_, core) = &crates()[1];
    let roots = dependencies(&core.join("Cargo.toml"));
    let packages = locked_packages();
    // The check itself works: the binary reaches all of them.
    let binary = reached(&dependencies(&crates()[0].1.join("Cargo.toml")), &packages);
    let forbidden = [
        "libc",
        "aya",
        "tokio",
        "hyper",
        "rustix",
        "nix",
        "socket2",
        "netlink-sys",
    ];
    for name in ["libc", "aya", "tokio", "hyper"] {
        assert!(binary.contains(name), "the binary does not reach {name}");
    }
    let reached = reached(&roots, &packages);
    let bad: Vec<&str> = forbidden
        .iter()
        .copied()
        .filter(|name| reached.contains(*name))
        .collect();
    assert!(
        bad.is_empty(),
        "portstat-core reaches {bad:?} (it reaches {reached:?})"
    );
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    for (name, folder) in crates() {
        let modules = modules(&folder.join("src"));
        let edges = imports(&modules);
        // The check itself works: the pipeline's known edges are seen.
        match name {
            "portstat-core" => {
                assert!(edges["render"].contains("aggregate"), "{edges:?}");
                assert!(
                    edges["metrics::headroom"].contains("aggregate"),
                    "{edges:?}"
                );
                assert!(edges["aggregate"].contains("rules"), "{edges:?}");
            }
            _ => {
                assert!(edges["sampler"].contains("render"), "{edges:?}");
                assert!(edges.contains_key("source::netlink"), "{edges:?}");
            }
        }
        let found = circles(&edges);
        assert!(
            found.is_empty(),
            "import circles in {name}:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn a_circle_through_submodules_is_found() {
    let text = |body: &str| body.to_string();
    let modules: BTreeMap<String, String> = [
        (
            "aggregate".to_string(),
            text("use crate::metrics::{nat, processes::Pids};"),
        ),
        (
            "metrics".to_string(),
            text("pub mod headroom; pub mod nat;"),
        ),
        (
            "metrics::nat".to_string(),
            text("use super::Family; use crate::model::Protocol;"),
        ),
        ("metrics::processes".to_string(), text("")),
        (
            "metrics::headroom".to_string(),
            text("use crate::aggregate::Snapshot;"),
        ),
        ("model".to_string(), text("")),
    ]
    .into_iter()
    .collect();
    let edges = imports(&modules);
    assert_eq!(
        edges["aggregate"],
        ["metrics::nat", "metrics::processes"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(
        edges["metrics::nat"],
        ["model".to_string()].into_iter().collect()
    );
    // No circle between files; one between `aggregate` and `metrics`.
    assert!(
        modules
            .keys()
            .all(|module| circle_through(module, &edges).is_none())
    );
    assert_eq!(
        circles(&edges),
        [
            "aggregate -> metrics -> aggregate",
            "metrics -> aggregate -> metrics"
        ]
    );
}

/// The functions of a module's text outside its tests, by name, with how
/// many lines each takes, from its `fn` line to the `}` at its indentation.
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|pair| pair[0].starts_with("#[cfg(test)]") && pair[1].starts_with("mod tests"))
        .unwrap_or(lines.len());
    let mut lengths = Vec::new();
    for (start, line) in lines[..end].iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let signature = trimmed
            .trim_start_matches("pub ")
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("const ")
            .trim_start_matches("async ")
            .trim_start_matches("unsafe ");
        let Some(rest) = signature.strip_prefix("fn ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // A declaration without a body (in a trait) ends with `;`.
        let Some(open) = (start..end).find(|&at| {
            let line = lines[at].trim_end();
            line.ends_with('{') || line.ends_with(';')
        }) else {
            continue;
        };
        if lines[open].trim_end().ends_with(';') {
            continue;
        }
        let closing = format!("{indent}}}");
        if let Some(close) = (open + 1..end).find(|&at| lines[at] == closing) {
            lengths.push((name, close - start + 1));
        }
    }
    lengths
}

/// The longest function a module of either crate may hold, outside tests.
const LONGEST_FUNCTION: usize = 100;

#[test]
fn no_function_outside_the_tests_is_over_a_hundred_lines() {
    let mut long = Vec::new();
    let mut all = Vec::new();
    for (crate_name, folder) in crates() {
        for (module, text) in modules(&folder.join("src")) {
            // Unit tests kept in files of their own (`mod tests;`).
            if module.split("::").any(|segment| segment == "tests") {
                continue;
            }
            for (name, length) in function_lengths(&text) {
                all.push((length, format!("{crate_name} {module}::{name}")));
                if length > LONGEST_FUNCTION {
                    long.push(format!("{module}::{name}: {length} lines"));
                }
            }
        }
    }
    // The check itself works: it finds the functions.
    assert!(all.len() > 500, "{} functions found", all.len());
    all.sort_unstable_by(|a, b| b.cmp(a));
    let longest: Vec<String> = all
        .iter()
        .take(5)
        .map(|(length, name)| format!("{name}: {length}"))
        .collect();
    println!("the longest five: {}", longest.join(", "));
    assert!(
        long.is_empty(),
        "functions over {LONGEST_FUNCTION} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn function_lengths_are_counted_to_their_closing_brace() {
    let text = "fn one() {\n    let x = 1;\n}\n\nimpl A {\n    pub(crate) async fn two(\n        a: u8,\n    ) -> u8 {\n        a\n    }\n    fn declared(&self);\n}\n\n#[cfg(test)]\nmod tests {\n    fn in_tests() {\n    }\n}\n";
    assert_eq!(
        function_lengths(text),
        [("one".to_string(), 3), ("two".to_string(), 5)]
    );
}

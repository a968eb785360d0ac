//! The shape of the tree: no module of `src` reaches, through the modules it
//! imports (`crate::...`), a module that reaches it back. Run alone with
//! `cargo test --test architecture`; a failure names the circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module below `src`, by path (`source::netlink`), with its text.
fn modules() -> BTreeMap<String, String> {
    let mut modules = BTreeMap::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut folders = vec![root.clone()];
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
            let relative = path.strip_prefix(&root).unwrap().with_extension("");
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

/// The modules each module names as `crate::a` or `crate::a::b`, taking the
/// longest that is a module; a module's own parents and children aside.
fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    modules
        .iter()
        .map(|(name, text)| {
            let mut used = BTreeSet::new();
            for (at, _) in text.match_indices("crate::") {
                let path: String = text[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let parts: Vec<&str> = path.split("::").collect();
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

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let modules = modules();
    assert!(
        modules.contains_key("source::netlink"),
        "{:?}",
        modules.keys()
    );
    let edges = imports(&modules);
    // The check itself works: the pipeline's known edges are seen.
    assert!(edges["render"].contains("aggregate"));
    assert!(edges["sampler"].contains("render"));
    let circles: Vec<String> = modules
        .keys()
        .filter_map(|module| circle_through(module, &edges))
        .map(|circle| circle.join(" -> "))
        .collect();
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

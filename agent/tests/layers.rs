//! The agent's structure, checked: the layer rule, no import cycles between
//! modules, one module that spawns processes, no EC2 state compared as a
//! string, and files of one concern (under 500 lines) in the agent and the
//! provisioner. See ARCHITECTURE.md, "Layers".

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: &[(&str, u8)] = &[
    ("model", 0),
    ("core", 1),
    ("edge", 2),
    ("report", 2),
    ("run", 3),
];

fn rank(layer: &str) -> Option<u8> {
    LAYERS.iter().find(|(l, _)| *l == layer).map(|(_, r)| *r)
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// A file's module path from `src/` (`edge/ec2/aws.rs` -> [edge, ec2, aws]).
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The code of a file without its unit-test module (tests may reach
/// across layers for fakes; fakes themselves are checked).
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The modules (`layer::module`) a file's code names, through `crate::`
/// and `super::` paths.
fn references(file: &Path) -> BTreeSet<(String, String)> {
    let me = module_path(file);
    let text = code(file);
    let mut out = BTreeSet::new();
    let mut add = |path: Vec<String>| {
        if path.len() >= 2 && rank(&path[0]).is_some() {
            out.insert((path[0].clone(), path[1].clone()));
        } else if path.len() == 1 && rank(&path[0]).is_some() {
            out.insert((path[0].clone(), String::new()));
        }
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        add(segments(rest));
    }
    for (i, _) in text.match_indices("super::") {
        if text[..i].ends_with("::") {
            continue;
        }
        // `super` is the parent module (of edge/ec2/aws.rs: edge::ec2;
        // of edge/ec2/mod.rs: edge).
        let mut path = me.clone();
        path.pop();
        path.extend(segments(&text[i + "super::".len()..]));
        add(path);
    }
    out
}

/// `a::b::{c, d}` -> [a, b]: the leading identifiers of a path.
fn segments(rest: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in rest.split("::") {
        let ident: String = part
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            break;
        }
        let whole = ident.len() == part.len();
        out.push(ident);
        if !whole || out.len() == 2 {
            break;
        }
    }
    out
}

fn layered_files() -> Vec<PathBuf> {
    rust_files(&src())
        .into_iter()
        .filter(|f| module_path(f).len() > 1 || f.file_name().is_some_and(|n| n == "mod.rs"))
        .collect()
}

#[test]
fn every_import_goes_down_the_layers() {
    let mut wrong = Vec::new();
    for file in layered_files() {
        let me = module_path(&file);
        let layer = me[0].as_str();
        let mine = rank(layer).unwrap_or_else(|| panic!("{}: not in a layer", file.display()));
        for (to, module) in references(&file) {
            let theirs = rank(&to).unwrap();
            let allowed = to == layer || theirs < mine;
            if !allowed {
                wrong.push(format!("{} imports {to}::{module}", me.join("::")));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layer rule:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn modules_import_each_other_without_cycles() {
    // Nodes are `layer::module` (a folder such as edge/ec2 is one node).
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in layered_files() {
        let me = module_path(&file);
        let node = format!("{}::{}", me[0], me.get(1).cloned().unwrap_or_default());
        let entry = graph.entry(node.clone()).or_default();
        for (layer, module) in references(&file) {
            let to = format!("{layer}::{module}");
            if to != node && !module.is_empty() {
                entry.insert(to);
            }
        }
    }
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for next in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(cycle) = visit(n, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
    assert!(graph.len() > 20, "{graph:?}");
}

#[test]
fn the_checker_sees_a_wrong_way_import() {
    // The parser itself: a core file naming the edge would be caught.
    assert_eq!(segments("edge::ec2::{Ec2, AwsError}"), vec!["edge", "ec2"]);
    assert_eq!(
        segments("model::RouteTarget;"),
        vec!["model", "RouteTarget"]
    );
    let coordinator = src().join("run/coordinator/mod.rs");
    let refs = references(&coordinator);
    assert!(
        refs.contains(&("core".into(), "failover".into())),
        "{refs:?}"
    );
    assert!(
        refs.contains(&("run".into(), "peers".into())),
        "super:: is resolved: {refs:?}"
    );
}

#[test]
fn only_exec_spawns_processes() {
    for file in rust_files(&src()) {
        let text = std::fs::read_to_string(&file).unwrap();
        let spawns = text.contains("Command::new") || text.contains("process::Command");
        let is_exec = file.ends_with("edge/exec.rs");
        assert!(!spawns || is_exec, "{} spawns a process", file.display());
    }
}

#[test]
fn no_ec2_state_is_compared_as_a_string() {
    let provisioner = Path::new(env!("CARGO_MANIFEST_DIR")).join("../provisioner/src");
    for file in rust_files(&src())
        .into_iter()
        .chain(rust_files(&provisioner))
    {
        let text = std::fs::read_to_string(&file).unwrap();
        for state in [
            "running",
            "stopped",
            "terminated",
            "pending",
            "shutting-down",
        ] {
            for op in ["== \"", "!= \""] {
                let needle = format!("{op}{state}\"");
                assert!(
                    !text.contains(&needle),
                    "{}: compares an EC2 state as a string ({needle}); use InstanceState",
                    file.display()
                );
            }
        }
        assert!(
            !text.contains("expect(\"validated\")"),
            "{}",
            file.display()
        );
    }
}

#[test]
fn files_have_one_concern_and_stay_short() {
    let provisioner = Path::new(env!("CARGO_MANIFEST_DIR")).join("../provisioner/src");
    for file in rust_files(&src())
        .into_iter()
        .chain(rust_files(&provisioner))
    {
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        assert!(lines <= 500, "{}: {lines} lines (split it)", file.display());
    }
}

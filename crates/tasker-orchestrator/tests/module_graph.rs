//! The crate's modules import each other without a cycle, and the runtime/pipeline boundary
//! holds: `runtime` runs and watches pools of any executor and may use the pipeline's executor
//! trait and types; `pipeline` never imports `runtime`. Read from the sources, so a new import
//! that closes a cycle fails here.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The module a source file belongs to, at the granularity of `pipeline::x`, `runtime::x` and
/// `engine` (a folder module's files, `tests.rs` included, belong to the folder).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [top] if top == "lib" => None,
        [top, ..] if top == "pipeline" || top == "runtime" => {
            Some(match parts.get(1).map(String::as_str) {
                None | Some("mod") => top.clone(),
                Some(second) => format!("{top}::{second}"),
            })
        }
        [top, ..] => Some(top.clone()),
        [] => None,
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules a file's code (not its comments) names through `crate::`, grouped imports
/// included.
fn imports(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        // A grouped import names each top-level path inside its braces.
        let scope = if let Some(inner) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = inner
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(inner.len(), |(i, _)| i);
            &inner[..end]
        } else {
            rest
        };
        let words: Vec<&str> = scope
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| !w.is_empty())
            .collect();
        let first_only = !rest.starts_with('{');
        for word in words.iter().take(if first_only { 1 } else { usize::MAX }) {
            let segs: Vec<&str> = word.split("::").filter(|s| !s.is_empty()).collect();
            match segs.as_slice() {
                ["pipeline" | "runtime", second, ..] => {
                    found.insert(format!("{}::{second}", segs[0]));
                }
                ["engine", ..] => {
                    found.insert("engine".to_owned());
                }
                _ => {}
            }
        }
    }
    found
}

#[test]
fn modules_form_no_cycle_and_the_pipeline_never_imports_the_runtime() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(imports(&text).into_iter().filter(|m| *m != module));
    }
    assert!(graph.contains_key("pipeline::executor") && graph.contains_key("runtime::pool"));
    for (module, edges) in &graph {
        if module.starts_with("pipeline") {
            let bad: Vec<_> = edges.iter().filter(|e| e.starts_with("runtime")).collect();
            assert!(bad.is_empty(), "{module} imports the runtime: {bad:?}");
        }
    }
    // Depth-first search for a back edge.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = path.iter().position(|n| *n == node) {
            panic!("import cycle: {} -> {node}", path[at..].join(" -> "));
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(node);
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
}

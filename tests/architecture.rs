//! The module map in README's "Architecture" section, checked: which
//! top-level module may use which (no cycles), and which modules do no I/O.
//! Reads the source as text: `crate::<module>` paths outside comments and
//! outside test code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may use. Keep in step with the
/// README's table.
const ALLOWED: &[(&str, &[&str])] = &[
    ("keys", &[]),
    ("metrics", &[]),
    ("config", &["keys"]),
    ("policy", &["keys", "config", "metrics"]),
    ("store", &["keys", "config"]),
    ("reload", &["keys", "store", "metrics"]),
    ("limits", &["keys", "config", "metrics"]),
    ("proxy", &["keys", "policy", "config", "metrics", "limits"]),
    ("admin", &["keys", "config", "store", "metrics"]),
    ("server", &["proxy", "config", "metrics"]),
    (
        "cli",
        &[
            "keys", "metrics", "config", "policy", "store", "reload", "proxy", "server", "limits",
            "admin",
        ],
    ),
];

/// Modules that must do no I/O: neither the runtime, nor HTTP I/O, nor the
/// database driver, nor files, nor sockets, nor the environment.
const PURE: &[&str] = &["keys", "policy", "config"];
const IO_MARKERS: &[&str] = &[
    "tokio",
    "hyper",
    "tokio_postgres",
    "std::fs",
    "fs::",
    "File::",
    "OpenOptions",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "std::env",
    "std::process",
    "std::io::stdin",
    "std::io::stdout",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file that ships: comments dropped, `#[cfg(test)]` items
/// (a `mod tests;` line, or a braced item up to its closing brace) left out,
/// nothing of a `tests.rs` file, and grouped paths spelt out
/// (`use std::{env, fs}` also reads as `std::env`, `std::fs`).
fn shipped_code(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}"));
    let mut code = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        if line.trim_start().starts_with("#[cfg(test)]") {
            // Skip the item: one line ending in `;`, or until braces balance.
            let mut depth = 0i64;
            for item in lines.by_ref() {
                depth += item.matches('{').count() as i64 - item.matches('}').count() as i64;
                if depth <= 0 && (item.trim_end().ends_with(';') || item.contains('}')) {
                    break;
                }
            }
            continue;
        }
        code.push_str(line);
        code.push('\n');
    }
    let expanded = spell_out_groups(&code);
    code + &expanded
}

/// `crate::{a, b::c}` → `crate::a crate::b`; `std::{env, fs}` → `std::env std::fs`.
fn spell_out_groups(code: &str) -> String {
    let mut out = String::new();
    for prefix in ["crate::", "std::"] {
        let mut rest = code;
        while let Some(i) = rest.find(&format!("{prefix}{{")) {
            rest = &rest[i + prefix.len() + 1..];
            let group = rest.split('}').next().unwrap_or_default();
            for item in group.split(',') {
                let first = item.trim().split("::").next().unwrap_or_default();
                if !first.is_empty() {
                    out.push_str(&format!("{prefix}{first}\n"));
                }
            }
        }
    }
    out
}

/// Top-level module → (file, code) of every file in it.
fn modules() -> BTreeMap<String, Vec<(PathBuf, String)>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut map: BTreeMap<String, Vec<(PathBuf, String)>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap_or(&file);
        let first = rel
            .components()
            .next()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .unwrap_or_default();
        if first == "lib" || first == "main" {
            continue;
        }
        let code = shipped_code(&file);
        map.entry(first).or_default().push((file, code));
    }
    map
}

/// The top-level modules a piece of code names as `crate::<module>`.
fn uses(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

#[test]
fn every_module_uses_only_what_the_map_allows() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut problems = Vec::new();
    for (module, files) in modules() {
        let Some(may) = allowed.get(module.as_str()) else {
            problems.push(format!(
                "src/{module} is not in the module map: add it to ALLOWED and the README"
            ));
            continue;
        };
        for (file, code) in files {
            for used in uses(&code) {
                if used != module && !may.contains(&used.as_str()) {
                    problems.push(format!(
                        "{} uses crate::{used}, which `{module}` may not use",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_module_map_has_no_cycle() {
    // Depth-first search for a back edge over the allowed uses.
    fn visit<'a>(
        m: &'a str,
        graph: &BTreeMap<&'a str, &'a [&'a str]>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(m) {
            return;
        }
        assert!(!path.contains(&m), "cycle: {} -> {m}", path.join(" -> "));
        path.push(m);
        for next in graph.get(m).copied().unwrap_or(&[]) {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(m);
    }
    let graph: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn keys_policy_and_config_do_no_io() {
    let modules = modules();
    let mut problems = Vec::new();
    for module in PURE {
        let files = modules
            .get(*module)
            .unwrap_or_else(|| panic!("src/{module} is missing"));
        for (file, code) in files {
            for marker in IO_MARKERS {
                if code.contains(marker) {
                    problems.push(format!("{} mentions `{marker}`", file.display()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_a_forbidden_use() {
    // The scan itself: a use in code counts, one in a comment does not.
    assert!(uses("use crate::store::FileStore;\n").contains("store"));
    assert!(uses("let x = crate::reload::POLL_INTERVAL;").contains("reload"));
    let commented = shipped_code_of("/// see crate::store\nfn f() {}\n");
    assert!(uses(&commented).is_empty());
    // Grouped imports count, and so does code after a test item.
    let grouped = shipped_code_of(
        "use crate::{keys, store::FileStore};\nuse std::{env, fs};\n#[cfg(test)]\nfn t() {\n    crate::reload::x();\n}\nfn g() { crate::server::y(); }\n",
    );
    let used = uses(&grouped);
    assert!(used.contains("keys") && used.contains("store"), "{used:?}");
    assert!(
        used.contains("server") && !used.contains("reload"),
        "{used:?}"
    );
    assert!(grouped.contains("std::env") && grouped.contains("std::fs"));
}

fn shipped_code_of(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("x.rs");
    std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
    shipped_code(&file)
}

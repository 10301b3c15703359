//! The layering of `src/` as a test: dependencies point down only.
//!
//! Every top-level module of the library has a rank (the table in
//! docs/ARCHITECTURE.md); a module may use modules of a lower rank and the
//! leaf utilities (`metrics`, `shutdown`, which use nothing of the crate).
//! The test reads every `src/**/*.rs` of the library as text, finds each
//! `crate::<module>` path outside comments and fails, naming file and line,
//! when a lower layer reaches a higher one. It also checks that the shared
//! actor protocol (`actors/messages.rs`) imports no actor, and that every
//! module `lib.rs` declares has a place in the table.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first.
const LAYERS: &[&str] = &[
    "domain",
    "envelope",
    "config",
    "store",
    "lease",
    "app",
    "relay",
    "projection",
    "actors",
    "http",
    "daemon",
    "bench",
];

/// Leaf utilities: anyone may use them; they use nothing of the crate.
const LEAVES: &[&str] = &["args", "metrics", "shutdown"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a library file belongs to (None for the binary:
/// `main.rs` and `cli/`, and for `lib.rs`).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.as_str() {
        "main.rs" | "lib.rs" | "cli" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// `(line number, module)` of every `crate::<module>` outside `//` comments.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = match line.find("//") {
            Some(c) => &line[..c],
            None => line,
        };
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `outboxd_crate::`
            }
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push((i + 1, name));
            }
        }
    }
    out
}

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == module)
}

/// Whether `from` may use `to`.
fn allowed(from: &str, to: &str) -> bool {
    if from == to {
        return true;
    }
    if LEAVES.contains(&from) {
        return false;
    }
    if LEAVES.contains(&to) {
        return true;
    }
    matches!((rank(from), rank(to)), (Some(f), Some(t)) if t < f)
}

fn may_use(from: &str) -> String {
    let mut v: Vec<&str> = if LEAVES.contains(&from) {
        vec![]
    } else {
        let r = rank(from).unwrap_or(0);
        LAYERS[..r].iter().chain(LEAVES).copied().collect()
    };
    if v.is_empty() {
        v.push("nothing of the crate");
    }
    v.join(", ")
}

#[test]
fn lower_layers_never_use_higher_ones() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &files {
        let Some(from) = module_of(f) else { continue };
        seen.insert(from.clone());
        assert!(
            rank(&from).is_some() || LEAVES.contains(&from.as_str()),
            "{}: module `{from}` has no place in the layer table of tests/layering.rs (and docs/ARCHITECTURE.md)",
            f.display()
        );
        let text = std::fs::read_to_string(f).unwrap();
        for (line, to) in crate_paths(&text) {
            if !allowed(&from, &to) {
                violations.push(format!(
                    "{}:{line}: `{from}` uses `crate::{to}`; {from} may use: {}",
                    f.strip_prefix(src()).unwrap().display(),
                    may_use(&from)
                ));
            }
        }
    }
    assert!(violations.is_empty(), "imports against the layering:\n{}", violations.join("\n"));
    assert!(seen.len() >= LAYERS.len(), "found only {seen:?}");
}

#[test]
fn every_library_module_has_a_layer() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(m) = line.trim().strip_prefix("pub mod ").and_then(|m| m.strip_suffix(';')) {
            assert!(
                rank(m).is_some() || LEAVES.contains(&m),
                "lib.rs declares `{m}`: add it to the layer table (tests/layering.rs, docs/ARCHITECTURE.md)"
            );
        }
    }
}

/// The shared actor protocol knows no actor: a message handled by one actor
/// lives next to that actor.
#[test]
fn actor_messages_import_no_actor() {
    let text = std::fs::read_to_string(src().join("actors/messages.rs")).unwrap();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        assert!(
            !code.contains("super::") && !code.contains("crate::actors"),
            "actors/messages.rs:{}: `{}` reaches into the actors; shared messages import no actor type",
            i + 1,
            line.trim()
        );
    }
}

#[test]
fn the_checker_sees_what_it_should() {
    let text = "use crate::store::X;\n// use crate::http::Y;\nlet a = crate::relay::f(); // crate::daemon\nmy_crate::z";
    let found: Vec<(usize, String)> = crate_paths(text);
    assert_eq!(found, vec![(1, "store".to_string()), (3, "relay".to_string())]);
    assert!(allowed("relay", "store") && allowed("relay", "metrics") && allowed("actors", "relay"));
    assert!(!allowed("store", "relay") && !allowed("config", "relay") && !allowed("metrics", "app"));
    assert!(!allowed("relay", "projection"), "projection builds on relay::cdc, not the other way");
}

/// The file map in docs/ARCHITECTURE.md ("Inside `src/`") names every file
/// of the library's module folders (its tests, `mod.rs` and test kits aside),
/// so the map cannot drift from the tree.
#[test]
fn architecture_names_every_source_file() {
    let doc = std::fs::read_to_string(src().join("../docs/ARCHITECTURE.md")).unwrap();
    let start = doc.find("Inside `src/`").expect("the file map in docs/ARCHITECTURE.md");
    let block: String = doc[start..].split("```").nth(1).expect("the file map's code block").to_string();
    let words: BTreeSet<&str> =
        block.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut missing = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(src()).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        let in_folder = rel.components().count() > 1;
        let skip = stem == "mod" || stem.ends_with("_tests") || stem == "testkit" || top == "cli";
        if in_folder && !skip && !words.contains(stem.as_str()) {
            missing.push(rel.display().to_string());
        }
    }
    assert!(missing.is_empty(), "docs/ARCHITECTURE.md's file map does not name: {missing:?}");
}

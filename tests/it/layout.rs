//! The floor plan stays true: imports between the top-level modules of `src/` run one way (no cycle), the
//! leaves import nothing of the crate above them, and no source file grows into several things.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to (`src/tokens/store.rs` → `tokens`, `src/exit.rs` → `exit`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules a file's code (unit tests excluded) names: `crate::x`, `$crate::x`, and the items of
/// `use crate::{x, y::z}` lists.
fn imports_of(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            // A grouped `use crate::{a::b, c, d::{e, f}}`: the first name of each top-level item.
            let (mut depth, mut item_start) = (0usize, true);
            for (j, ch) in list.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        out.insert(ident(&list[j..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(&src()) {
        let m = module_of(&file);
        if m == "lib" || m == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = g.entry(m.clone()).or_default();
        deps.extend(imports_of(&text).into_iter().filter(|d| *d != m));
    }
    g
}

/// A cycle through `start`, if there is one.
fn cycle_from(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        g: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in g.get(node).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(g, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn the_import_reader_sees_grouped_and_inline_paths() {
    let text = "use crate::{\n    app::Worker,\n    domain::{BankDay, Cents},\n    store::{Store, with_pool},\n};\n\
                fn f() { crate::exit::classify(x); }\n#[cfg(test)]\nmod tests { use crate::sandbox::X; }";
    let got: Vec<String> = imports_of(text).into_iter().collect();
    assert_eq!(got, ["app", "domain", "exit", "store"]);
}

#[test]
fn imports_between_the_modules_of_src_run_one_way() {
    let g = graph();
    assert!(g.len() >= 15, "the reader found too few modules: {g:?}");
    for m in g.keys() {
        if let Some(cycle) = cycle_from(&g, m) {
            panic!("import cycle among the modules of src/: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_leaves_import_nothing_above_them() {
    let g = graph();
    let allowed: [(&str, &[&str]); 5] = [
        ("failure", &[]),
        ("domain", &["failure", "secrets"]),
        ("secrets", &["failure"]),
        ("shutdown", &[]),
        ("telemetry", &[]),
    ];
    for (leaf, may) in allowed {
        let deps = g.get(leaf).unwrap_or_else(|| panic!("module {leaf} is missing"));
        let extra: Vec<&String> = deps.iter().filter(|d| !may.contains(&d.as_str())).collect();
        assert!(extra.is_empty(), "the leaf {leaf} imports {extra:?}");
    }
    // The Astra client knows nothing of runs, jobs or the process.
    let astra = &g["astra"];
    for above in ["runner", "jobs", "app", "tokens", "reconcile"] {
        assert!(!astra.contains(above), "astra imports {above}");
    }
}

#[test]
fn no_source_file_grows_past_five_hundred_lines() {
    for file in sources(&src()) {
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        assert!(lines <= 500, "{} has {lines} lines: it is probably two things", file.display());
    }
}

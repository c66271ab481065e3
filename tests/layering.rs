//! The crate's layering, as `src/lib.rs` states it, checked on the source: every `crate::…` path
//! in a module names a module of its own layer or a lower one, and only `src/web` names the
//! browser's bindings (wasm-bindgen, web-sys, js-sys).

use std::path::{Path, PathBuf};

/// Layers from the bottom: a module may use its own layer and those below. `error` (the crate's
/// error type, which wraps every layer's) may be named anywhere.
const LAYERS: &[(&str, u32)] = &[("device", 0), ("weights", 1), ("nn", 2), ("models", 3), ("zepo", 4), ("tools", 5), ("web", 5)];

fn rank(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
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

/// The code of a file without its comments (doc comments may name any module).
fn code(path: &Path) -> String {
    strip_comments(&std::fs::read_to_string(path).unwrap())
}

fn strip_comments(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The `crate::<module>` names in `code`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            found.push(name);
        }
    }
    found
}

#[test]
fn imports_follow_the_layering() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut against = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        let Some(own) = rank(&top) else { continue }; // lib.rs, error.rs, bin/
        checked += 1;
        for used in crate_paths(&code(file)) {
            if let Some(r) = rank(&used) {
                if r > own || (r == own && used != top) {
                    against.push(format!("{}: uses crate::{used}", rel.display()));
                }
            }
        }
    }
    assert!(checked > 40, "only {checked} files checked");
    assert!(
        against.is_empty(),
        "imports against the layering (device ← weights ← nn ← models ← zepo ← tools, web):\n  {}",
        against.join("\n  ")
    );
}

#[test]
fn only_web_touches_the_browser_bindings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let outside: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(root.join("src/web")))
        .filter(|f| ["wasm_bindgen", "web_sys", "js_sys"].iter().any(|b| code(f).contains(b)))
        .map(|f| f.display().to_string())
        .collect();
    assert!(outside.is_empty(), "browser bindings outside src/web: {outside:?}");
}

#[test]
fn the_checker_sees_a_back_edge() {
    let code = strip_comments("use crate::zepo::load; // crate::web\nlet x = crate::models::unet::X;");
    assert_eq!(crate_paths(&code), ["zepo", "models"]);
}

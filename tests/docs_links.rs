//! Every relative link in the README and in `docs/` leads somewhere: the file exists, and an
//! anchor names a heading of that file (as the usual forges derive anchors from headings).
//! Pages move between the README and `docs/`; a link left behind fails here, not for a reader.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pages whose links are checked.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![
        root().join("README.md"),
        root().join("BENCHMARKS.md"),
        root().join("benches/NOTES.md"),
    ];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("readable docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// Markdown lines outside fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// A heading's anchor: lower case, punctuation dropped except `-` and `_`, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page; a repeated heading gets `-1`, `-2`, ... as on the forges.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = HashSet::new();
    for line in prose(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let n = seen.entry(base.clone()).or_default();
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of the inline links `[text](target)` of a page's prose.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            if !target.contains(char::is_whitespace) {
                out.push(target.to_string());
            }
            rest = &rest[end..];
        }
    }
    out
}

fn check(page: &Path, target: &str) -> Result<(), String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return Ok(());
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let dir = page.parent().expect("a page is in a directory");
    let file = if path.is_empty() {
        page.to_path_buf()
    } else {
        dir.join(path)
    };
    if !file.exists() {
        return Err(format!("{target}: {} does not exist", file.display()));
    }
    if let Some(anchor) = anchor {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("{target}: cannot read {}: {e}", file.display()))?;
        if !anchors(&text).contains(anchor) {
            return Err(format!("{target}: no heading with anchor #{anchor}"));
        }
    }
    Ok(())
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("readable page");
        for target in links(&text) {
            checked += 1;
            if let Err(e) = check(&page, &target) {
                let name = page.strip_prefix(root()).unwrap_or(&page).display();
                broken.push(format!("{name}: {e}"));
            }
        }
    }
    assert!(
        checked > 30,
        "only {checked} links found: is the parser blind?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_itself_catches_a_missing_file_and_a_missing_anchor() {
    let readme = root().join("README.md");
    assert!(check(&readme, "docs/operating.md").is_ok());
    assert!(check(&readme, "docs/operating.md#how-it-stays-correct").is_ok());
    assert!(check(&readme, "docs/no-such-page.md").is_err());
    assert!(check(&readme, "docs/operating.md#no-such-heading").is_err());
    assert_eq!(
        slug(" Verification: what `verified` and `unverified` mean"),
        "verification-what-verified-and-unverified-mean"
    );
}

//! Docs that run: every TOML and JSON example in the documentation must load.
//!
//! Each ```` ```toml ```` block of `README.md` and `docs/*.md` is loaded with
//! `Config::from_toml_str`, which also validates it. A block may be a
//! fragment (one section, a few keys): every key has a default, so a
//! fragment is a whole configuration too. Each ```` ```json ```` block must
//! parse with serde_json, either as one JSON value or, for a block that shows
//! several messages, as one JSON value per non-empty line.
//!
//! A block that is deliberately not loadable (one that shows a mistake and
//! the error it gets, say, or TOML that is not a tidings configuration, such
//! as a `Cargo.toml` snippet) is marked with `ignore` in its fence's info
//! string, after the language and a comma: ```` ```toml,ignore ````. Only the
//! first word of the info string names the language, so renderers still
//! highlight it.
//!
//! The ```` ```rust ```` blocks of README.md are compiled as doctests
//! (`src/lib.rs` includes the README under `cfg(doctest)`).

use std::path::{Path, PathBuf};

use tidings::Config;

/// A fenced code block: where it starts, its info string, and its text.
struct Block {
    file: PathBuf,
    /// 1-based line of the opening fence.
    line: usize,
    language: String,
    ignore: bool,
    text: String,
}

impl Block {
    fn place(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// The fenced blocks of one Markdown text (``` fences; no nesting).
fn fenced_blocks(file: &Path, markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let Some(info) = trimmed.strip_prefix("```") else {
            if let Some(block) = open.as_mut() {
                block.text.push_str(line);
                block.text.push('\n');
            }
            continue;
        };
        match open.take() {
            Some(block) => blocks.push(block),
            None => {
                let mut words = info.trim().split(',').map(str::trim);
                let language = words.next().unwrap_or_default().to_ascii_lowercase();
                let ignore = words.any(|word| word == "ignore");
                open = Some(Block {
                    file: file.to_path_buf(),
                    line: index + 1,
                    language,
                    ignore,
                    text: String::new(),
                });
            }
        }
    }
    assert!(
        open.is_none(),
        "{}: a code fence is never closed",
        file.display()
    );
    blocks
}

/// README.md and every Markdown file under docs/.
fn documentation() -> Vec<Block> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("read docs/")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut blocks = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let shown = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        blocks.extend(fenced_blocks(&shown, &text));
    }
    blocks
}

fn blocks_in(language: &str) -> Vec<Block> {
    documentation()
        .into_iter()
        .filter(|block| block.language == language && !block.ignore)
        .collect()
}

#[test]
fn every_toml_block_loads() {
    let blocks = blocks_in("toml");
    // docs/configuration.md holds the full example; finding none means the
    // extraction broke, not that there is nothing to check.
    assert!(!blocks.is_empty(), "no ```toml blocks found");
    let failures: Vec<String> = blocks
        .iter()
        .filter_map(|block| {
            Config::from_toml_str(&block.text)
                .err()
                .map(|e| format!("{}: {e}", block.place()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "TOML examples that do not load:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_json_block_parses() {
    let blocks = blocks_in("json");
    assert!(
        blocks
            .iter()
            .any(|block| block.file.ends_with("docs/protocol.md")),
        "no ```json blocks found in docs/protocol.md"
    );
    let mut failures = Vec::new();
    for block in &blocks {
        if serde_json::from_str::<serde_json::Value>(&block.text).is_ok() {
            continue;
        }
        // Several messages, one per line, as a client would see them.
        for (offset, line) in block.text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            if let Err(e) = serde_json::from_str::<serde_json::Value>(line) {
                failures.push(format!(
                    "{}:{}: {e}",
                    block.file.display(),
                    block.line + 1 + offset
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "JSON examples that do not parse:\n{}",
        failures.join("\n")
    );
}

#[test]
fn fences_are_read_with_their_info_string() {
    // The extraction itself: languages, the ignore mark, and the text.
    let markdown = "text\n```toml\na = 1\n```\n```toml,ignore\nbad\n```\n```json\n{}\n```\n";
    let blocks = fenced_blocks(Path::new("x.md"), markdown);
    let summary: Vec<(usize, &str, bool, &str)> = blocks
        .iter()
        .map(|b| (b.line, b.language.as_str(), b.ignore, b.text.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (2, "toml", false, "a = 1\n"),
            (5, "toml", true, "bad\n"),
            (8, "json", false, "{}\n"),
        ]
    );
}

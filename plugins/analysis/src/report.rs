//! Whole-tree findings: duplicated blocks across files, coverage reports, the quality score
//! and the recommendations.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// Consecutive significant lines that make a duplicated block.
pub const DUPLICATE_WINDOW: usize = 6;

/// A line worth comparing: trimmed code with at least this many characters (so that runs of
/// `}` or `else:` do not count as duplication).
const MIN_SIGNIFICANT_CHARS: usize = 4;

/// One run of duplicated lines in one file.
#[derive(Debug, Clone)]
pub struct DuplicateBlock {
    pub file: usize,
    pub first_line: usize,
    pub last_line: usize,
}

/// Significant lines of one file: (1-based line number, normalised text).
pub type Significant = Vec<(usize, String)>;

pub fn significant_lines(code: &[String], kinds: &[crate::lang::LineKind]) -> Significant {
    code.iter()
        .zip(kinds)
        .enumerate()
        .filter(|(_, (_, kind))| **kind == crate::lang::LineKind::Code)
        .map(|(i, (line, _))| (i + 1, line.split_whitespace().collect::<Vec<_>>().join(" ")))
        .filter(|(_, line)| {
            line.chars().filter(|c| !c.is_whitespace()).count() >= MIN_SIGNIFICANT_CHARS
        })
        .collect()
}

/// Blocks of [`DUPLICATE_WINDOW`] or more significant lines that appear more than once, in
/// the same file or across files. Every copy is a block; overlapping windows merge.
pub fn duplicates(files: &[Significant]) -> Vec<DuplicateBlock> {
    let mut seen: HashMap<[u8; 32], Vec<(usize, usize)>> = HashMap::new();
    for (f, lines) in files.iter().enumerate() {
        for start in 0..lines.len().saturating_sub(DUPLICATE_WINDOW - 1) {
            let mut hasher = Sha256::new();
            for (_, text) in &lines[start..start + DUPLICATE_WINDOW] {
                hasher.update(text.as_bytes());
                hasher.update(b"\n");
            }
            seen.entry(hasher.finalize().into())
                .or_default()
                .push((f, start));
        }
    }
    // Mark every line of every window that occurs twice or more (not overlapping itself).
    let mut marked: Vec<Vec<bool>> = files.iter().map(|l| vec![false; l.len()]).collect();
    for places in seen.values() {
        if places.len() < 2 {
            continue;
        }
        // Places are in (file, start) order: copies exist when the first and the last are in
        // different files or far enough apart in one.
        let (first, last) = (places[0], places[places.len() - 1]);
        let distinct = first.0 != last.0 || last.1 - first.1 >= DUPLICATE_WINDOW;
        if !distinct {
            continue;
        }
        for (f, start) in places {
            for flag in &mut marked[*f][*start..*start + DUPLICATE_WINDOW] {
                *flag = true;
            }
        }
    }
    let mut blocks = Vec::new();
    for (f, flags) in marked.iter().enumerate() {
        let mut i = 0;
        while i < flags.len() {
            if !flags[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i < flags.len() && flags[i] {
                i += 1;
            }
            blocks.push(DuplicateBlock {
                file: f,
                first_line: files[f][start].0,
                last_line: files[f][i - 1].0,
            });
        }
    }
    blocks
}

/// Covered and coverable lines from an lcov tracefile (`LH:`/`LF:` per source file).
pub fn lcov(text: &str) -> Option<(u64, u64)> {
    let (mut hit, mut found, mut any) = (0u64, 0u64, false);
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("LH:") {
            hit += n.trim().parse::<u64>().ok()?;
            any = true;
        } else if let Some(n) = line.strip_prefix("LF:") {
            found += n.trim().parse::<u64>().ok()?;
            any = true;
        }
    }
    any.then_some((hit, found))
}

/// Covered and coverable lines from a Cobertura report's root element (`lines-covered` and
/// `lines-valid`, or `line-rate` scaled to 10,000 lines when those are absent).
pub fn cobertura(text: &str) -> Option<(u64, u64)> {
    let start = text.find("<coverage")?;
    let element = &text[start..start + text[start..].find('>')?];
    let attribute = |name: &str| -> Option<&str> {
        let at = element.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(&element[at..at + element[at..].find('"')?])
    };
    if let (Some(covered), Some(valid)) = (attribute("lines-covered"), attribute("lines-valid")) {
        return Some((covered.parse().ok()?, valid.parse().ok()?));
    }
    let rate: f64 = attribute("line-rate")?.parse().ok()?;
    (0.0..=1.0)
        .contains(&rate)
        .then(|| ((rate * 10_000.0).round() as u64, 10_000))
}

/// Shares of functions over each threshold, and of code lines duplicated.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ratios {
    pub complex: f64,
    pub long: f64,
    pub nested: f64,
    pub many_params: f64,
    pub duplicated: f64,
}

/// The 0–10 quality score:
///
/// `10 − 3·complex − 2·long − 1.5·nested − 1·many_params − 2.5·min(1, 2·duplicated)`
///
/// where `complex`, `long`, `nested` and `many_params` are the shares of functions with
/// complexity above 10, more than 50 lines, nesting deeper than 4 and more than 5 parameters,
/// and `duplicated` is the share of code lines inside duplicated blocks (so 50% duplication
/// costs the full 2.5). Clamped to 0–10 and rounded to one decimal.
pub fn quality_score(r: Ratios) -> f64 {
    let score = 10.0
        - 3.0 * r.complex
        - 2.0 * r.long
        - 1.5 * r.nested
        - 1.0 * r.many_params
        - 2.5 * (2.0 * r.duplicated).min(1.0);
    (score.clamp(0.0, 10.0) * 10.0).round() / 10.0
}

//! Functions: where they are, how long, how branchy, how deeply nested, how many parameters.
//!
//! Works on the lexer's `code` view (comments and string contents blanked), so braces and
//! keywords inside strings do not count.
//!
//! - Recognised: Rust `fn name(`; Go `func name(` and methods `func (r T) name(`; JavaScript
//!   and TypeScript `function name(`, `name = (…) => {` (arrows with a parenthesised
//!   parameter list), `name: function(`, and class methods `name(…) {`; Python `def name(` and `async def`. Functions without a block body (trait
//!   declarations, one-expression arrows, lambdas) are not counted.
//! - **Length**: lines from the signature to the closing brace (or the last line of a Python
//!   body), inclusive.
//! - **Cyclomatic complexity**: 1 + one per decision: `if`, `while`, `for`, `&&`, `||` (Rust,
//!   Go, JS/TS), each `match` arm beyond the first (Rust), `case` (Go, JS/TS, Python),
//!   `catch` and `??` and the `?:` ternary (JS/TS), `elif`, `except`, `and`, `or` (Python).
//!   A nested function's decisions count for it and for the function around it.
//! - **Nesting**: the deepest block inside the body (the body itself is 0).
//! - **Parameters**: top-level commas in the parameter list, without `self`/`cls`.

use serde::Serialize;

use crate::lang::{Language, Lexed, find_word, is_ident};

#[derive(Debug, Clone, Serialize)]
pub struct Function {
    pub name: String,
    /// 1-based line of the signature.
    pub line: usize,
    pub length: usize,
    pub complexity: u32,
    pub params: usize,
    pub nesting: usize,
    /// Parameter names without an annotation (Python only), for the types analysis.
    #[serde(skip)]
    pub unannotated_params: Vec<String>,
    #[serde(skip)]
    pub return_annotated: bool,
}

/// The `code` view joined, with a map from offsets back to lines.
struct Joined {
    text: Vec<char>,
    line_starts: Vec<usize>,
}

impl Joined {
    fn new(lines: &[String]) -> Self {
        let mut text = Vec::new();
        let mut line_starts = Vec::with_capacity(lines.len());
        for line in lines {
            line_starts.push(text.len());
            text.extend(line.chars());
            text.push('\n');
        }
        Self { text, line_starts }
    }

    fn line_of(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(line) => line,
            Err(next) => next.saturating_sub(1),
        }
    }

    fn skip_space(&self, mut i: usize) -> usize {
        while i < self.text.len() && self.text[i].is_whitespace() {
            i += 1;
        }
        i
    }

    fn ident(&self, i: usize) -> (String, usize) {
        let mut end = i;
        while end < self.text.len() && is_ident(self.text[end]) {
            end += 1;
        }
        (self.text[i..end].iter().collect(), end)
    }

    /// The offset just past the bracket matching the one at `open`.
    fn matching(&self, open: usize) -> Option<usize> {
        let (o, c) = match self.text.get(open)? {
            '(' => ('(', ')'),
            '[' => ('[', ']'),
            '{' => ('{', '}'),
            '<' => ('<', '>'),
            _ => return None,
        };
        let mut depth = 0usize;
        for (k, ch) in self.text[open..].iter().enumerate() {
            if *ch == o {
                depth += 1;
            } else if *ch == c {
                depth -= 1;
                if depth == 0 {
                    return Some(open + k + 1);
                }
            }
        }
        None
    }

    fn slice(&self, from: usize, to: usize) -> String {
        self.text[from..to.min(self.text.len())].iter().collect()
    }
}

const JS_KEYWORDS: &[&str] = &[
    "if", "for", "while", "switch", "catch", "function", "return", "with", "new", "typeof",
    "await", "yield", "else", "do", "try", "super", "import", "export",
];

pub fn functions(lexed: &Lexed, language: Language) -> Vec<Function> {
    if language == Language::Python {
        return python_functions(lexed);
    }
    let joined = Joined::new(&lexed.code);
    let mut found: Vec<(String, usize)> = Vec::new(); // (name, offset of '(')
    for (number, line) in lexed.code.iter().enumerate() {
        let base = joined.line_starts[number];
        let chars_before = |byte: usize| line[..byte].chars().count();
        match language {
            Language::Rust => {
                for at in find_word(line, "fn") {
                    let i = joined.skip_space(base + chars_before(at) + 2);
                    let (name, mut j) = joined.ident(i);
                    if name.is_empty() {
                        continue;
                    }
                    j = joined.skip_space(j);
                    if joined.text.get(j) == Some(&'<') {
                        j = joined.skip_space(joined.matching(j).unwrap_or(j));
                    }
                    if joined.text.get(j) == Some(&'(') {
                        found.push((name, j));
                    }
                }
            }
            Language::Go => {
                for at in find_word(line, "func") {
                    let mut i = joined.skip_space(base + chars_before(at) + 4);
                    if joined.text.get(i) == Some(&'(') {
                        i = joined.skip_space(joined.matching(i).unwrap_or(i));
                    }
                    let (name, mut j) = joined.ident(i);
                    if name.is_empty() {
                        continue;
                    }
                    if joined.text.get(j) == Some(&'[') {
                        j = joined.matching(j).unwrap_or(j);
                    }
                    j = joined.skip_space(j);
                    if joined.text.get(j) == Some(&'(') {
                        found.push((name, j));
                    }
                }
            }
            Language::JavaScript | Language::TypeScript => {
                js_candidates(&joined, line, base, &mut found);
            }
            Language::Python => {}
        }
    }

    let mut functions = Vec::new();
    for (name, open) in found {
        let Some(close) = joined.matching(open) else {
            continue;
        };
        let params = count_params(&joined.slice(open + 1, close - 1), language);
        let Some(body) = body_start(&joined, close, language) else {
            continue;
        };
        let Some(end) = joined.matching(body) else {
            continue;
        };
        let first = joined.line_of(open);
        let last = joined.line_of(end - 1);
        let body_text = joined.slice(body, end);
        functions.push(Function {
            name,
            line: first + 1,
            length: last - first + 1,
            complexity: complexity(&body_text, language),
            params,
            nesting: brace_nesting(&body_text),
            unannotated_params: Vec::new(),
            return_annotated: true,
        });
    }
    functions.sort_by_key(|f| f.line);
    functions
}

fn js_candidates(joined: &Joined, line: &str, base: usize, found: &mut Vec<(String, usize)>) {
    let chars_before = |byte: usize| line[..byte].chars().count();
    for at in find_word(line, "function") {
        let mut i = joined.skip_space(base + chars_before(at) + 8);
        if joined.text.get(i) == Some(&'*') {
            i = joined.skip_space(i + 1);
        }
        let (mut name, j) = joined.ident(i);
        let j = joined.skip_space(j);
        if name.is_empty() {
            name = assigned_name(&line[..at]).unwrap_or_else(|| "<anonymous>".to_owned());
        }
        if joined.text.get(j) == Some(&'(') {
            found.push((name, j));
        }
    }
    // Arrow functions with a block body: `name = (a, b) => {` or `name: async x => {`.
    let mut search = 0;
    while let Some(offset) = line[search..].find("=>") {
        let at = search + offset;
        search = at + 2;
        let after = line[at + 2..].trim_start();
        if !after.starts_with('{') {
            continue;
        }
        let mut before = line[..at].trim_end();
        // A TypeScript return type between the parameters and the arrow: `(n): number =>`.
        if !before.ends_with(')')
            && let Some(close) = before.rfind(')')
            && before[close + 1..].trim_start().starts_with(':')
        {
            before = &before[..=close];
        }
        if !before.ends_with(')') {
            // `x => {` has no parameter list to measure; such arrows are not counted.
            continue;
        }
        let Some(open_byte) = matching_open(before) else {
            continue;
        };
        let name = assigned_name(&before[..open_byte]).unwrap_or_else(|| "<arrow>".to_owned());
        found.push((name, base + chars_before(open_byte)));
    }
    // Class and object methods: a line that starts with `name(…) {`.
    let trimmed = line.trim_start();
    let mut rest = trimmed;
    for modifier in [
        "async ",
        "static ",
        "public ",
        "private ",
        "protected ",
        "get ",
        "set ",
        "*",
    ] {
        rest = rest
            .strip_prefix(modifier)
            .map(str::trim_start)
            .unwrap_or(rest);
    }
    let name_len = rest
        .chars()
        .take_while(|c| is_ident(*c) || *c == '$')
        .count();
    let name: String = rest.chars().take(name_len).collect();
    if name_len > 0 && !JS_KEYWORDS.contains(&name.as_str()) && rest[name.len()..].starts_with('(')
    {
        let indent = line.chars().count() - trimmed.chars().count();
        let open = base + indent + (trimmed.chars().count() - rest.chars().count()) + name_len;
        if let Some(close) = joined.matching(open) {
            let after = joined.skip_space(close);
            let ends_block = match joined.text.get(after) {
                Some('{') => true,
                // A TypeScript return type: `name(): Type {`.
                Some(':') => {
                    let mut k = after;
                    while k < joined.text.len() && !matches!(joined.text[k], '{' | ';' | '\n') {
                        k += 1;
                    }
                    joined.text.get(k) == Some(&'{')
                }
                _ => false,
            };
            if ends_block && !found.iter().any(|(_, o)| *o == open) {
                found.push((name, open));
            }
        }
    }
}

/// `name` in `const name = `, `name: `, `this.name = `, `name = async ` before a function.
fn assigned_name(before: &str) -> Option<String> {
    let before = before.trim_end();
    let before = before.strip_suffix("async").unwrap_or(before).trim_end();
    let before = before
        .strip_suffix('=')
        .or_else(|| before.strip_suffix(':'))?
        .trim_end();
    // A TypeScript type annotation between the name and `=` is not handled; the name is
    // then the type's, which is rare enough to accept.
    let name: String = before
        .chars()
        .rev()
        .take_while(|c| is_ident(*c) || *c == '$')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Byte offset of the `(` matching the `)` that ends `text`.
fn matching_open(text: &str) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in text.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The `{` that opens the body after the parameter list closed at `close`, unless a `;`
/// (a declaration) or, for arrows, an expression body comes first.
fn body_start(joined: &Joined, close: usize, language: Language) -> Option<usize> {
    let mut depth = 0i32;
    for k in close..joined.text.len() {
        match joined.text[k] {
            '(' | '[' | '<' if language == Language::Rust || language == Language::Go => depth += 1,
            ')' | ']' | '>' if depth > 0 => depth -= 1,
            '{' if depth == 0 => return Some(k),
            ';' | '}' => return None,
            '=' if joined.text.get(k + 1) == Some(&'>') => {
                let next = joined.skip_space(k + 2);
                return (joined.text.get(next) == Some(&'{')).then_some(next);
            }
            _ => {}
        }
    }
    None
}

fn count_params(list: &str, language: Language) -> usize {
    split_top_level(list)
        .into_iter()
        .filter(|p| {
            let p = p.trim();
            let receiver =
                matches!(
                    p,
                    "self" | "&self" | "&mut self" | "mut self" | "cls" | "*" | "/"
                ) || (language == Language::Rust && p.starts_with("&'") && p.ends_with("self"));
            !p.is_empty() && !receiver
        })
        .count()
}

/// Splits on commas outside brackets.
fn split_top_level(list: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut current = String::new();
    for c in list.chars() {
        match c {
            '(' | '[' | '{' | '<' => depth += 1,
            ')' | ']' | '}' | '>' => depth -= 1,
            ',' if depth <= 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
}

fn brace_nesting(body: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for c in body.chars() {
        match c {
            '{' => {
                depth += 1;
                max = max.max(depth);
            }
            '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max.saturating_sub(1)
}

fn complexity(body: &str, language: Language) -> u32 {
    let words: &[&str] = match language {
        Language::Rust => &["if", "while", "for"],
        Language::Go => &["if", "for", "case"],
        Language::JavaScript | Language::TypeScript => &["if", "for", "while", "case", "catch"],
        Language::Python => &["if", "elif", "for", "while", "except", "and", "or", "case"],
    };
    let mut decisions = 0usize;
    for line in body.lines() {
        for word in words {
            decisions += find_word(line, word).len();
        }
        if language != Language::Python {
            decisions += line.matches("&&").count() + line.matches("||").count();
        }
        match language {
            Language::Rust => {
                let arms = line.matches("=>").count();
                let matches = find_word(line, "match").len();
                decisions += arms;
                decisions = decisions.saturating_sub(matches);
            }
            Language::JavaScript | Language::TypeScript => {
                decisions += line.matches("??").count();
                let chars: Vec<char> = line.chars().collect();
                decisions += chars
                    .iter()
                    .enumerate()
                    .filter(|(i, c)| {
                        **c == '?'
                            && !matches!(chars.get(i + 1), Some('.' | '?' | ':'))
                            && !(*i > 0 && chars[i - 1] == '?')
                    })
                    .count();
            }
            _ => {}
        }
    }
    1 + decisions as u32
}

fn indentation(line: &str) -> usize {
    line.chars()
        .take_while(|c| c.is_whitespace())
        .map(|c| if c == '\t' { 4 } else { 1 })
        .sum()
}

fn python_functions(lexed: &Lexed) -> Vec<Function> {
    use crate::lang::LineKind;
    let joined = Joined::new(&lexed.code);
    let mut functions = Vec::new();
    for (number, line) in lexed.code.iter().enumerate() {
        let trimmed = line.trim_start();
        let rest = trimmed
            .strip_prefix("async ")
            .map(str::trim_start)
            .unwrap_or(trimmed);
        let Some(after_def) = rest.strip_prefix("def ") else {
            continue;
        };
        let after_def = after_def.trim_start();
        let name: String = after_def.chars().take_while(|c| is_ident(*c)).collect();
        if name.is_empty() {
            continue;
        }
        let indent = indentation(line);
        let open_byte = line.find('(');
        let Some(open_byte) = open_byte else { continue };
        let open = joined.line_starts[number] + line[..open_byte].chars().count();
        let Some(close) = joined.matching(open) else {
            continue;
        };
        let params_text = joined.slice(open + 1, close - 1);
        let header_end = (close..joined.text.len())
            .find(|k| joined.text[*k] == ':' && joined.text.get(k + 1) != Some(&'='))
            .unwrap_or(close);
        let return_annotated = joined.slice(close, header_end).contains("->");
        let header_last = joined.line_of(header_end);

        // The body: every following line indented deeper, up to the first that is not.
        let mut last = header_last;
        let mut body_indent = None;
        let mut max_indent = 0;
        let mut body = String::new();
        for (k, body_line) in lexed.code.iter().enumerate().skip(header_last + 1) {
            if lexed.kinds[k] != LineKind::Code {
                continue;
            }
            let level = indentation(body_line);
            if level <= indent {
                break;
            }
            body_indent.get_or_insert(level);
            max_indent = max_indent.max(level);
            last = k;
            body.push_str(body_line);
            body.push('\n');
        }
        // A one-line body after the colon (`def f(): return 1`).
        if body_indent.is_none() {
            body.push_str(
                &joined.slice(
                    header_end + 1,
                    joined
                        .line_starts
                        .get(header_last + 1)
                        .copied()
                        .unwrap_or(joined.text.len()),
                ),
            );
        }
        let unit = body_indent.map(|b| b - indent).unwrap_or(4).max(1);
        let nesting = body_indent.map(|b| (max_indent - b) / unit).unwrap_or(0);
        let params: Vec<String> = split_top_level(&params_text)
            .into_iter()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty() && !matches!(p.as_str(), "self" | "cls" | "*" | "/"))
            .collect();
        let unannotated_params = params
            .iter()
            .filter(|p| {
                let head = p.split('=').next().unwrap_or(p);
                !head.contains(':')
            })
            .map(|p| p.split(['=', ':']).next().unwrap_or(p).trim().to_owned())
            .collect();
        functions.push(Function {
            name,
            line: number + 1,
            length: last - number + 1,
            complexity: complexity(&body, Language::Python),
            params: params.len(),
            nesting,
            unannotated_params,
            return_annotated,
        });
    }
    functions
}

//! Languages and a small lexer: which lines are code, comment or blank, and two views of the
//! source with the same line and column layout — `code` (comments and string contents
//! blanked, for structure) and `no_comments` (strings kept, for risky-pattern checks).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Rust,
    Python,
    JavaScript,
    TypeScript,
    Go,
}

impl Language {
    pub fn detect(path: &str) -> Option<Self> {
        let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
        Some(match ext.as_str() {
            "rs" => Self::Rust,
            "py" | "pyi" => Self::Python,
            "js" | "jsx" | "mjs" | "cjs" => Self::JavaScript,
            "ts" | "tsx" | "mts" | "cts" => Self::TypeScript,
            "go" => Self::Go,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::Python => "python",
            Self::JavaScript => "javascript",
            Self::TypeScript => "typescript",
            Self::Go => "go",
        }
    }
}

/// Files scanned for hard-coded secrets although they are not source code.
pub fn is_config_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    name.starts_with(".env")
        || [
            ".yml",
            ".yaml",
            ".json",
            ".toml",
            ".ini",
            ".cfg",
            ".conf",
            ".properties",
            ".pem",
            ".key",
            ".sh",
            ".tf",
        ]
        .iter()
        .any(|ext| name.ends_with(ext))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Code,
    Comment,
    Blank,
}

/// A lexed file.
pub struct Lexed {
    pub kinds: Vec<LineKind>,
    pub code: Vec<String>,
    pub no_comments: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    LineComment,
    BlockComment,
    /// Inside a string closed by `quote` repeated `count` times (3 for Python's triple
    /// quotes); `raw` strings have no escapes; `hashes` close Rust's `r#"..."#`.
    Str {
        quote: char,
        count: u8,
        raw: bool,
        hashes: u8,
        docstring: bool,
    },
}

/// Splits `text` into lines and classifies them.
///
/// A line is blank when it holds only whitespace, a comment when everything on it that is not
/// whitespace belongs to comments (a Python docstring — a triple-quoted string that starts a
/// line — counts as a comment), and code otherwise.
pub fn lex(text: &str, language: Language) -> Lexed {
    let python = language == Language::Python;
    let mut state = State::Normal;
    let mut lexed = Lexed {
        kinds: Vec::new(),
        code: Vec::new(),
        no_comments: Vec::new(),
    };
    for line in text.lines() {
        let chars: Vec<char> = line.chars().collect();
        let mut code = String::with_capacity(line.len());
        let mut kept = String::with_capacity(line.len());
        let (mut has_code, mut has_comment) = (false, false);
        if state == State::LineComment {
            state = State::Normal;
        }
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            match state {
                State::Normal => {
                    if c.is_whitespace() {
                        code.push(c);
                        kept.push(c);
                        i += 1;
                        continue;
                    }
                    let line_comment = if python {
                        c == '#'
                    } else {
                        c == '/' && next == Some('/')
                    };
                    if line_comment {
                        state = State::LineComment;
                        continue;
                    }
                    if !python && c == '/' && next == Some('*') {
                        state = State::BlockComment;
                        has_comment = true;
                        code.push_str("  ");
                        kept.push_str("  ");
                        i += 2;
                        continue;
                    }
                    if let Some((open_len, string)) = string_start(&chars, i, language, has_code) {
                        if let State::Str {
                            docstring: true, ..
                        } = string
                        {
                            has_comment = true;
                            for _ in 0..open_len {
                                code.push(' ');
                                kept.push(' ');
                            }
                        } else {
                            has_code = true;
                            for ch in &chars[i..i + open_len] {
                                code.push(*ch);
                                kept.push(*ch);
                            }
                        }
                        state = string;
                        i += open_len;
                        continue;
                    }
                    has_code = true;
                    code.push(c);
                    kept.push(c);
                    i += 1;
                }
                State::LineComment => {
                    has_comment = true;
                    code.push(' ');
                    kept.push(' ');
                    i += 1;
                }
                State::BlockComment => {
                    has_comment = true;
                    if c == '*' && next == Some('/') {
                        state = State::Normal;
                        code.push_str("  ");
                        kept.push_str("  ");
                        i += 2;
                    } else {
                        code.push(' ');
                        kept.push(' ');
                        i += 1;
                    }
                }
                State::Str {
                    quote,
                    count,
                    raw,
                    hashes,
                    docstring,
                } => {
                    if docstring {
                        has_comment |= !c.is_whitespace();
                    } else {
                        has_code = true;
                    }
                    if !raw && c == '\\' {
                        let width = if next.is_some() { 2 } else { 1 };
                        for _ in 0..width {
                            code.push(' ');
                            kept.push(if docstring { ' ' } else { 'x' });
                        }
                        i += width;
                        continue;
                    }
                    let closes = c == quote
                        && (0..count as usize).all(|k| chars.get(i + k) == Some(&quote))
                        && (0..hashes as usize)
                            .all(|k| chars.get(i + count as usize + k) == Some(&'#'));
                    if closes {
                        let width = count as usize + hashes as usize;
                        for ch in &chars[i..i + width] {
                            code.push(if docstring { ' ' } else { *ch });
                            kept.push(if docstring { ' ' } else { *ch });
                        }
                        state = State::Normal;
                        i += width;
                    } else {
                        code.push(' ');
                        kept.push(if docstring { ' ' } else { c });
                        i += 1;
                    }
                }
            }
        }
        // A single-quoted string does not continue past its line (except after a backslash,
        // which is rare enough to ignore); a multi-line string or block comment does.
        if let State::Str {
            count: 1, quote, ..
        } = state
        {
            let multiline = quote == '`' || (language == Language::Rust && quote == '"');
            if !multiline {
                state = State::Normal;
            }
        }
        let kind = if has_code {
            LineKind::Code
        } else if has_comment {
            LineKind::Comment
        } else {
            LineKind::Blank
        };
        lexed.kinds.push(kind);
        lexed.code.push(code);
        lexed.no_comments.push(kept);
    }
    lexed
}

/// Whether a string literal starts at `i`: (length of the opening, the state inside).
fn string_start(
    chars: &[char],
    i: usize,
    language: Language,
    line_has_code: bool,
) -> Option<(usize, State)> {
    let c = chars[i];
    let plain = |quote, count, raw| State::Str {
        quote,
        count,
        raw,
        hashes: 0,
        docstring: false,
    };
    match language {
        Language::Python => {
            // String prefixes (r, b, f, u and pairs) are letters just before the quote.
            let mut j = i;
            let mut raw = false;
            while j < chars.len() && j - i < 2 && chars[j].is_ascii_alphabetic() {
                raw |= matches!(chars[j], 'r' | 'R');
                j += 1;
            }
            let prefix_ok = j == i
                || (matches!(chars.get(j), Some('"' | '\''))
                    && (i == 0 || !is_ident(chars[i - 1]))
                    && chars[i..j]
                        .iter()
                        .all(|p| matches!(p.to_ascii_lowercase(), 'r' | 'b' | 'f' | 'u')));
            let quote = *chars.get(j)?;
            if !prefix_ok || !matches!(quote, '"' | '\'') {
                return None;
            }
            if chars.get(j + 1) == Some(&quote) && chars.get(j + 2) == Some(&quote) {
                let state = State::Str {
                    quote,
                    count: 3,
                    raw,
                    hashes: 0,
                    docstring: !line_has_code,
                };
                return Some((j - i + 3, state));
            }
            Some((j - i + 1, plain(quote, 1, raw)))
        }
        Language::Rust => {
            if c == '"' {
                return Some((1, plain('"', 1, false)));
            }
            if (c == 'r' || c == 'b') && (i == 0 || !is_ident(chars[i - 1])) {
                let mut j = i + 1;
                if c == 'b' && chars.get(j) == Some(&'r') {
                    j += 1;
                }
                let raw = chars[i..j].contains(&'r');
                let mut hashes = 0u8;
                while raw && chars.get(j) == Some(&'#') && hashes < 255 {
                    hashes += 1;
                    j += 1;
                }
                if chars.get(j) == Some(&'"') {
                    let state = State::Str {
                        quote: '"',
                        count: 1,
                        raw,
                        hashes,
                        docstring: false,
                    };
                    return Some((j - i + 1, state));
                }
                return None;
            }
            // A char literal ('a', '\n'), not a lifetime ('a).
            if c == '\'' {
                let is_char = chars.get(i + 1) == Some(&'\\') || chars.get(i + 2) == Some(&'\'');
                return is_char.then(|| (1, plain('\'', 1, false)));
            }
            None
        }
        Language::JavaScript | Language::TypeScript => match c {
            '"' | '\'' => Some((1, plain(c, 1, false))),
            '`' => Some((1, plain('`', 1, false))),
            _ => None,
        },
        Language::Go => match c {
            '"' | '\'' => Some((1, plain(c, 1, false))),
            '`' => Some((1, plain('`', 1, true))),
            _ => None,
        },
    }
}

pub fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Positions of `word` in `line` as a whole identifier.
pub fn find_word(line: &str, word: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let mut start = 0;
    while let Some(offset) = line[start..].find(word) {
        let at = start + offset;
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].chars().next();
        if !before.is_some_and(is_ident) && !after.is_some_and(is_ident) {
            found.push(at);
        }
        start = at + word.len();
    }
    found
}

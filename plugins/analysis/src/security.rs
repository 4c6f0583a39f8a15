//! Hard-coded secrets and risky patterns, each with severity, file, line and recommendation.
//!
//! Secrets are looked for on every line, comments included (a token in a comment is still
//! leaked); risky patterns only in code. A secret is never reported in clear: the finding
//! names its kind and shows a masked form (`glpat-****…`, with the length).

use serde::Serialize;

use crate::lang::{Language, find_word, is_ident};

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub issue: String,
    /// `secret` or `pattern`.
    pub kind: &'static str,
    pub severity: &'static str,
    pub file: String,
    pub line: usize,
    pub recommendation: &'static str,
    /// For secrets: the masked value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masked: Option<String>,
}

const ROTATE: &str = "Remove the secret from the source, rotate it, and load it from the environment or a secret store";

/// (prefix, description, minimum length of the rest, allowed characters of the rest).
const TOKEN_PREFIXES: &[(&str, &str, usize)] = &[
    ("glpat-", "GitLab personal access token", 20),
    (
        "github_pat_",
        "GitHub fine-grained personal access token",
        22,
    ),
    ("ghp_", "GitHub personal access token", 36),
    ("gho_", "GitHub OAuth token", 36),
    ("ghu_", "GitHub user-to-server token", 36),
    ("ghs_", "GitHub server-to-server token", 36),
    ("ghr_", "GitHub refresh token", 36),
];

const SECRET_NAMES: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "api_key",
    "apikey",
    "token",
    "access_key",
    "private_key",
    "client_secret",
];

const PLACEHOLDERS: &[&str] = &[
    "example",
    "changeme",
    "change_me",
    "placeholder",
    "your_",
    "your-",
    "xxxx",
    "****",
    "dummy",
    "redacted",
    "<",
    "${",
    "{{",
    "%(",
    "sample",
];

/// Masks a secret: its known prefix, then stars, then the length.
pub fn mask(secret: &str, prefix: &str) -> String {
    format!("{prefix}****… ({} chars)", secret.chars().count())
}

/// Shannon entropy in bits per character.
fn entropy(text: &str) -> f64 {
    let mut counts = std::collections::BTreeMap::new();
    for c in text.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let n = text.chars().count() as f64;
    counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum()
}

fn secret(file: &str, line: usize, issue: &str, severity: &'static str, masked: String) -> Finding {
    Finding {
        issue: format!("Hard-coded secret: {issue}"),
        kind: "secret",
        severity,
        file: file.to_owned(),
        line,
        recommendation: ROTATE,
        masked: Some(masked),
    }
}

/// Secrets on one raw line (1-based `line`).
pub fn secrets(file: &str, line: usize, text: &str, findings: &mut Vec<Finding>) {
    let before = findings.len();
    for (prefix, issue, min_len) in TOKEN_PREFIXES {
        let mut start = 0;
        while let Some(offset) = text[start..].find(prefix) {
            let at = start + offset;
            start = at + prefix.len();
            if text[..at].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            let rest: String = text[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            if rest.len() >= *min_len {
                let token = format!("{prefix}{rest}");
                findings.push(secret(file, line, issue, "critical", mask(&token, prefix)));
            }
        }
    }
    // AWS access key ids: AKIA or ASIA and 16 upper-case letters or digits, as a whole word.
    for key_prefix in ["AKIA", "ASIA"] {
        for at in find_word_prefix(text, key_prefix) {
            let rest: String = text[at + 4..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if rest.len() == 16
                && rest
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            {
                let key = format!("{key_prefix}{rest}");
                findings.push(secret(
                    file,
                    line,
                    "AWS access key id",
                    "high",
                    mask(&key, key_prefix),
                ));
            }
        }
    }
    if let Some(at) = text.find("-----BEGIN ")
        && text[at..].contains("PRIVATE KEY")
    {
        findings.push(secret(
            file,
            line,
            "private key block",
            "critical",
            "-----BEGIN …PRIVATE KEY-----".to_owned(),
        ));
    }
    // A recognised token assigned to `token = "…"` is one finding, not two.
    if findings.len() == before
        && let Some(value) = assigned_secret(text)
    {
        findings.push(secret(
            file,
            line,
            "password or key assigned a literal",
            "high",
            mask(&value, ""),
        ));
    }
}

/// Offsets where `prefix` starts a word.
fn find_word_prefix(text: &str, prefix: &str) -> Vec<usize> {
    text.match_indices(prefix)
        .filter(|(at, _)| !text[..*at].chars().next_back().is_some_and(is_ident))
        .map(|(at, _)| at)
        .collect()
}

/// `password = "…"`, `"api_key": "…"`, `token := "…"`: a secret-looking name given a string
/// literal of at least 8 characters with at least 3 bits of entropy per character that is not
/// a placeholder.
fn assigned_secret(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    for name in SECRET_NAMES {
        let mut start = 0;
        while let Some(offset) = lower[start..].find(name) {
            let at = start + offset;
            start = at + name.len();
            // The name may be part of an identifier (db_password) but must end there.
            if lower[at + name.len()..]
                .chars()
                .next()
                .is_some_and(is_ident)
            {
                continue;
            }
            let rest = text[at + name.len()..].trim_start_matches(['"', '\'', ' ', '\t']);
            let Some(rest) = ["=>", ":=", "=", ":"]
                .iter()
                .find_map(|op| rest.strip_prefix(op))
            else {
                continue;
            };
            if rest.starts_with('=') {
                continue; // a comparison (==)
            }
            let rest = rest.trim_start();
            let quote = rest.chars().next()?;
            if !matches!(quote, '"' | '\'' | '`') {
                continue;
            }
            let value: String = rest[1..].chars().take_while(|c| *c != quote).collect();
            let lower_value = value.to_ascii_lowercase();
            if value.chars().count() >= 8
                && entropy(&value) >= 3.0
                && !PLACEHOLDERS.iter().any(|p| lower_value.contains(p))
            {
                return Some(value);
            }
        }
    }
    None
}

fn pattern(
    file: &str,
    line: usize,
    issue: &str,
    severity: &'static str,
    recommendation: &'static str,
) -> Finding {
    Finding {
        issue: issue.to_owned(),
        kind: "pattern",
        severity,
        file: file.to_owned(),
        line,
        recommendation,
        masked: None,
    }
}

/// Whether `word(` is called as a free function (not a method like `re.exec(`).
fn free_call(line: &str, word: &str) -> bool {
    find_word(line, word).into_iter().any(|at| {
        line[at + word.len()..].trim_start().starts_with('(')
            && !line[..at].trim_end().ends_with('.')
    })
}

fn looks_like_sql(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    (lower.contains("select ") && lower.contains(" from "))
        || lower.contains("insert into ")
        || (lower.contains("update ") && lower.contains(" set "))
        || lower.contains("delete from ")
}

/// Risky patterns on one line of code with comments removed and strings kept.
pub fn patterns(
    file: &str,
    line: usize,
    code: &str,
    language: Language,
    findings: &mut Vec<Finding>,
) {
    let squeezed: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let dynamic = matches!(
        language,
        Language::Python | Language::JavaScript | Language::TypeScript
    );
    if dynamic
        && (free_call(code, "eval") || (language == Language::Python && free_call(code, "exec")))
    {
        findings.push(pattern(
            file,
            line,
            "Code injection: eval/exec of dynamic code",
            "high",
            "Do not evaluate strings as code; parse the data or dispatch on known values",
        ));
    }
    if matches!(language, Language::JavaScript | Language::TypeScript)
        && code.contains("new Function(")
    {
        findings.push(pattern(
            file,
            line,
            "Code injection: new Function() from strings",
            "high",
            "Do not build functions from strings",
        ));
    }
    if language == Language::Python {
        if squeezed.contains("shell=True") {
            findings.push(pattern(
                file,
                line,
                "Command injection: subprocess with shell=True",
                "high",
                "Pass the command as a list of arguments without shell=True",
            ));
        }
        if code.contains("os.system(") {
            findings.push(pattern(
                file,
                line,
                "Command injection: os.system",
                "medium",
                "Use subprocess.run with a list of arguments",
            ));
        }
        if code.contains("pickle.load") || code.contains("marshal.load") {
            findings.push(pattern(
                file,
                line,
                "Unsafe deserialization: pickle/marshal",
                "high",
                "Never unpickle untrusted data; use JSON or a schema-checked format",
            ));
        }
        if code.contains("yaml.unsafe_load(")
            || (code.contains("yaml.load(") && !code.contains("SafeLoader"))
        {
            findings.push(pattern(
                file,
                line,
                "Unsafe deserialization: yaml.load without SafeLoader",
                "high",
                "Use yaml.safe_load",
            ));
        }
    }
    let tls_off = match language {
        Language::JavaScript | Language::TypeScript => {
            squeezed.contains("rejectUnauthorized:false")
                || squeezed.contains("NODE_TLS_REJECT_UNAUTHORIZED")
        }
        Language::Go => squeezed.contains("InsecureSkipVerify:true"),
        Language::Rust => {
            squeezed.contains("danger_accept_invalid_certs(true)")
                || squeezed.contains("danger_accept_invalid_hostnames(true)")
        }
        Language::Python => {
            squeezed.contains("verify=False")
                || code.contains("_create_unverified_context")
                || code.contains("CERT_NONE")
        }
    };
    if tls_off {
        findings.push(pattern(
            file,
            line,
            "TLS certificate verification disabled",
            "medium",
            "Keep certificate verification on; trust a private CA explicitly if needed",
        ));
    }
    // SQL text with data spliced in: concatenation, f-strings, format calls, % or templates.
    if looks_like_sql(code) {
        let formatted = squeezed.contains("\"+")
            || squeezed.contains("'+")
            || squeezed.contains("+\"")
            || squeezed.contains("+'")
            || code.contains("f\"")
            || code.contains("f'")
            || code.contains(".format(")
            || squeezed.contains("\"%")
            || squeezed.contains("'%")
            || code.contains("${")
            || code.contains("format!(")
            || code.contains("Sprintf(");
        if formatted {
            findings.push(pattern(
                file,
                line,
                "SQL injection: query built by concatenation or formatting",
                "high",
                "Use parameterized queries",
            ));
        }
    }
}

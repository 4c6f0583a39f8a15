//! Task type `secret_scan`: the security detectors of `analyze` (tokens of GitLab, GitHub,
//! Slack and others, AWS key ids, private key blocks, literals assigned to password-like
//! names) run over submitted text — a file, a diff, a task's log — rather than a tree. The
//! text is `writeOnly`: the host seals it and shows `***`, and findings carry masked values
//! only.

use taskhost_plugin_sdk::{Progress, TaskError, Value, checkpoint, json};

use crate::security;

/// Largest text a scan takes (1 MiB, the host's request size).
const MAX_CONTENT: u64 = 1 << 20;
/// Findings listed in the result; the count covers all of them.
const MAX_FINDINGS: usize = 1000;

pub fn input_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "content": {"type": "string", "maxLength": MAX_CONTENT, "writeOnly": true, "description": "the text to scan"},
            "name": {"type": "string", "minLength": 1, "maxLength": 256, "description": "what the text is, shown as each finding's file (default: content)"},
        },
        "required": ["content"],
        "additionalProperties": false,
    })
}

pub fn run(input: &Value) -> Result<Value, TaskError> {
    let result = scan(input, || Ok(checkpoint()?))?;
    let lines = result["lines"].as_u64().unwrap_or(0);
    Progress::new()
        .step("Scanned")
        .processed(lines)
        .total(lines)
        .report();
    Ok(result)
}

/// The scan itself; `pause` is called every 10,000 lines (the host's checkpoint).
fn scan(
    input: &Value,
    mut pause: impl FnMut() -> Result<(), TaskError>,
) -> Result<Value, TaskError> {
    let content = input["content"]
        .as_str()
        .ok_or_else(|| TaskError::invalid_input("content is required"))?;
    let name = input["name"].as_str().unwrap_or("content");
    let mut findings = Vec::new();
    let mut lines = 0usize;
    for (i, line) in content.lines().enumerate() {
        if i % 10_000 == 0 {
            pause()?;
        }
        security::secrets(name, i + 1, line, &mut findings);
        lines = i + 1;
    }
    let count = findings.len();
    findings.truncate(MAX_FINDINGS);
    Ok(json!({
        "name": name,
        "lines": lines,
        "count": count,
        "findings": findings,
        "findings_omitted": count - findings.len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_text_are_found_masked_with_their_lines() {
        let text = "deploy log\nexport AWS_ACCESS_KEY_ID=AKIAZ7Q4R2X9M3KD8W1P\nok\n";
        let result = scan(&json!({"content": text, "name": "job 7"}), || Ok(())).expect("scanned");
        assert_eq!(
            (result["lines"].as_u64(), result["count"].as_u64()),
            (Some(3), Some(1))
        );
        let finding = &result["findings"][0];
        assert_eq!(
            (finding["line"].as_u64(), finding["file"].as_str()),
            (Some(2), Some("job 7"))
        );
        assert!(!result.to_string().contains("Z7Q4R2X9M3KD8W1P"), "{result}");
    }
}

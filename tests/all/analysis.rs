//! The bundled `analysis` plugin on a generated tree whose counts are known line by line, on
//! this repository's own source, and with a planted secret that must never show in clear.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use taskhost::runtime::Grants;

use crate::harness::{TestServer, assert_error, read_only_grants};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum K {
    Code,
    Comment,
    Blank,
}

/// A file written from annotated lines, so its line counts are known by construction.
fn write(root: &Path, path: &str, lines: &[(K, &str)]) -> [u64; 3] {
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    let full = root.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, text).unwrap();
    let count = |k| lines.iter().filter(|(kind, _)| *kind == k).count() as u64;
    [count(K::Code), count(K::Comment), count(K::Blank)]
}

fn source_grants(root: &Path, config: &[(&str, &str)]) -> Grants {
    read_only_grants(root, "/src", config)
}

async fn analyze(server: &TestServer, input: Value) -> Value {
    let api = server.api();
    let task = api
        .create(json!({"plugin": "analysis", "type": "analyze", "input": input}))
        .await;
    let done = api.finished(task["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    done
}

fn lang_counts(result: &Value, language: &str) -> [u64; 3] {
    let l = &result["summary"]["languages"][language];
    [
        l["code"].as_u64().unwrap_or(0),
        l["comment"].as_u64().unwrap_or(0),
        l["blank"].as_u64().unwrap_or(0),
    ]
}

/// A planted token, assembled at run time so that no secret-looking literal sits in the repo.
fn planted_token() -> String {
    format!("glpat-{}", "Zx9Qw7Lm2Vb5Nc8Rt4Yh")
}

#[tokio::test]
async fn analysis_of_a_generated_tree_reports_known_counts_smells_findings_and_coverage() {
    use K::*;
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path().join("demo");
    let mut expected: BTreeMap<&str, [u64; 3]> = BTreeMap::new();
    let mut add = |lang, counts: [u64; 3]| {
        let entry = expected.entry(lang).or_insert([0; 3]);
        for i in 0..3 {
            entry[i] += counts[i];
        }
    };

    add(
        "rust",
        write(
            &root,
            "src/lib.rs",
            &[
                (Comment, "//! Module doc."),
                (Blank, ""),
                (Comment, "/// Adds."),
                (Code, "pub fn add(a: i32, b: i32) -> i32 {"),
                (Code, "    a + b // trailing comment keeps it code"),
                (Code, "}"),
                (Blank, "   "),
                (Comment, "/* a block"),
                (Comment, "   comment */"),
                (Code, "pub fn classify(n: i32) -> &'static str {"),
                (Code, "    if n < 0 && n > -10 {"),
                (Code, "        \"small negative { not a brace\""),
                (Code, "    } else if n == 0 {"),
                (Code, "        \"zero\""),
                (Code, "    } else {"),
                (Code, "        match n {"),
                (Code, "            1 => \"one\","),
                (Code, "            2 => \"two\","),
                (Code, "            _ => \"many\","),
                (Code, "        }"),
                (Code, "    }"),
                (Code, "}"),
            ],
        ),
    );
    // A long, deeply nested, branchy function: 3 + 55 + 8 lines.
    let mut long: Vec<(K, String)> = vec![
        (Code, "pub fn tangled(x: u32) -> u32 {".into()),
        (Code, "    let mut total = 0;".into()),
        (
            Code,
            "    if x > 1 { if x > 2 { if x > 3 { if x > 4 { if x > 5 { total += 1; } } } } }"
                .into(),
        ),
    ];
    for i in 0..55 {
        long.push((Code, format!("    if x == {i} {{ total += {i}; }}")));
    }
    long.extend([(Code, "    total".into()), (Code, "}".into())]);
    let long_refs: Vec<(K, &str)> = long.iter().map(|(k, l)| (*k, l.as_str())).collect();
    add("rust", write(&root, "src/tangled.rs", &long_refs));

    add(
        "python",
        write(
            &root,
            "app/main.py",
            &[
                (Comment, "\"\"\"Module docstring"),
                (Comment, "over two lines.\"\"\""),
                (Code, "import os"),
                (Blank, ""),
                (Blank, ""),
                (Code, "def greet(name: str) -> str:"),
                (Comment, "    # say hello"),
                (Code, "    return \"hello \" + name"),
                (Blank, ""),
                (Blank, ""),
                (Code, "def check(a, b, c, d, e, f):"),
                (Code, "    if a and b:"),
                (Code, "        return 1"),
                (Code, "    elif c or d:"),
                (Code, "        return 2"),
                (Code, "    for x in e:"),
                (Code, "        while f:"),
                (Code, "            pass"),
                (Code, "    return 0"),
            ],
        ),
    );
    let risky = [
        (Code, "import yaml, subprocess, requests"),
        (Code, "cfg = yaml.load(open('c.yml'))"),
        (Code, "subprocess.run(cmd, shell=True)"),
        (
            Code,
            "cursor.execute(\"SELECT * FROM users WHERE id = \" + uid)",
        ),
        (Code, "requests.get(url, verify=False)"),
        (Code, "value = eval(expr)"),
        (
            Code,
            "safe = cursor.execute(\"SELECT * FROM users WHERE id = %s\", (uid,))",
        ),
        (Comment, "# eval(this) is only a comment"),
    ];
    add("python", write(&root, "app/risky.py", &risky));
    let token = planted_token();
    let secret_line = format!("GITLAB_TOKEN = \"{token}\"");
    add(
        "python",
        write(
            &root,
            "app/settings.py",
            &[
                (Code, "DEBUG = False"),
                (Code, "PASSWORD_HINT = \"changeme\""),
                (Code, secret_line.as_str()),
            ],
        ),
    );
    // The same eight statements in two files: one duplicated block in each.
    let dup: Vec<(K, &str)> = [
        "rows = load_rows(source_path)",
        "rows = [r for r in rows if r.valid]",
        "totals = compute_totals(rows)",
        "report = render_report(totals)",
        "write_output(report, target_path)",
        "notify_owner(owner_email, report)",
        "archive_rows(rows, archive_path)",
        "cleanup_tmp(tmp_directory)",
    ]
    .into_iter()
    .map(|l| (Code, l))
    .collect();
    add("python", write(&root, "etl/a.py", &dup));
    add("python", write(&root, "etl/b.py", &dup));

    add(
        "typescript",
        write(
            &root,
            "web/app.ts",
            &[
                (Comment, "// header comment"),
                (Code, "export function parse(input: any): number {"),
                (Code, "  const x = input as any;"),
                (Code, "  return x ? 1 : 0;"),
                (Code, "}"),
                (Code, "const double = (n: number): number => {"),
                (Code, "  return n * 2;"),
                (Code, "};"),
            ],
        ),
    );
    add(
        "go",
        write(
            &root,
            "cmd/main.go",
            &[
                (Code, "package main"),
                (Blank, ""),
                (Code, "func Max(a, b int) int {"),
                (Code, "\tif a > b {"),
                (Code, "\t\treturn a"),
                (Code, "\t}"),
                (Code, "\treturn b"),
                (Code, "}"),
            ],
        ),
    );
    // Skipped: dependencies and hidden directories.
    write(
        &root,
        "node_modules/dep/index.js",
        &[(Code, "function hidden() { return 1; }")],
    );
    write(&root, ".git/hooks/x.py", &[(Code, "def hidden(): pass")]);
    std::fs::create_dir_all(root.join("coverage")).unwrap();
    std::fs::write(
        root.join("coverage/lcov.info"),
        "SF:src/lib.rs\nLF:40\nLH:35\nend_of_record\nSF:app/main.py\nLF:40\nLH:35\nend_of_record\n",
    )
    .unwrap();
    std::fs::write(
        root.join(".env"),
        format!(
            "AWS_ACCESS_KEY_ID={}\n",
            ["AKIA", "Q3EXAMPLE7KEY2ZZ"].concat()
        ),
    )
    .unwrap();

    let server = TestServer::builder()
        .plugin_grants("analysis", source_grants(tree.path(), &[]))
        .start()
        .await;
    let done = analyze(&server, json!({"project_name": "demo"})).await;
    let result = &done["result"];

    for (language, counts) in &expected {
        assert_eq!(
            lang_counts(result, language),
            *counts,
            "{language}: {}",
            result["summary"]
        );
    }
    assert_eq!(
        result["summary"]["languages"]["python"]["files"], 5,
        "{}",
        result["summary"]
    );
    assert_eq!(result["summary"]["languages"].as_object().unwrap().len(), 4);
    assert_eq!(result["summary"]["functions"], 8, "{}", result["summary"]);
    assert_eq!(result["coverage_percent"], 87.5);

    let id = done["id"].as_str().unwrap();
    let records = server.api().records(id, "files").await;
    let by_path: BTreeMap<&str, &Value> = records
        .iter()
        .map(|r| (r["key"].as_str().unwrap(), &r["data"]))
        .collect();
    assert!(!by_path.contains_key("node_modules/dep/index.js"));
    let complexity = |path: &str, name: &str| -> (u64, u64, u64) {
        let f = by_path[path]["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {path}: {}", by_path[path]));
        (
            f["complexity"].as_u64().unwrap(),
            f["params"].as_u64().unwrap(),
            f["length"].as_u64().unwrap(),
        )
    };
    assert_eq!(complexity("src/lib.rs", "add"), (1, 2, 3));
    // if, else if, &&, and three match arms less one.
    assert_eq!(complexity("src/lib.rs", "classify"), (6, 1, 13));
    assert_eq!(complexity("src/tangled.rs", "tangled"), (61, 1, 60));
    assert_eq!(complexity("app/main.py", "greet"), (1, 1, 3));
    // if, and, elif, or, for, while.
    assert_eq!(complexity("app/main.py", "check"), (7, 6, 9));
    assert_eq!(complexity("web/app.ts", "parse"), (2, 1, 4));
    assert_eq!(complexity("web/app.ts", "double"), (1, 1, 3));
    assert_eq!(complexity("cmd/main.go", "Max"), (2, 2, 6));

    let smells: Vec<(String, String, u64)> = result["smells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_owned(),
                s["file"].as_str().unwrap().to_owned(),
                s["line"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected_smells: Vec<(String, String, u64)> = [
        ("duplicated_block", "etl/a.py", 1),
        ("duplicated_block", "etl/b.py", 1),
        ("long_parameter_list", "app/main.py", 11),
        ("long_function", "src/tangled.rs", 1),
        ("complex_function", "src/tangled.rs", 1),
        ("deep_nesting", "src/tangled.rs", 1),
    ]
    .into_iter()
    .map(|(k, f, l)| (k.to_owned(), f.to_owned(), l))
    .collect();
    let mut sorted = smells.clone();
    sorted.sort();
    let mut want = expected_smells.clone();
    want.sort();
    assert_eq!(sorted, want);
    assert_eq!(result["code_smells"], 6);

    // The documented formula, from the counts above.
    let code_lines: u64 = expected.values().map(|c| c[0]).sum();
    let score = 10.0
        - 3.0 / 8.0
        - 2.0 / 8.0
        - 1.5 / 8.0
        - 1.0 / 8.0
        - 2.5 * (2.0 * 16.0 / code_lines as f64).min(1.0);
    assert_eq!(
        result["quality_score"],
        (score * 10.0).round() / 10.0,
        "{result}"
    );

    // Types: `check` lacks annotations; `any` twice in app.ts.
    assert_eq!(result["type_errors"], 3, "{}", result["type_issues"]);

    let issues: Vec<(String, u64, String)> = result["security_issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["file"].as_str().unwrap().to_owned(),
                i["line"].as_u64().unwrap(),
                i["issue"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let has = |file: &str, line: u64, words: &str| {
        issues
            .iter()
            .any(|(f, l, i)| f == file && *l == line && i.contains(words))
    };
    assert!(
        has("app/settings.py", 3, "GitLab personal access token"),
        "{issues:?}"
    );
    assert!(has(".env", 1, "AWS access key id"), "{issues:?}");
    assert!(has("app/risky.py", 2, "yaml.load"), "{issues:?}");
    assert!(has("app/risky.py", 3, "shell=True"), "{issues:?}");
    assert!(has("app/risky.py", 4, "SQL injection"), "{issues:?}");
    assert!(
        has("app/risky.py", 5, "TLS certificate verification"),
        "{issues:?}"
    );
    assert!(has("app/risky.py", 6, "eval"), "{issues:?}");
    assert!(
        !has("app/risky.py", 7, "SQL injection"),
        "a parameterized query is fine: {issues:?}"
    );
    assert!(
        !has("app/risky.py", 8, "eval"),
        "a comment is not code: {issues:?}"
    );
    assert!(
        !has("app/settings.py", 2, "secret"),
        "a placeholder is not a secret: {issues:?}"
    );
    assert_eq!(issues.len(), 7, "{issues:?}");
    let gitlab = result["security_issues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["file"] == "app/settings.py")
        .unwrap();
    assert_eq!(gitlab["severity"], "critical");
    assert!(gitlab["masked"].as_str().unwrap().starts_with("glpat-****"));
    assert!(!result["recommendations"].as_array().unwrap().is_empty());

    // The token is nowhere in clear: not in the task, its records, events or logs.
    let logs = server.logs(id).await;
    let events = server.api().events(id).await;
    for (what, text) in [
        ("task", done.to_string()),
        ("records", serde_json::to_string(&records).unwrap()),
        ("events", serde_json::to_string(&events).unwrap()),
        ("logs", logs),
    ] {
        assert!(!text.contains(&token), "the token leaked in {what}");
        assert!(
            !text.contains("Zx9Qw7Lm2Vb5"),
            "part of the token leaked in {what}"
        );
    }
}

#[tokio::test]
async fn analysis_of_this_repositorys_host_source_counts_every_rust_file_and_line() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = 0u64;
    let mut lines = 0u64;
    let mut pending = vec![workspace.join("host/src")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files += 1;
                lines += std::fs::read_to_string(&path).unwrap().lines().count() as u64;
            }
        }
    }
    let server = TestServer::builder()
        .plugin_grants(
            "analysis",
            source_grants(workspace, &[("project.taskhost", "host/src")]),
        )
        .start()
        .await;
    let done = analyze(
        &server,
        json!({"project_name": "taskhost", "analysis_types": ["quality"], "file_records": false}),
    )
    .await;
    let result = &done["result"];
    let rust = &result["summary"]["languages"]["rust"];
    assert_eq!(rust["files"], files, "{}", result["summary"]);
    let [code, comment, blank] = lang_counts(result, "rust");
    assert_eq!(code + comment + blank, lines);
    assert!(comment > 100 && blank > 100, "{rust}");
    assert!(rust["functions"].as_u64().unwrap() > 300, "{rust}");
    let score = result["quality_score"].as_f64().unwrap();
    assert!((0.0..=10.0).contains(&score));
    assert!(result["security_issues"].as_array().unwrap().is_empty());
    assert_eq!(result["type_errors"], Value::Null);
}

#[tokio::test]
async fn analysis_refuses_paths_that_leave_the_root_and_fails_clearly_without_a_grant() {
    let server = TestServer::builder().start().await;
    let api = server.api();
    for input in [
        json!({"path": "../etc"}),
        json!({"path": "/etc"}),
        json!({"project_name": "../etc"}),
        json!({"project_name": "a/b"}),
        json!({"analysis_types": ["quality"]}),
        json!({"path": "x", "analysis_types": ["style"]}),
    ] {
        let (status, body) = api
            .post(
                "/api/v1/tasks",
                json!({"plugin": "analysis", "type": "analyze", "input": input}),
            )
            .await;
        assert_error(status, &body, 400, "VALIDATION_ERROR");
    }
    let task = api
        .create(json!({"plugin": "analysis", "type": "analyze", "input": {"project_name": "demo"}}))
        .await;
    let done = api.finished(task["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "PROJECT_NOT_FOUND", "{done}");
    assert_eq!(done["attempt"], 1, "not retried: {done}");
}

#[tokio::test]
async fn secrets_in_submitted_text_and_in_a_tasks_log_are_found_masked() {
    let server = TestServer::start().await;
    let api = server.api();
    let github = format!("ghp_{}", "R8mQ2vX7kL4pN9sT1wZ6yB3cD5fG0hJ2aE4u");
    let aws = "AKIAZ7Q4R2X9M3KD8W1P";
    let text = format!(
        "deploy.sh\nexport GITHUB_TOKEN={github}\nexport AWS_ACCESS_KEY_ID={aws}\necho done\n"
    );
    let scan = api
        .create(json!({"plugin": "analysis", "type": "secret_scan", "input": {"content": text, "name": "deploy.sh"}}))
        .await;
    assert_eq!(
        scan["input"]["content"], "***",
        "the text is sealed like any secret: {scan}"
    );
    let done = api.finished(scan["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    let result = &done["result"];
    assert_eq!(result["count"], 2, "{result}");
    let lines: Vec<u64> = result["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 3]);
    assert!(
        !done.to_string().contains(&github) && !done.to_string().contains(aws),
        "masked: {done}"
    );

    // A task whose output carries a token nobody declared secret: its log is scanned.
    let leaky = api
        .create(json!({"plugin": "testkit", "type": "host_calls", "input": {"stdout": format!("using {github}")}}))
        .await;
    let leaky_id = leaky["id"].as_str().unwrap().to_owned();
    api.finished(&leaky_id).await;
    let (status, log_scan) = api
        .post(&format!("/api/v1/tasks/{leaky_id}/secret-scan"), json!({}))
        .await;
    assert_eq!(status, 202, "{log_scan}");
    assert_eq!(log_scan["labels"]["scanned_task"], leaky_id.as_str());
    let scanned = api.finished(log_scan["id"].as_str().unwrap()).await;
    assert_eq!(
        scanned["result"]["count"], 2,
        "its stdout and stderr lines: {scanned}"
    );
    assert_eq!(scanned["result"]["name"], format!("log of {leaky_id}"));
    assert!(!scanned.to_string().contains(&github));
    let (status, body) = api
        .post("/api/v1/tasks/no-such-task/secret-scan", json!({}))
        .await;
    assert_error(status, &body, 404, "TASK_NOT_FOUND");
}

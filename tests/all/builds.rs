//! The build plugin with a real `taskhost-runner`: projects made by the test are built and
//! tested with their real toolchains, and the task reports the counts the tools printed.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};

use taskhost::runtime::Grants;

use crate::harness::{RunnerProcess, TestServer, assert_error, require_tool};

fn build(project: &str, framework: &str, source: &Path, extra: Value) -> Value {
    let mut parameters = json!({"framework": framework, "source": source});
    if let (Some(parameters), Some(extra)) = (parameters.as_object_mut(), extra.as_object()) {
        parameters.extend(extra.clone());
    }
    json!({
        "plugin": "build",
        "type": "build",
        "input": {"project_name": project, "goal": "Run the test suite", "parameters": parameters},
    })
}

/// A host with one registered `taskhost-runner` carrying `labels`.
async fn host_with_runner(name: &str, labels: &[&str]) -> (TestServer, RunnerProcess, String) {
    let server = TestServer::start().await;
    let key = server.runner_key().await;
    let runner = RunnerProcess::spawn(&server, &key, name, labels);
    let id = runner.id(&server).await;
    (server, runner, id)
}

fn step_names(result: &Value) -> Vec<&str> {
    result["steps"]
        .as_array()
        .map(|steps| steps.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default()
}

fn write(root: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

const TINY_LIB: &str = r#"
pub fn add(a: i32, b: i32) -> i32 { a + b }

#[cfg(test)]
mod tests {
    use super::*;
    #[test] fn adds() { assert_eq!(add(2, 2), 4); }
    #[test] fn adds_negatives() { assert_eq!(add(-2, -3), -5); }
    #[test] fn adds_zero() { assert_eq!(add(0, 7), 7); }
    #[test] #[ignore] fn slow() {}
}
"#;

#[tokio::test]
async fn a_cargo_build_of_a_tiny_crate_reports_its_real_test_counts() {
    let source = tempfile::tempdir().unwrap();
    write(
        source.path(),
        &[
            (
                "Cargo.toml",
                "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
            ),
            ("src/lib.rs", TINY_LIB),
            (
                "tests/api.rs",
                "#[test] fn public_api() { assert_eq!(tiny::add(1, 1), 2); }\n",
            ),
        ],
    );
    let (server, runner, runner_id) = host_with_runner("rust-box", &["rust"]).await;

    let api = server.api();
    let task = api
        .create(build(
            "tiny",
            "cargo",
            source.path(),
            json!({"artifacts": ["target/debug/libtiny.rlib"]}),
        ))
        .await;
    let id = task["id"].as_str().unwrap();
    let done = api.finished(id).await;
    assert_eq!(done["status"], "completed", "{done}\n{}", runner.log());
    let result = &done["result"];
    assert_eq!(result["runner_id"], runner_id.as_str());
    assert_eq!(result["framework"], "cargo");
    assert_eq!(result["project_name"], "tiny");
    // 3 unit tests and 1 integration test pass, 1 is ignored, doc tests find none.
    assert_eq!(result["tests_passed"], 4, "{result}");
    assert_eq!(result["tests_failed"], 0);
    assert_eq!(result["tests_skipped"], 1);
    assert_eq!(result["tests_total"], 5);
    assert_eq!(result["test_coverage"], Value::Null);
    assert_eq!(step_names(result), ["build", "test"]);
    assert_eq!(
        result["generated_files"],
        json!(["target/debug/libtiny.rlib"])
    );
    assert!(result["artifacts"][0]["size_bytes"].as_u64().unwrap() > 0);
    assert!(
        !source.path().join("target").exists(),
        "the build ran in a copy, not in the source"
    );
    let records = api.records(id, "steps").await;
    let test_record = records
        .iter()
        .find(|r| r["key"] == "test")
        .expect("test step record");
    assert_eq!(
        test_record["data"]["tests"],
        json!({"passed": 4, "failed": 0, "skipped": 1})
    );
}

const CALC_TESTS: &str = r#"
import pytest
from calc import add

def test_add():
    assert add(2, 2) == 4

def test_add_negative():
    assert add(-1, -1) == -2

def test_add_zero():
    assert add(0, 5) == 5

def test_add_floats():
    assert add(0.5, 0.25) == BROKEN

@pytest.mark.skip(reason="not yet")
def test_later():
    pass
"#;

#[tokio::test]
async fn a_pytest_build_reports_failed_tests_then_passes_once_they_are_fixed() {
    require_tool("python3", &["-m", "pytest", "--version"]);
    let source = tempfile::tempdir().unwrap();
    write(
        source.path(),
        &[
            ("calc.py", "def add(a, b):\n    return a + b\n"),
            ("test_calc.py", &CALC_TESTS.replace("BROKEN", "0.8")),
        ],
    );
    let (server, runner, _) = host_with_runner("py-box", &["python"]).await;
    let api = server.api();

    let task = api
        .create(build("calc", "pytest", source.path(), json!({})))
        .await;
    let id = task["id"].as_str().unwrap();
    let done = api.finished(id).await;
    assert_eq!(done["status"], "failed", "{done}\n{}", runner.log());
    assert_eq!(done["error"]["code"], "TESTS_FAILED", "{done}");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("1 of 5 tests failed (3 passed, 1 skipped)"),
        "{message}"
    );
    assert_eq!(done["attempt"], 1, "failing tests are not retried");
    let records = api.records(id, "steps").await;
    assert_eq!(
        records[0]["data"]["tests"],
        json!({"passed": 3, "failed": 1, "skipped": 1}),
        "{records:?}"
    );
    assert!(server.logs(id).await.contains("test_add_floats"));

    write(
        source.path(),
        &[("test_calc.py", &CALC_TESTS.replace("BROKEN", "0.75"))],
    );
    let task = api
        .create(build("calc", "pytest", source.path(), json!({})))
        .await;
    let done = api.finished(task["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    let result = &done["result"];
    assert_eq!(result["tests_passed"], 4, "{result}");
    assert_eq!(result["tests_failed"], 0);
    assert_eq!(result["tests_skipped"], 1);
}

#[tokio::test]
async fn an_npm_build_runs_the_package_test_script_and_reports_node_test_counts() {
    require_tool("npm", &["--version"]);
    require_tool("node", &["--version"]);
    let source = tempfile::tempdir().unwrap();
    write(
        source.path(),
        &[
            (
                "package.json",
                r#"{"name": "tiny-js", "version": "1.0.0", "private": true, "scripts": {"test": "node --test"}}"#,
            ),
            (
                "test/add.test.js",
                "const test = require('node:test');\nconst assert = require('node:assert');\n\
                 test('adds', () => assert.strictEqual(1 + 1, 2));\n\
                 test('adds again', () => assert.strictEqual(2 + 2, 4));\n\
                 test('later', { skip: true }, () => {});\n",
            ),
        ],
    );
    let (server, runner, _) = host_with_runner("node-box", &["node"]).await;
    let api = server.api();
    let task = api
        .create(build("tiny-js", "npm", source.path(), json!({})))
        .await;
    let done = api.finished(task["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}\n{}", runner.log());
    let result = &done["result"];
    assert_eq!(result["tests_passed"], 2, "{result}");
    assert_eq!(result["tests_failed"], 0);
    assert_eq!(result["tests_skipped"], 1);
    assert_eq!(step_names(result), ["install", "test"]);
}

#[tokio::test]
async fn a_build_without_a_source_outside_the_operators_prefixes_or_with_an_unknown_framework_is_refused()
 {
    let mut grants = Grants::default();
    grants
        .config
        .insert("source_prefixes".into(), "/srv/checkouts;/home/ci".into());
    let server = TestServer::builder()
        .plugin_grants("build", grants)
        .start()
        .await;
    let api = server.api();
    let cases = [
        json!({"project_name": "x", "parameters": {"framework": "cargo", "source": "/etc/x"}}),
        json!({"project_name": "x", "parameters": {"framework": "cargo", "source": "/srv/checkouts/../../etc"}}),
        json!({"project_name": "nowhere", "parameters": {"framework": "cargo"}}),
        json!({"project_name": "x", "parameters": {"framework": "gradle", "source": "/srv/checkouts/x"}}),
        json!({"project_name": "x", "parameters": {"framework": "cargo", "source": "relative/dir"}}),
        json!({"project_name": "x", "parameters": {"framework": "steps", "source": "/srv/checkouts/x"}}),
        json!({"project_name": "../etc", "parameters": {"framework": "make", "source": "/srv/checkouts/x"}}),
    ];
    for input in cases {
        let (status, body) = api
            .post(
                "/api/v1/tasks",
                json!({"plugin": "build", "type": "build", "input": input}),
            )
            .await;
        assert_error(status, &body, 400, "VALIDATION_ERROR");
    }
    let (status, listed) = api.get("/api/v1/tasks").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["data"], json!([]), "nothing was created");
}

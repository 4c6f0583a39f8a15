//! The OpenAPI document against the server it describes: schemathesis (pinned from PyPI,
//! installed by `tests/run`) generates requests from the document and sends them to a real
//! `taskhost` binary, checking every answer's status, headers, content type and body against
//! the document. Any drift between the two fails this test.
//!
//! Left out: the WebSocket routes (not HTTP request/response), plugin uploads and user role
//! changes (random bodies would replace plugins or demote the caller mid-run), key revocation
//! (it would revoke keys other operations use), and the `positive_data_acceptance` check,
//! whose failures are rules JSON Schema cannot state (an `expires_at` in the future, an
//! existing dependency, `processed` within `total`, `runner_labels` only with
//! `runners:register`).

use std::process::Command;

use crate::harness::{ADMIN_PASSWORD, HostProcess, login, require_tool};

#[tokio::test]
async fn the_openapi_document_describes_what_the_server_answers() {
    require_tool("st", &["--version"]);
    let data = tempfile::tempdir().expect("data dir");
    let host = HostProcess::spawn(data.path());
    let base = format!("http://{}", host.addr);
    let token = login(&base, "admin", ADMIN_PASSWORD).await;
    // schemathesis keeps a cache where it runs; keep it out of the source tree.
    let scratch = tempfile::tempdir().expect("scratch dir");
    let cwd = scratch.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("st")
            .current_dir(cwd)
            .arg("run")
            .arg(format!("{base}/api/v1/openapi.json"))
            .args(["--url", &base])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args([
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
            ])
            .args([
                "--max-examples",
                "20",
                "--seed",
                "1",
                "--generation-deterministic",
            ])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args([
                "--exclude-path-regex",
                "/ws$|^/api/v1/plugins|^/api/v1/auth/api-keys/|^/api/v1/users/",
            ])
            .args(["--no-color", "--request-timeout", "30"])
            .output()
            .expect("schemathesis runs")
    })
    .await
    .expect("joined");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found the document and the server apart:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(" passed"),
        "schemathesis ran no test:\n{stdout}"
    );
    drop(host);
}

//! Every route of the OpenAPI document, asked by every kind of caller, against a real server:
//! the expected answer of each pair is in [`EXPECTED`]. A route the document gains without a
//! row here fails the test, so no route ships without an authorization decision.
//!
//! Outcomes: `ok` the caller was let through (any answer but 401/403 and never a 5xx: a 404
//! for a job that does not exist or a 409 for a finished task still means the decision let it
//! pass), or the exact status the decision gives (`401`, `403`, `404`: a task one may not read
//! does not exist for one).

use reqwest::Method;
use serde_json::json;

use crate::harness::{TestServer, client_with_token, echo};

const CALLERS: [&str; 6] = [
    "anonymous",
    "viewer",
    "user",
    "restricted key",
    "runner",
    "admin",
];

/// (method, path, body, outcome for each of [`CALLERS`]).
const EXPECTED: &[(&str, &str, &str, [&str; 6])] = &[
    (
        "post",
        "/api/v1/auth/login",
        r#"{}"#,
        ["ok", "ok", "ok", "ok", "ok", "ok"],
    ),
    (
        "post",
        "/api/v1/auth/api-keys",
        r#"{"name":"m"}"#,
        ["401", "ok", "ok", "403", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/auth/api-keys",
        "",
        ["401", "ok", "ok", "ok", "401", "ok"],
    ),
    (
        "delete",
        "/api/v1/auth/api-keys/{id}",
        "",
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "patch",
        "/api/v1/users/{username}",
        r#"{"role":"user"}"#,
        ["401", "403", "403", "403", "401", "ok"],
    ),
    (
        "post",
        "/api/v1/users",
        r#"{"username":"matrix-made","password":"password-1234","role":"viewer"}"#,
        ["401", "403", "403", "403", "401", "ok"],
    ),
    (
        "post",
        "/api/v1/tasks",
        r#"{"plugin":"testkit","type":"echo","input":{}}"#,
        ["401", "403", "ok", "403", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/tasks",
        "",
        ["401", "ok", "ok", "ok", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/tasks/{id}",
        "",
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "delete",
        "/api/v1/tasks/{id}",
        "",
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "put",
        "/api/v1/tasks/{id}",
        r#"{"status":"running"}"#,
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "post",
        "/api/v1/tasks/{id}/pause",
        "{}",
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "post",
        "/api/v1/tasks/{id}/resume",
        "{}",
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "post",
        "/api/v1/tasks/{id}/retry",
        "{}",
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "post",
        "/api/v1/tasks/{id}/progress",
        r#"{"processed":1}"#,
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "post",
        "/api/v1/tasks/{id}/errors",
        r#"{"error_type":"E","message":"m"}"#,
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/tasks/{id}/progress",
        "",
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/tasks/{id}/events",
        "",
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/tasks/{id}/logs",
        "",
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/tasks/{id}/records",
        "",
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "post",
        "/api/v1/tasks/{id}/messages",
        r#"{"type":"note"}"#,
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/tasks/{id}/ws",
        "",
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/ws",
        "",
        ["401", "ok", "ok", "ok", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/plugins",
        "",
        ["401", "ok", "ok", "ok", "401", "ok"],
    ),
    (
        "post",
        "/api/v1/plugins",
        "{}",
        ["401", "403", "403", "403", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/plugins/{name}",
        "",
        ["401", "ok", "ok", "ok", "401", "ok"],
    ),
    (
        "put",
        "/api/v1/plugins/{name}",
        "{}",
        ["401", "403", "403", "403", "401", "ok"],
    ),
    (
        "delete",
        "/api/v1/plugins/{name}",
        "",
        ["401", "403", "403", "403", "401", "ok"],
    ),
    (
        "post",
        "/api/v1/runners",
        r#"{"name":"m","labels":[]}"#,
        ["401", "403", "403", "403", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/runners",
        "",
        ["401", "403", "403", "403", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/runners/{id}",
        "",
        ["401", "403", "403", "403", "401", "ok"],
    ),
    (
        "delete",
        "/api/v1/runners/{id}",
        "",
        ["401", "403", "403", "403", "401", "ok"],
    ),
    (
        "post",
        "/api/v1/runners/{id}/heartbeat",
        "{}",
        ["401", "401", "401", "401", "ok", "401"],
    ),
    (
        "post",
        "/api/v1/runners/{id}/jobs/claim",
        "",
        ["401", "401", "401", "401", "ok", "401"],
    ),
    (
        "post",
        "/api/v1/runners/{id}/jobs/{job}/logs",
        r#"{"lines":[]}"#,
        ["401", "401", "401", "401", "ok", "401"],
    ),
    (
        "post",
        "/api/v1/runners/{id}/jobs/{job}/progress",
        "{}",
        ["401", "401", "401", "401", "ok", "401"],
    ),
    (
        "post",
        "/api/v1/runners/{id}/jobs/{job}/steps",
        r#"{"name":"s","exit_code":0,"duration_ms":1,"output_tail":""}"#,
        ["401", "401", "401", "401", "ok", "401"],
    ),
    (
        "post",
        "/api/v1/runners/{id}/jobs/{job}/finish",
        r#"{"status":"succeeded"}"#,
        ["401", "401", "401", "401", "ok", "401"],
    ),
    (
        "get",
        "/api/v1/queues",
        "",
        ["401", "403", "403", "403", "401", "ok"],
    ),
    (
        "post",
        "/api/v1/queues/{plugin}/pause",
        "",
        ["401", "403", "403", "403", "401", "ok"],
    ),
    (
        "post",
        "/api/v1/queues/{plugin}/resume",
        "",
        ["401", "403", "403", "403", "401", "ok"],
    ),
    (
        "delete",
        "/api/v1/queues/{plugin}/failed",
        "",
        ["401", "403", "403", "403", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/health",
        "",
        ["401", "ok", "ok", "ok", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/health?details=true",
        "",
        ["401", "403", "403", "403", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/stats",
        "",
        ["401", "ok", "ok", "ok", "401", "ok"],
    ),
    (
        "post",
        "/api/v1/tasks/{id}/secret-scan",
        "",
        ["401", "404", "404", "404", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/projects",
        "",
        ["401", "ok", "ok", "ok", "401", "ok"],
    ),
    (
        "post",
        "/api/v1/github/webhook",
        r#"{}"#,
        ["ok", "ok", "ok", "ok", "ok", "ok"],
    ),
    (
        "get",
        "/api/v1/github/repositories",
        "",
        ["401", "ok", "ok", "ok", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/github/status",
        "",
        ["401", "ok", "ok", "ok", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/streams",
        "",
        ["401", "ok", "ok", "ok", "401", "ok"],
    ),
    (
        "get",
        "/api/v1/openapi.json",
        "",
        ["401", "ok", "ok", "ok", "401", "ok"],
    ),
    ("get", "/health", "", ["ok", "ok", "ok", "ok", "ok", "ok"]),
    (
        "get",
        "/health/live",
        "",
        ["ok", "ok", "ok", "ok", "ok", "ok"],
    ),
    (
        "get",
        "/health/ready",
        "",
        ["ok", "ok", "ok", "ok", "ok", "ok"],
    ),
    ("get", "/metrics", "", ["ok", "ok", "ok", "ok", "ok", "ok"]),
];

fn fill(path: &str, params: &[(&str, String)]) -> String {
    params.iter().fold(path.to_owned(), |path, (name, value)| {
        path.replace(name, value)
    })
}

#[tokio::test]
async fn every_route_gives_every_kind_of_caller_the_decided_answer() {
    let server = TestServer::start().await;
    let admin = server.api();

    // Every (method, path) of the document has a row, and every row is in the document.
    let (_, document) = admin.get("/api/v1/openapi.json").await;
    let mut documented: Vec<(String, String)> = document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|ops| ops.keys())
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    documented.sort();
    let mut tabled: Vec<(String, String)> = EXPECTED
        .iter()
        .map(|(m, p, _, _)| ((*m).to_owned(), p.split('?').next().unwrap_or(p).to_owned()))
        .collect();
    tabled.sort();
    tabled.dedup();
    assert_eq!(
        documented, tabled,
        "routes without a decision in EXPECTED (or rows for routes that are gone)"
    );

    // The things the routes name: the admin's task, a key, a user, a runner.
    let task = admin.create(echo(json!({"matrix": true}))).await;
    let task_id = task["id"].as_str().unwrap().to_owned();
    admin.finished(&task_id).await;
    let (_, key) = admin
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "to-revoke", "role": "viewer"}),
        )
        .await;
    let user_token = server.user_token("matrix-user", "user").await;
    let viewer_token = server.user_token("matrix-viewer", "viewer").await;
    let as_user = client_with_token(&user_token);
    let (_, restricted) = crate::harness::Api {
        client: &as_user,
        base: server.url(""),
    }
    .post(
        "/api/v1/auth/api-keys",
        json!({"name": "scoped", "permissions": ["testkit:read"]}),
    )
    .await;
    let restricted = restricted["key"].clone();
    let (_, runner) = admin
        .post(
            "/api/v1/runners",
            json!({"name": "matrix-runner", "labels": ["linux"]}),
        )
        .await;
    let runner_id = runner["id"].as_str().unwrap().to_owned();
    let params = [
        ("{job}", "no-such-job".to_owned()),
        ("{username}", "matrix-user".to_owned()),
        ("{name}", "testkit".to_owned()),
        ("{plugin}", "testkit".to_owned()),
    ];

    let clients: Vec<reqwest::Client> = vec![
        reqwest::Client::new(),
        client_with_token(&viewer_token),
        client_with_token(&user_token),
        client_with_token(restricted.as_str().unwrap()),
        client_with_token(runner["token"].as_str().unwrap()),
        client_with_token(&server.token),
    ];
    let mut wrong = Vec::new();
    // Caller by caller, the admin last: its calls change things (a plugin unloaded, a runner
    // removed) that the others' rows assume.
    for (caller, client) in CALLERS.iter().zip(&clients) {
        for (method, path, body, outcomes) in EXPECTED {
            let expected = outcomes[CALLERS.iter().position(|c| c == caller).unwrap()];
            let mut path = fill(path, &params);
            let id = if path.starts_with("/api/v1/runners/{id}") {
                runner_id.clone()
            } else if path.starts_with("/api/v1/auth/api-keys/{id}") {
                key["id"].as_str().unwrap().to_owned()
            } else {
                task_id.clone()
            };
            path = path.replace("{id}", &id);
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut request = client.request(method.clone(), server.url(&path));
            if path.ends_with("/ws") {
                // A stream is asked for as a browser would: as an upgrade.
                request = request
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .header("sec-websocket-version", "13")
                    .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
            }
            if !body.is_empty() {
                request = request
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            let fine = match expected {
                "ok" => !matches!(status, 401 | 403) && status < 500,
                exact => status.to_string() == exact,
            };
            if !fine {
                let excerpt: String = text.chars().take(160).collect();
                wrong.push(format!(
                    "{caller:>14}: {method} {path} -> {status}, expected {expected}: {excerpt}"
                ));
            }
            assert!(
                status < 500,
                "{caller}: {method} {path} -> {status}: {text}"
            );
        }
    }
    assert!(
        wrong.is_empty(),
        "{} answers differ from the table:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

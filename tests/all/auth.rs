//! Authentication, authorisation, rate limits and secrets, against a real server.

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Api, TestServer, assert_error, client_with_token, echo};

#[tokio::test]
async fn every_api_route_but_login_and_the_signed_webhook_needs_credentials() {
    let server = TestServer::start().await;
    let anonymous = server.anonymous();
    // Walk the route table (the OpenAPI document) rather than a hand-picked list.
    let (_, doc) = server.api().get("/api/v1/openapi.json").await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with("/api/v1/") {
            continue;
        }
        for method in item.as_object().expect("operations").keys() {
            let concrete = path
                .replace("{id}", "x")
                .replace("{name}", "testkit")
                .replace("{plugin}", "testkit");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let (status, body) = anonymous
                .send(method.clone(), &concrete, Some(json!({})))
                .await;
            if path == "/api/v1/auth/login" {
                assert_ne!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "login itself needs no credentials"
                );
                continue;
            }
            if path == "/api/v1/github/webhook" {
                // Its credential is the delivery's signature (tests in `github`); an unsigned
                // one is refused, here where the integration is off with a 404.
                assert_error(status, &body, 404, "NOT_FOUND");
                continue;
            }
            assert_error(status, &body, 401, "AUTHENTICATION_REQUIRED");
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} routes walked");
    // Query-string credentials are for WebSocket upgrades only.
    let (status, _) = anonymous
        .get(&format!("/api/v1/tasks?token={}", server.token))
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "not accepted as a credential"
    );
    // Health and metrics stay open for probes.
    assert_eq!(anonymous.get("/health").await.0, StatusCode::OK);
    let response = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn login_returns_a_bearer_token_and_refuses_wrong_credentials_alike() {
    let server = TestServer::start().await;
    let anonymous = server.anonymous();
    let (status, body) = anonymous
        .post(
            "/api/v1/auth/login",
            json!({"username": "admin", "password": crate::harness::ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["user"], json!({"username": "admin", "role": "admin"}));
    assert!(body["expires_in"].as_u64() > Some(0));
    let (s1, wrong_password) = anonymous
        .post(
            "/api/v1/auth/login",
            json!({"username": "admin", "password": "nope-nope"}),
        )
        .await;
    let (s2, unknown_user) = anonymous
        .post(
            "/api/v1/auth/login",
            json!({"username": "ghost", "password": "nope-nope"}),
        )
        .await;
    assert_error(s1, &wrong_password, 401, "AUTHENTICATION_REQUIRED");
    assert_error(s2, &unknown_user, 401, "AUTHENTICATION_REQUIRED");
    assert_eq!(
        wrong_password["error"]["message"], unknown_user["error"]["message"],
        "no hint which one was wrong"
    );
}

fn jwt_secret(server: &TestServer) -> String {
    std::fs::read_to_string(server.data_dir().join("jwt.key"))
        .expect("jwt key")
        .trim()
        .to_owned()
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn expired_tampered_wrongly_signed_and_unsigned_tokens_are_refused() {
    let server = TestServer::start().await;
    let now = chrono::Utc::now().timestamp();
    let secret = jwt_secret(&server);
    let sign = |claims: &Value, key: &str| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(key.as_bytes()),
        )
        .expect("signed")
    };
    let valid = sign(
        &json!({"sub": "admin", "role": "admin", "permissions": [], "iat": now, "exp": now + 600}),
        &secret,
    );
    let expired = sign(
        &json!({"sub": "admin", "role": "admin", "permissions": [], "iat": now - 7200, "exp": now - 3600}),
        &secret,
    );
    let wrong_key = sign(
        &json!({"sub": "admin", "role": "admin", "permissions": [], "iat": now, "exp": now + 600}),
        "an entirely different secret of enough length",
    );
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(
            &json!({"sub": "admin", "role": "admin", "permissions": [], "iat": now, "exp": now + 600})
        )
    );
    let mut parts: Vec<String> = server.token.split('.').map(str::to_owned).collect();
    parts[1] = b64(
        &json!({"sub": "admin", "role": "admin", "permissions": ["*:create"], "iat": now, "exp": now + 999_999}),
    );
    let tampered = parts.join(".");
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &json!({"sub": "admin", "role": "admin", "iat": now, "exp": now + 600}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signed");

    let client = client_with_token(&valid);
    let api = Api {
        client: &client,
        base: format!("http://{}", server.addr),
    };
    assert_eq!(
        api.get("/api/v1/tasks").await.0,
        StatusCode::OK,
        "the control case"
    );
    for (name, token) in [
        ("expired", expired),
        ("wrong key", wrong_key),
        ("alg none", unsigned),
        ("tampered", tampered),
        ("other algorithm", hs512),
        ("garbage", "abc".into()),
    ] {
        let client = client_with_token(&token);
        let api = Api {
            client: &client,
            base: format!("http://{}", server.addr),
        };
        let (status, body) = api.get("/api/v1/tasks").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name} token: {body}");
    }
}

#[tokio::test]
async fn api_keys_are_shown_once_work_in_both_headers_and_stop_at_revocation() {
    let server = TestServer::start().await;
    let api = server.api();
    let (status, created) = api
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "ci", "role": "user"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().expect("key in clear").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    let (_, listed) = api.get("/api/v1/auth/api-keys").await;
    let listed_text = listed.to_string();
    assert!(
        listed_text.contains(&id) && !listed_text.contains(&key),
        "listed without the key: {listed}"
    );
    assert!(
        !listed_text.contains(key.rsplit('_').next().unwrap_or("")),
        "nor its secret part"
    );

    let with_header = server
        .client_without_auth()
        .get(server.url("/api/v1/tasks"))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("sent");
    assert_eq!(with_header.status(), StatusCode::OK);
    let bearer = client_with_token(&key);
    assert_eq!(
        bearer
            .get(server.url("/api/v1/tasks"))
            .send()
            .await
            .expect("sent")
            .status(),
        StatusCode::OK
    );

    let (status, revoked) = api
        .send(Method::DELETE, &format!("/api/v1/auth/api-keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(revoked["revoked_at"].is_string());
    let after = bearer
        .get(server.url("/api/v1/tasks"))
        .send()
        .await
        .expect("sent");
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED, "refused at once");

    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(1500))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (_, short) = api
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "short", "expires_at": soon}),
        )
        .await;
    let short = client_with_token(short["key"].as_str().expect("key"));
    assert_eq!(
        short
            .get(server.url("/api/v1/tasks"))
            .send()
            .await
            .expect("sent")
            .status(),
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(
        short
            .get(server.url("/api/v1/tasks"))
            .send()
            .await
            .expect("sent")
            .status(),
        StatusCode::UNAUTHORIZED
    );

    let (s, b) = api
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "both", "role": "user", "permissions": ["*:read"]}),
        )
        .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");
    let (s, b) = api
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "x", "permissions": ["everything"]}),
        )
        .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");
}

#[tokio::test]
async fn a_key_with_explicit_permissions_can_do_only_those() {
    let server = TestServer::start().await;
    let (_, created) = server
        .api()
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "reader", "permissions": ["testkit:read"]}),
        )
        .await;
    let reader = client_with_token(created["key"].as_str().expect("key"));
    let api = Api {
        client: &reader,
        base: format!("http://{}", server.addr),
    };
    let (s, b) = api.post("/api/v1/tasks", echo(json!(1))).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    assert_eq!(api.get("/api/v1/tasks").await.0, StatusCode::OK);
}

#[tokio::test]
async fn viewers_read_only_and_users_see_only_their_own_tasks() {
    let server = TestServer::start().await;
    let alice = server.user("alice", "user").await;
    let bob = server.user("bob", "user").await;
    let viewer = server.user("vera", "viewer").await;
    let base = format!("http://{}", server.addr);
    let (alice, bob, viewer) = (
        Api {
            client: &alice,
            base: base.clone(),
        },
        Api {
            client: &bob,
            base: base.clone(),
        },
        Api {
            client: &viewer,
            base: base.clone(),
        },
    );

    let task = alice
        .create(json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 5000, "steps": 50}}))
        .await;
    let id = task["id"].as_str().expect("id");
    assert_eq!(task["owner"], "alice");

    let (s, b) = viewer.post("/api/v1/tasks", echo(json!(1))).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, _) = viewer
        .send(Method::DELETE, &format!("/api/v1/tasks/{id}"), None)
        .await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND,
        "a viewer cannot cancel: {s}"
    );

    let (s, b) = bob.get(&format!("/api/v1/tasks/{id}")).await;
    assert_error(s, &b, 404, "TASK_NOT_FOUND");
    let (s, b) = bob
        .send(Method::DELETE, &format!("/api/v1/tasks/{id}"), None)
        .await;
    assert_error(s, &b, 404, "TASK_NOT_FOUND");
    for path in ["events", "logs", "records", "progress"] {
        let (s, b) = bob.get(&format!("/api/v1/tasks/{id}/{path}")).await;
        assert_error(s, &b, 404, "TASK_NOT_FOUND");
    }
    let follow = bob
        .client
        .get(format!("{base}/api/v1/tasks/{id}/logs?follow=true"))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        follow.status(),
        StatusCode::NOT_FOUND,
        "bob cannot stream alice's logs"
    );
    let (_, listed) = bob.get("/api/v1/tasks").await;
    assert_eq!(
        listed["meta"]["total"], 0,
        "bob lists none of alice's tasks"
    );
    let (_, listed) = bob.get("/api/v1/tasks?owner=alice").await;
    assert_eq!(listed["meta"]["total"], 0);
    let (_, stats) = bob.get("/api/v1/stats").await;
    assert_eq!(stats["total"], 0);

    let (_, own) = alice.get("/api/v1/tasks").await;
    assert_eq!(own["meta"]["total"], 1);
    let (_, all) = server.api().get("/api/v1/tasks").await;
    assert_eq!(all["meta"]["total"], 1, "admin sees every task");
    let (status, cancelled) = alice
        .send(Method::DELETE, &format!("/api/v1/tasks/{id}"), None)
        .await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );

    // Only users:manage creates users; plugins:manage manages plugins.
    let (s, b) = alice
        .post(
            "/api/v1/users",
            json!({"username": "mallory", "password": "long-enough-1", "role": "admin"}),
        )
        .await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, b) = alice
        .send(Method::DELETE, "/api/v1/plugins/testkit", None)
        .await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, b) = alice.post("/api/v1/queues/testkit/pause", json!({})).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, b) = alice
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "escalate", "role": "admin"}),
        )
        .await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, b) = server
        .api()
        .post(
            "/api/v1/users",
            json!({"username": "alice", "password": "another-password", "role": "user"}),
        )
        .await;
    assert_error(s, &b, 409, "CONFLICT");
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_headers_and_resets() {
    let server = TestServer::builder()
        .config(|c| c.rate_limits.per_principal_per_minute = 60)
        .start()
        .await;
    let api = server.api();
    let response = server
        .client
        .get(server.url("/api/v1/queues"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.headers()["x-ratelimit-limit"], "60");
    assert_eq!(response.headers()["x-ratelimit-remaining"], "59");
    assert!(response.headers().contains_key("x-ratelimit-reset"));
    let mut refused = None;
    for _ in 0..100 {
        let response = server
            .client
            .get(server.url("/api/v1/queues"))
            .send()
            .await
            .expect("sent");
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(response);
            break;
        }
    }
    let refused = refused.expect("refused within the burst");
    assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let status = refused.status();
    assert_error(
        status,
        &refused.json().await.expect("json"),
        429,
        "RATE_LIMIT_EXCEEDED",
    );
    tokio::time::sleep(Duration::from_millis(retry_after * 1000 + 100)).await;
    assert_eq!(
        api.get("/api/v1/queues").await.0,
        StatusCode::OK,
        "allowed again after Retry-After"
    );
}

#[tokio::test]
async fn login_attempts_are_limited_per_ip() {
    let server = TestServer::builder()
        .config(|c| c.rate_limits.login_per_minute = 3)
        .start()
        .await;
    let anonymous = server.anonymous();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (status, _) = anonymous
            .post(
                "/api/v1/auth/login",
                json!({"username": "admin", "password": "guess-guess"}),
            )
            .await;
        statuses.push(status.as_u16());
    }
    // The harness's own login used one of the three.
    assert_eq!(statuses, [401, 401, 429, 429, 429]);
}

fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn a_secret_input_never_appears_in_responses_events_logs_records_or_files() {
    let server = TestServer::start().await;
    let api = server.api();
    let token = "glpat-Zx9vQ2mK7wR4tY8uP3sL";
    let task = api
        .create(json!({"plugin": "testkit", "type": "leak_secret", "input": {"api_endpoint": "https://gitlab.example.com/api/v4", "credentials": {"access_token": token}}}))
        .await;
    assert_eq!(task["input"]["credentials"]["access_token"], "***");
    let id = task["id"].as_str().expect("id").to_owned();
    let done = api.finished(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    // The plugin got the real token...
    assert_eq!(done["result"]["token_length"], token.len());
    assert_eq!(done["result"]["looks_like_gitlab"], true);
    // ...and everything it tried to leak is masked.
    assert_eq!(done["result"]["token"], "***");

    let mut seen = String::new();
    for path in [
        format!("/api/v1/tasks/{id}"),
        format!("/api/v1/tasks/{id}/events?limit=1000"),
        format!("/api/v1/tasks/{id}/logs?limit=1000"),
        format!("/api/v1/tasks/{id}/records"),
        format!("/api/v1/tasks/{id}/progress"),
        "/api/v1/tasks?limit=100".to_owned(),
        "/api/v1/stats".to_owned(),
    ] {
        let (status, body) = api.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        seen.push_str(&body.to_string());
    }
    let logs = server
        .client
        .get(server.url(&format!("/api/v1/tasks/{id}/logs?follow=true")))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    seen.push_str(&logs);
    assert!(
        seen.contains("using token ***"),
        "the log line is there, masked: {seen}"
    );
    assert!(seen.contains("stdout token=***"), "{seen}");
    assert!(!seen.contains(token), "the token leaked into a response");
    assert!(!seen.contains("Zx9vQ2mK7wR4tY8uP3sL"));

    // A validation error that quotes the input does not quote the secret.
    let (s, b) = api
        .post("/api/v1/tasks", json!({"plugin": "testkit", "type": "leak_secret", "input": {"credentials": {"access_token": "reject-me"}}}))
        .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");
    assert!(!b.to_string().contains("reject-me"), "{b}");

    // Nothing in the data directory holds it in clear.
    let leaked = files_containing(server.data_dir(), token.as_bytes());
    assert!(
        leaked.is_empty(),
        "the token is stored in clear in {leaked:?}"
    );
}

#[tokio::test]
async fn cors_is_closed_by_default_and_open_to_configured_origins_only() {
    let closed = TestServer::start().await;
    let response = closed
        .client
        .get(closed.url("/api/v1/tasks"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("sent");
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let open = TestServer::builder()
        .config(|c| c.cors.allowed_origins = vec!["https://app.example.com".into()])
        .start()
        .await;
    let preflight = open
        .client_without_auth()
        .request(Method::OPTIONS, open.url("/api/v1/tasks"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("sent");
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        preflight.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap_or("")
            .contains("authorization")
    );
    let allowed = open
        .client
        .get(open.url("/api/v1/tasks"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("sent");
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = open
        .client
        .get(open.url("/api/v1/tasks"))
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .expect("sent");
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn users_manage_does_not_let_a_non_admin_create_admins() {
    let server = TestServer::start().await;
    server.user("ursula", "user").await;
    let (_, key) = server
        .api()
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "hr", "permissions": ["users:manage"]}),
        )
        .await;
    // The admin made the key, so it acts as admin; a user's key with users:manage must not.
    let user_client = {
        let token = crate::harness::login(
            &format!("http://{}", server.addr),
            "ursula",
            "ursula-password",
        )
        .await;
        client_with_token(&token)
    };
    let ursula = Api {
        client: &user_client,
        base: format!("http://{}", server.addr),
    };
    let (s, b) = ursula
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "hr", "permissions": ["users:manage"]}),
        )
        .await;
    assert_error(s, &b, 403, "FORBIDDEN");
    assert!(key["key"].is_string());
    let admin_key = client_with_token(key["key"].as_str().expect("key"));
    let hr = Api {
        client: &admin_key,
        base: format!("http://{}", server.addr),
    };
    let (status, _) = hr
        .post(
            "/api/v1/users",
            json!({"username": "newbie", "password": "newbie-password", "role": "user"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "users:manage creates users");
    let (s, b) = hr
        .post(
            "/api/v1/users",
            json!({"username": "boss", "password": "boss-password", "role": "admin"}),
        )
        .await;
    assert_error(s, &b, 403, "FORBIDDEN");
}

//! Tenancy over real HTTP: no principal gets rights it was not given (keys, reports, runners,
//! restricted plugins, child tasks), and no tenant reaches another's tasks through lists,
//! statistics or dependencies.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use taskhost::runtime::Grants;

use crate::harness::{Api, TestServer, assert_error, client_with_token, echo};

/// Creates an API key as `api`'s caller; returns (status, body).
async fn make_key(api: &Api<'_>, body: Value) -> (StatusCode, Value) {
    api.post("/api/v1/auth/api-keys", body).await
}

/// A key's secret, for a key that must be created.
async fn key(api: &Api<'_>, body: Value) -> String {
    let (status, created) = make_key(api, body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["key"].as_str().expect("key").to_owned()
}

fn api_of(server: &TestServer, client: &reqwest::Client) -> Api<'static> {
    Api {
        client: Box::leak(Box::new(client.clone())),
        base: server.url(""),
    }
}

fn external(plugin: &str, reporters: &[&str]) -> Value {
    json!({"plugin": plugin, "type": "work", "executor": "external", "reporters": reporters})
}

#[tokio::test]
async fn a_viewer_cannot_give_a_key_rights_it_does_not_hold() {
    let server = TestServer::start().await;
    let viewer = server.user("vera", "viewer").await;
    let api = api_of(&server, &viewer);
    for permission in [
        "*:create",
        "testkit:create",
        "tasks:report",
        "runners:register",
    ] {
        let (status, body) =
            make_key(&api, json!({"name": "x", "permissions": [permission]})).await;
        assert_error(status, &body, 403, "FORBIDDEN");
    }
    let (_, keys) = api.get("/api/v1/auth/api-keys").await;
    assert_eq!(keys["data"].as_array().map(Vec::len), Some(0), "{keys}");
    // What a viewer holds, a key of its may hold.
    let reader = key(
        &api,
        json!({"name": "reader", "permissions": ["testkit:read"]}),
    )
    .await;
    let (status, body) = api_of(&server, &client_with_token(&reader))
        .post("/api/v1/tasks", echo(json!({})))
        .await;
    assert_error(status, &body, 403, "FORBIDDEN");
}

#[tokio::test]
async fn a_key_shrinks_with_its_owner_when_the_owner_is_demoted() {
    let server = TestServer::start().await;
    let user = server.user("uma", "user").await;
    let key = key(
        &api_of(&server, &user),
        json!({"name": "ci", "permissions": ["*:create", "*:read"]}),
    )
    .await;
    let with_key = api_of(&server, &client_with_token(&key));
    let task = with_key.create(echo(json!({"n": 1}))).await;

    let (status, body) = server
        .api()
        .send(
            Method::PATCH,
            "/api/v1/users/uma",
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "viewer");

    let (status, body) = with_key.post("/api/v1/tasks", echo(json!({"n": 2}))).await;
    assert_error(status, &body, 403, "FORBIDDEN");
    // Reading stays within a viewer's rights.
    let (status, _) = with_key
        .get(&format!("/api/v1/tasks/{}", task["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::OK);
    // A role change needs users:manage, and only an admin makes admins.
    let (status, body) = with_key
        .send(
            Method::PATCH,
            "/api/v1/users/uma",
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_error(status, &body, 403, "FORBIDDEN");
}

#[tokio::test]
async fn reports_come_only_from_the_owner_or_a_named_reporter_and_stop_at_the_end() {
    let server = TestServer::start().await;
    let owner = api_of(&server, &server.user("olga", "user").await);
    let reporter = api_of(&server, &server.user("rex", "user").await);
    let stranger = api_of(&server, &server.user("sam", "user").await);
    let stranger_key = key(
        &stranger,
        json!({"name": "agent", "permissions": ["tasks:report"]}),
    )
    .await;
    let stranger_key = api_of(&server, &client_with_token(&stranger_key));

    let mut task = external("agents", &["rex"]);
    task["input"] = json!({"prompt": "private to olga"});
    let task = owner.create(task).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/tasks/{id}");
    let progress = format!("/api/v1/tasks/{id}/progress");

    for api in [&stranger, &stranger_key] {
        let (status, body) = api
            .post(&progress, json!({"processed": 1, "total": 2}))
            .await;
        assert_error(status, &body, 404, "TASK_NOT_FOUND");
        let (status, body) = api
            .send(
                Method::PUT,
                &path,
                Some(json!({"status": "completed", "result": {"forged": true}})),
            )
            .await;
        assert_error(status, &body, 404, "TASK_NOT_FOUND");
    }

    // A named reporter reports, and gets back the state it reports on, not the input.
    let (status, body) = reporter
        .post(&progress, json!({"processed": 1, "total": 2}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "running");
    assert!(body.get("input").is_none(), "{body}");
    let (status, _) = reporter.get(&path).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a reporter does not read the task"
    );

    let (status, body) = owner
        .send(
            Method::PUT,
            &path,
            Some(json!({"status": "completed", "result": {"ok": 1}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["input"]["prompt"], "private to olga");

    // A finished task takes no reports, from anyone.
    let (status, body) = reporter.post(&progress, json!({"processed": 2})).await;
    assert_error(status, &body, 409, "CONFLICT");
    let (status, body) = owner
        .send(Method::PUT, &path, Some(json!({"status": "failed"})))
        .await;
    assert_error(status, &body, 409, "CONFLICT");
    let (status, body) = server
        .api()
        .send(
            Method::PUT,
            &path,
            Some(json!({"result": {"rewritten": true}})),
        )
        .await;
    assert_error(status, &body, 409, "CONFLICT");
    let finished = owner.task(&id).await;
    assert_eq!(finished["status"], "completed");
    assert_eq!(finished["result"], json!({"ok": 1}));
}

#[tokio::test]
async fn runner_registration_is_an_operator_right_held_to_the_labels_of_its_key() {
    let server = TestServer::start().await;
    let user = api_of(&server, &server.user("ursula", "user").await);
    let registration = json!({"name": "box", "labels": ["linux"], "capacity": 1});

    let (status, body) = user.post("/api/v1/runners", registration.clone()).await;
    assert_error(status, &body, 403, "FORBIDDEN");
    let (status, body) = make_key(
        &user,
        json!({"name": "r", "permissions": ["runners:register"]}),
    )
    .await;
    assert_error(status, &body, 403, "FORBIDDEN");

    // The operator's key may register runners, but only with the labels it names.
    let limited = key(
        &server.api(),
        json!({"name": "linux-only", "permissions": ["runners:register"], "runner_labels": ["linux"]}),
    )
    .await;
    let limited = api_of(&server, &client_with_token(&limited));
    let (status, body) = limited
        .post(
            "/api/v1/runners",
            json!({"name": "sneaky", "labels": ["linux", "pool-ci"], "capacity": 1}),
        )
        .await;
    assert_error(status, &body, 403, "FORBIDDEN");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pool-ci")
    );
    let (status, registered) = limited.post("/api/v1/runners", registration).await;
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    let runner = format!("/api/v1/runners/{}", registered["id"].as_str().unwrap());

    // Nobody else lists, reads or removes it.
    let (status, body) = user.get("/api/v1/runners").await;
    assert_error(status, &body, 403, "FORBIDDEN");
    let (status, body) = user.send(Method::DELETE, &runner, None).await;
    assert_error(status, &body, 403, "FORBIDDEN");
    // Another operator's registration key neither sees nor removes it.
    let ops2 = api_of(&server, &server.user("ops2", "admin").await);
    let other_operator = key(
        &ops2,
        json!({"name": "other", "permissions": ["runners:register"]}),
    )
    .await;
    let other_operator = api_of(&server, &client_with_token(&other_operator));
    let (status, body) = other_operator.send(Method::DELETE, &runner, None).await;
    assert_error(status, &body, 404, "RUNNER_NOT_FOUND");
    let (_, listed) = other_operator.get("/api/v1/runners").await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(0), "{listed}");
    let (status, _) = server.api().get(&runner).await;
    assert_eq!(status, StatusCode::OK, "an admin sees every runner");
    let (status, _) = limited.send(Method::DELETE, &runner, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "its registrant removes it");
}

fn delegate_task() -> Value {
    json!({
        "plugin": "runner",
        "type": "delegate",
        "input": {"repository": "acme/app", "job_id": 1, "job_name": "x", "labels": ["linux"], "steps": [{"name": "id", "run": ["id"]}]},
        "run_at": "2099-01-01T00:00:00Z",
    })
}

#[tokio::test]
async fn plugins_that_reach_runners_need_an_explicit_grant_to_create_tasks() {
    let mut grants = Grants::default();
    grants.access.creators = vec!["bea".into()];
    grants.runners = Some(taskhost::runtime::RunnersGrant::allowed());
    let server = TestServer::builder()
        .plugin_grants("runner", grants)
        .start()
        .await;
    let ann = api_of(&server, &server.user("ann", "user").await);
    let bea = api_of(&server, &server.user("bea", "user").await);

    let (status, body) = ann.post("/api/v1/tasks", delegate_task()).await;
    assert_error(status, &body, 403, "FORBIDDEN");
    for permission in ["runner:create", "*:create"] {
        let ann_key = make_key(&ann, json!({"name": "k", "permissions": [permission]})).await;
        if ann_key.0 == StatusCode::CREATED {
            let with_key = api_of(
                &server,
                &client_with_token(ann_key.1["key"].as_str().unwrap()),
            );
            let (status, body) = with_key.post("/api/v1/tasks", delegate_task()).await;
            assert_error(status, &body, 403, "FORBIDDEN");
        } else {
            assert_error(ann_key.0, &ann_key.1, 403, "FORBIDDEN");
        }
    }
    // The user the operator listed may; so may an admin, but not through `*:create`.
    bea.create(delegate_task()).await;
    server.api().create(delegate_task()).await;
    let wildcard = key(
        &server.api(),
        json!({"name": "w", "permissions": ["*:create"]}),
    )
    .await;
    let (status, body) = api_of(&server, &client_with_token(&wildcard))
        .post("/api/v1/tasks", delegate_task())
        .await;
    assert_error(status, &body, 403, "FORBIDDEN");
    let named = key(
        &server.api(),
        json!({"name": "n", "permissions": ["runner:create"]}),
    )
    .await;
    api_of(&server, &client_with_token(&named))
        .create(delegate_task())
        .await;
    // Open plugins stay open to users.
    ann.create(echo(json!({}))).await;
}

#[tokio::test]
async fn a_plugin_scoped_key_lists_and_counts_only_that_plugins_tasks() {
    let server = TestServer::start().await;
    let user = api_of(&server, &server.user("pia", "user").await);
    user.create(external("agents", &[])).await;
    let echo_task = user.create(echo(json!({}))).await;
    user.finished(echo_task["id"].as_str().unwrap()).await;
    let scoped = key(&user, json!({"name": "s", "permissions": ["agents:read"]})).await;
    let scoped = api_of(&server, &client_with_token(&scoped));

    let (_, listed) = scoped.get("/api/v1/tasks").await;
    let plugins: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["plugin"].as_str().unwrap())
        .collect();
    assert_eq!(plugins, ["agents"], "{listed}");
    assert_eq!(listed["meta"]["total"], 1);
    let (_, listed) = scoped.get("/api/v1/tasks?plugin=testkit").await;
    assert_eq!(listed["meta"]["total"], 0, "{listed}");
    let (_, stats) = scoped.get("/api/v1/stats").await;
    assert_eq!(stats["total"], 1, "{stats}");
    assert!(stats["by_plugin"].get("testkit").is_none(), "{stats}");
    // The user's own login still sees both.
    let (_, stats) = user.get("/api/v1/stats").await;
    assert_eq!(stats["total"], 2, "{stats}");
}

#[tokio::test]
async fn depending_on_another_users_task_is_as_if_it_did_not_exist() {
    let server = TestServer::start().await;
    let alice = api_of(&server, &server.user("alice", "user").await);
    let bob = api_of(&server, &server.user("bob", "user").await);
    let private = alice.create(echo(json!({}))).await;
    let mut depends = echo(json!({}));
    depends["depends_on"] = json!([private["id"]]);
    let (status, theirs) = bob.post("/api/v1/tasks", depends).await;
    let mut missing = echo(json!({}));
    missing["depends_on"] = json!(["no-such-task"]);
    let (_, none) = bob.post("/api/v1/tasks", missing).await;
    assert_error(status, &theirs, 400, "VALIDATION_ERROR");
    assert_eq!(
        theirs["error"]["message"]
            .as_str()
            .unwrap()
            .replace(private["id"].as_str().unwrap(), "ID"),
        none["error"]["message"]
            .as_str()
            .unwrap()
            .replace("no-such-task", "ID"),
        "the answer must not tell an existing task from a missing one"
    );
}

#[tokio::test]
async fn a_child_task_acts_through_the_key_that_created_its_parent() {
    let server = TestServer::start().await;
    let user = api_of(&server, &server.user("kim", "user").await);
    let (key_status, created) = make_key(
        &user,
        json!({"name": "spawner", "permissions": ["testkit:create", "testkit:read"]}),
    )
    .await;
    assert_eq!(key_status, StatusCode::CREATED, "{created}");
    let key_id = created["id"].as_str().unwrap().to_owned();
    let with_key = api_of(
        &server,
        &client_with_token(created["key"].as_str().unwrap()),
    );

    // While the key is good, the child is created.
    let parent = with_key
        .create(json!({"plugin": "testkit", "type": "host_calls", "input": {"spawn": true}}))
        .await;
    let done = with_key.finished(parent["id"].as_str().unwrap()).await;
    assert!(done["result"]["spawn"]["ok"].is_string(), "{done}");

    // Once it is revoked, the task it created can no longer spawn (the owner's own role
    // would allow it: the key's limits hold down the tree).
    let (status, _) = server
        .api()
        .post("/api/v1/queues/testkit/pause", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let parent = with_key
        .create(json!({"plugin": "testkit", "type": "host_calls", "input": {"spawn": true}}))
        .await;
    let (status, _) = user
        .send(
            Method::DELETE,
            &format!("/api/v1/auth/api-keys/{key_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    server
        .api()
        .post("/api/v1/queues/testkit/resume", json!({}))
        .await;
    let done = user
        .wait_for(
            parent["id"].as_str().unwrap(),
            Duration::from_secs(30),
            |t| t["status"] == "completed" || t["status"] == "failed",
        )
        .await;
    assert_eq!(done["result"]["spawn"]["error"], "denied", "{done}");
}

#[tokio::test]
async fn a_tree_of_tasks_stops_growing_at_the_depth_limit() {
    let server = TestServer::start().await;
    let api = server.api();
    let root = api
        .create(json!({"plugin": "testkit", "type": "host_calls", "input": {"spawn": true, "spawn_chain": true}}))
        .await;
    // Walk down the chain: each task names its child in its result, until one was refused.
    let mut id = root["id"].as_str().unwrap().to_owned();
    let mut depth = 0;
    let refusal = loop {
        let done = api.finished(&id).await;
        assert_eq!(done["status"], "completed", "{done}");
        match done["result"]["spawn"]["ok"].as_str() {
            Some(child) => {
                id = child.to_owned();
                depth += 1;
                assert!(depth <= 8, "the chain grew past 8 levels");
            }
            None => break done["result"]["spawn"].clone(),
        }
    };
    assert_eq!(depth, 8, "root plus 8 levels of children");
    assert_eq!(refusal["error"], "limit-exceeded", "{refusal}");
}

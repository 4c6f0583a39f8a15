//! Statistics by agent and by project, recent activity and the projects listing, as the agent
//! tracker's dashboards read them: over HTTP, from tasks external reporters drive, the same
//! after a restart, and bad parameters refused.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Api, TestServer, assert_error};

/// Creates an external task of `project` worked by `agent` and reports it to `end` (`None`:
/// left running), taking `seconds` by its reporter's account.
async fn run(api: &Api<'_>, project: &str, agent: &str, end: Option<&str>, seconds: f64) -> String {
    let task = api
        .create(json!({
            "plugin": "agents", "type": "feature", "executor": "external",
            "labels": {"project": project, "agent": agent, "team": agent},
            "title": format!("{agent} in {project}"),
        }))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/tasks/{id}");
    let (status, body) = api
        .send(Method::PUT, &path, Some(json!({"status": "running"})))
        .await;
    assert!(status.is_success(), "{body}");
    let report = match end {
        Some("completed") => json!({"status": "completed", "duration_seconds": seconds}),
        Some("failed") => json!({"status": "failed", "error": {"code": "E", "message": "m"}}),
        _ => return id,
    };
    let (status, body) = api.send(Method::PUT, &path, Some(report)).await;
    assert!(status.is_success(), "{body}");
    id
}

fn summary<'a>(stats: &'a Value, key: &str, value: &str) -> &'a Value {
    &stats["by_label"][key][value]
}

#[tokio::test]
async fn stats_group_by_agent_list_recent_activity_and_projects() {
    let server = TestServer::start().await;
    let api = server.api();
    run(&api, "web", "claude", Some("completed"), 60.0).await;
    run(&api, "web", "claude", Some("completed"), 120.0).await;
    run(&api, "web", "claude", Some("failed"), 0.0).await;
    run(&api, "api", "gpt", Some("completed"), 30.0).await;
    let last = run(&api, "api", "gpt", None, 0.0).await;

    let check = |stats: &Value| {
        // `agent` is answered from the cells, `team` (same values) by reading the tasks.
        for key in ["agent", "team"] {
            let claude = summary(stats, key, "claude");
            assert_eq!(claude["total"], 3, "{stats}");
            assert_eq!(claude["by_status"]["completed"], 2);
            assert_eq!(claude["by_status"]["failed"], 1);
            assert_eq!(claude["average_duration_s"], 90.0, "the reported durations");
            assert_eq!(claude["total_duration_s"], 180.0);
            let rate = claude["success_rate"].as_f64().unwrap();
            assert!((rate - 2.0 / 3.0).abs() < 1e-9, "{rate}");
            let gpt = summary(stats, key, "gpt");
            assert_eq!(
                (&gpt["total"], &gpt["by_status"]["running"]),
                (&json!(2), &json!(1))
            );
        }
    };
    let (status, stats) = api
        .get("/api/v1/stats?group_by=label.agent,label.team&recent=2")
        .await;
    assert_eq!(status, 200, "{stats}");
    check(&stats);
    let recent = stats["recent_activity"].as_array().unwrap();
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[0]["task_id"], last.as_str(), "newest first: {stats}");
    assert_eq!(
        (
            &recent[0]["labels"]["project"],
            &recent[0]["labels"]["agent"],
            &recent[0]["status"]
        ),
        (&json!("api"), &json!("gpt"), &json!("running"))
    );
    assert_eq!(recent[0]["title"], "gpt in api");
    let (_, plain) = api.get("/api/v1/stats").await;
    assert!(plain.get("recent_activity").is_none() && plain.get("by_label").is_none());

    let (_, one_project) = api
        .get("/api/v1/stats?label.project=web&group_by=label.agent")
        .await;
    assert_eq!(one_project["total"], 3);
    let (_, other_plugin) = api.get("/api/v1/stats?plugin=testkit").await;
    assert_eq!(other_plugin["total"], 0, "{other_plugin}");
    let (_, tracker) = api.get("/api/v1/stats?plugin=agents&recent=1").await;
    assert_eq!(tracker["total"], 5);
    assert_eq!(tracker["recent_activity"][0]["task_id"], last.as_str());
    assert!(
        one_project["by_label"]["agent"].get("gpt").is_none(),
        "{one_project}"
    );

    let (status, projects) = api.get("/api/v1/projects?sort=task_count").await;
    assert_eq!(status, 200, "{projects}");
    assert_eq!(projects["meta"]["total"], 2);
    let first = &projects["data"][0];
    assert_eq!(first["name"], "web", "largest first: {projects}");
    assert_eq!(
        (&first["task_count"], &first["active_tasks"]),
        (&json!(3), &json!(0))
    );
    let api_project = &projects["data"][1];
    assert_eq!(api_project["active_tasks"], 1);
    assert!(api_project["created_at"].is_string() && api_project["updated_at"].is_string());
    let (_, by_name) = api.get("/api/v1/projects?limit=1&offset=1").await;
    assert_eq!(
        by_name["data"][0]["name"], "web",
        "A to Z by default: {by_name}"
    );
    assert_eq!(by_name["meta"]["has_more"], false);
    let (_, updated) = api.get("/api/v1/projects?sort=updated_at").await;
    assert_eq!(updated["data"][0]["name"], "api", "{updated}");

    for bad in [
        "/api/v1/stats?group_by=agent",
        "/api/v1/stats?group_by=label.",
        "/api/v1/stats?group_by=label.a,label.b,label.c,label.d,label.e",
        "/api/v1/stats?recent=101",
        "/api/v1/stats?recent=-1",
        "/api/v1/projects?sort=size",
        "/api/v1/projects?order=up",
        "/api/v1/projects?limit=0",
        "/api/v1/projects?project=web",
    ] {
        let (status, body) = api.get(bad).await;
        assert_error(status, &body, 400, "VALIDATION_ERROR");
    }

    let server = server.restart().await;
    let api = server.api();
    let (_, stats) = api
        .get("/api/v1/stats?group_by=label.agent,label.team")
        .await;
    check(&stats);
}

#[tokio::test]
async fn another_users_projects_and_agents_are_not_seen() {
    let server = TestServer::start().await;
    let api = server.api();
    run(&api, "secret-project", "claude", Some("completed"), 5.0).await;
    let client = server.user("mallory", "user").await;
    let other = Api {
        client: &client,
        base: server.url(""),
    };
    let (_, projects) = other.get("/api/v1/projects").await;
    assert_eq!(projects["meta"]["total"], 0, "{projects}");
    let (_, stats) = other
        .get("/api/v1/stats?group_by=label.agent&recent=5")
        .await;
    assert_eq!(stats["by_label"]["agent"], json!({}), "{stats}");
    assert_eq!(stats["recent_activity"], json!([]));
}

#[tokio::test]
async fn stream_figures_count_connections_per_project_and_the_frames_both_ways() {
    let server = TestServer::start().await;
    let api = server.api();
    let mut web = server.ws("/api/v1/ws").await;
    web.next_of_type("connected").await;
    web.subscribe(&["label:project=web", "tasks"], None).await;
    let mut api_watcher = server.ws("/api/v1/ws").await;
    api_watcher.next_of_type("connected").await;
    api_watcher.subscribe(&["label:project=api"], None).await;
    api_watcher.send(json!({"type": "ping"})).await;
    api_watcher.next_of_type("pong").await;

    let (status, figures) = api.get("/api/v1/streams").await;
    assert_eq!(status, 200, "{figures}");
    assert_eq!(figures["total_connections"], 2);
    assert_eq!(figures["project_connections"], json!({"web": 1, "api": 1}));
    assert_eq!(figures["principal_connections"], json!({"admin": 2}));
    // Received: two subscribes and a ping; sent: two connected, two subscribed, one pong.
    assert_eq!(figures["messages_received"], 3, "{figures}");
    assert_eq!(figures["messages_sent"], 5, "{figures}");

    // A user sees only their own connections, none of admin's projects.
    let token = server.user_token("viewer-of-streams", "viewer").await;
    let mut own = crate::harness::WsClient::connect(&server.ws_url("/api/v1/ws", &token)).await;
    own.next_of_type("connected").await;
    let client = crate::harness::client_with_token(&token);
    let viewer = Api {
        client: &client,
        base: server.url(""),
    };
    let (_, mine) = viewer.get("/api/v1/streams").await;
    assert_eq!(mine["total_connections"], 1, "{mine}");
    assert_eq!(mine["project_connections"], json!({}));
    assert_eq!(mine["messages_sent"], 1, "its connected frame");
    assert!(mine.get("slow_consumers_dropped").is_none());

    drop(web);
    let figures = crate::harness::eventually(std::time::Duration::from_secs(10), || async {
        let (_, figures) = api.get("/api/v1/streams").await;
        if figures["total_connections"] == 2 {
            Ok(figures)
        } else {
            Err(format!("the closed connection still counts: {figures}"))
        }
    })
    .await;
    assert_eq!(figures["project_connections"], json!({"api": 1}));
    let (status, body) = api.get("/api/v1/streams?project=web").await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");
}

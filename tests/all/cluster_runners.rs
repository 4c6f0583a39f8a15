//! Runners on several hosts sharing one PostgreSQL database: a runner registered through one
//! host is served jobs by another and may report through either; restarting every host loses
//! neither the runner nor the lease of the job it holds, and the task's run after the restart
//! adopts that job instead of handing the runner the same work again.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{ADMIN_PASSWORD, Api, HostProcess, client_with_token, eventually, login};
use crate::postgres::{PgCluster, shared_host_config};

/// The runner's calls, through whichever host `base` names.
struct RunnerCalls {
    id: String,
    client: reqwest::Client,
}

impl RunnerCalls {
    async fn post(&self, base: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let api = Api {
            client: &self.client,
            base: base.to_owned(),
        };
        api.post(&format!("/api/v1/runners/{}{path}", self.id), body)
            .await
    }

    /// A lease, or `None` when no job came within `wait_ms`.
    async fn claim(&self, base: &str, wait_ms: u64) -> Option<Value> {
        let path = format!("/jobs/claim?wait_ms={wait_ms}");
        let (status, lease) = self.post(base, &path, Value::Null).await;
        match status {
            StatusCode::OK => Some(lease),
            StatusCode::NO_CONTENT => None,
            other => panic!("claim through {base} answered {other}: {lease}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_registered_through_one_host_is_served_by_another_and_survives_their_restart() {
    let cluster = PgCluster::start();
    let config = shared_host_config(&cluster);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut host_a = HostProcess::spawn_with_config(dir_a.path(), &config);
    // Every host seals and opens jobs with one secrets key (README, "Several hosts").
    std::fs::copy(
        dir_a.path().join("secrets.key"),
        dir_b.path().join("secrets.key"),
    )
    .expect("secrets.key copied");
    let mut host_b = HostProcess::spawn_with_config(dir_b.path(), &config);
    let (a, b) = (
        format!("http://{}", host_a.addr),
        format!("http://{}", host_b.addr),
    );
    let admin = client_with_token(&login(&a, "admin", ADMIN_PASSWORD).await);
    let on = |base: &str| Api {
        client: &admin,
        base: base.to_owned(),
    };

    let (status, registered) = on(&a)
        .post(
            "/api/v1/runners",
            json!({"name": "builder", "labels": ["linux"], "capacity": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    let runner = RunnerCalls {
        id: registered["id"].as_str().unwrap().to_owned(),
        client: client_with_token(registered["token"].as_str().unwrap()),
    };
    let (status, seen_on_b) = on(&b).get(&format!("/api/v1/runners/{}", runner.id)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "host B knows the runner: {seen_on_b}"
    );

    let (status, task) = on(&b)
        .post(
            "/api/v1/tasks",
            json!({
                "plugin": "runner",
                "type": "delegate",
                "input": {
                    "repository": "owner/repo",
                    "job_id": "42",
                    "job_name": "build",
                    "labels": ["linux"],
                    "steps": [{"name": "make", "run": ["make", "test"]}],
                },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{task}");
    let task_id = task["id"].as_str().unwrap().to_owned();

    // Registered through A, served through B, reporting through both.
    let lease = runner
        .claim(&b, 20_000)
        .await
        .expect("host B hands the runner the job");
    assert_eq!(lease["task_id"], task_id.as_str());
    assert_eq!(lease["delivery"], 1);
    assert_eq!(
        lease["spec"]["steps"][0]["command"],
        json!(["make", "test"])
    );
    let job = lease["job_id"].as_str().unwrap().to_owned();
    let (status, body) = runner
        .post(
            &a,
            &format!("/jobs/{job}/logs"),
            json!({"lines": [{"line": "compiling before the restart"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    // Every host stops: nothing of the runner or its lease is left in any host's memory.
    assert!(host_a.terminate(), "host A stopped cleanly");
    assert!(host_b.terminate(), "host B stopped cleanly");
    drop((host_a, host_b));
    let host_a = HostProcess::spawn_with_config(dir_a.path(), &config);
    let a = format!("http://{}", host_a.addr);

    let (status, after) = on(&a).get(&format!("/api/v1/runners/{}", runner.id)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the runner outlived the restart: {after}"
    );
    assert_eq!(after["running_jobs"], json!([job]), "and so did its lease");
    let (status, beat) = runner
        .post(&a, "/heartbeat", json!({"running": [job]}))
        .await;
    assert_eq!(status, StatusCode::OK, "the token still works: {beat}");
    assert_eq!(beat["stop"], json!([]), "the job is still the runner's");

    // The task runs again after the restart and adopts the job in flight: no second delivery.
    eventually(Duration::from_secs(30), || async {
        let (_, task) = on(&a).get(&format!("/api/v1/tasks/{task_id}")).await;
        if task["status"] == "running" {
            Ok(())
        } else {
            Err(format!(
                "the task never ran again after the restart: {task}"
            ))
        }
    })
    .await;
    assert!(
        runner.claim(&a, 1500).await.is_none(),
        "the rerun adopted the job instead of queueing it again"
    );
    let (status, body) = runner
        .post(
            &a,
            &format!("/jobs/{job}/steps"),
            json!({"name": "make", "exit_code": 0, "duration_ms": 1200, "output_tail": "ok"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, ended) = runner
        .post(
            &a,
            &format!("/jobs/{job}/finish"),
            json!({"status": "succeeded"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!(ended["deliveries"], 1);

    let done = eventually(Duration::from_secs(30), || async {
        let (_, task) = on(&a).get(&format!("/api/v1/tasks/{task_id}")).await;
        if matches!(task["status"].as_str(), Some("completed" | "failed")) {
            Ok(task)
        } else {
            Err(format!("the task did not end with its job: {task}"))
        }
    })
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["delegation_id"], job.as_str());
    assert_eq!(done["result"]["steps"][0]["output_tail"], "ok");
}

//! The `taskhost-runner` binary against a real host: it registers, takes only jobs whose
//! labels it carries, runs their steps as processes and reports output, artifacts and the
//! outcome; a runner killed mid-job loses the job to another; a host restart costs it nothing
//! but a new registration.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{RunnerProcess, TestServer, eventually};

fn delegate(labels: &[&str], steps: Value, artifacts: &[&str]) -> Value {
    json!({
        "plugin": "runner",
        "type": "delegate",
        "input": {
            "repository": "owner/repo",
            "job_id": 42,
            "job_name": "Build and Test",
            "labels": labels,
            "steps": steps,
            "artifacts": artifacts,
        },
    })
}

/// Waits (up to 60 s) until the task's log holds `text`.
async fn log_shows(server: &TestServer, id: &str, text: &str) {
    eventually(Duration::from_secs(60), move || async move {
        let logs = server.logs(id).await;
        if logs.contains(text) {
            Ok(())
        } else {
            Err(format!("the task's log never showed {text:?}: {logs}"))
        }
    })
    .await
}

#[tokio::test]
async fn the_runner_binary_runs_a_delegated_job_on_the_runner_whose_labels_match() {
    let server = TestServer::start().await;
    let key = server.runner_key().await;
    let plain = RunnerProcess::spawn(&server, &key, "plain", &["linux"]);
    let rusty = RunnerProcess::spawn(&server, &key, "rusty", &["linux", "rust"]);
    let rusty_id = rusty.id(&server).await;
    plain.id(&server).await;

    let steps = json!([
        {"name": "hello", "run": ["sh", "-c",
            "echo hello from job $TASKHOST_JOB_ID; echo key=${TASKHOST_API_KEY:-none}; echo to-stderr >&2"]},
        {"name": "package", "run": ["sh", "-c", "mkdir -p out && printf abc > out/report.txt"]},
    ]);
    let api = server.api();
    let task = api.create(delegate(&["rust"], steps, &["out/*.txt"])).await;
    let id = task["id"].as_str().unwrap();
    let done = api.finished(id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let result = &done["result"];
    assert_eq!(result["runner_id"], rusty_id.as_str(), "{result}");
    assert_eq!(result["status"], "succeeded");
    let hello = &result["steps"][0];
    assert_eq!(hello["exit_code"], 0);
    let tail = hello["output_tail"].as_str().unwrap();
    let job = result["delegation_id"].as_str().unwrap();
    assert!(tail.contains(&format!("hello from job {job}")), "{tail}");
    assert!(tail.contains("to-stderr"), "{tail}");
    assert!(
        tail.contains("key=none"),
        "the runner's API key is not passed to steps: {tail}"
    );
    assert_eq!(result["steps"][1]["exit_code"], 0);
    assert_eq!(
        result["artifacts"],
        json!([{
            "path": "out/report.txt",
            "size_bytes": 3,
            "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        }])
    );

    let logs = server.logs(id).await;
    for line in [
        format!("hello from job {job}"),
        "to-stderr".to_owned(),
        "artifact out/report.txt (3 bytes".to_owned(),
    ] {
        assert!(logs.contains(&line), "{line:?} not in the log: {logs}");
    }
    assert!(!logs.contains(&key), "the API key leaked into the log");
    // Each line is placed in the step that printed it.
    let (_, page) = api
        .get(&format!("/api/v1/tasks/{id}/logs?limit=1000"))
        .await;
    let step_of = |text: &str| {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["message"].as_str().unwrap().contains(text))
            .map(|l| l["step"].clone())
            .unwrap_or_else(|| panic!("no line with {text:?}: {page}"))
    };
    assert_eq!(step_of("hello from job"), "hello");
    assert_eq!(step_of("to-stderr"), "hello");
    assert_eq!(step_of("step package exited with 0"), "package");
    assert_eq!(step_of("$ sh -c mkdir"), "package");
    assert!(
        !plain.log().contains("job started"),
        "the runner without the rust label took no job: {}",
        plain.log()
    );
}

#[tokio::test]
async fn killing_a_runner_mid_job_puts_the_job_back_and_another_runner_finishes_it() {
    let server = TestServer::builder()
        .config(|c| {
            c.runners.lease_s = 2;
            c.runners.heartbeat_interval_s = 1;
        })
        .start()
        .await;
    let key = server.runner_key().await;
    let mut first = RunnerProcess::spawn(&server, &key, "first", &["linux"]);
    let first_id = first.id(&server).await;

    let steps = json!([{"name": "work", "run": ["sh", "-c",
        "echo started delivery in $TASKHOST_JOB_DIR; sleep 3; echo work finished"]}]);
    let api = server.api();
    let task = api.create(delegate(&["linux"], steps, &[])).await;
    let id = task["id"].as_str().unwrap();
    log_shows(&server, id, "started delivery in /").await;
    first.kill9();

    let second = RunnerProcess::spawn(&server, &key, "second", &["linux"]);
    let second_id = second.id(&server).await;
    let done = api.finished(id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["runner_id"], second_id.as_str());
    assert_ne!(first_id, second_id);
    let tail = done["result"]["steps"][0]["output_tail"].as_str().unwrap();
    assert!(tail.contains("work finished"), "{tail}");
    // Each delivery ran in its own directory, named after the delivery.
    let logs = server.logs(id).await;
    assert_eq!(
        logs.matches("started delivery in /").count(),
        2,
        "two deliveries: {logs}"
    );
    let job = done["result"]["delegation_id"].as_str().unwrap();
    for delivery in [1, 2] {
        assert!(logs.contains(&format!("{job}-{delivery}")), "{logs}");
    }
    assert!(second.log().contains("job finished"), "{}", second.log());
}

#[tokio::test]
async fn a_runner_keeps_its_registration_across_a_host_restart_and_goes_on_taking_jobs() {
    let server = TestServer::builder()
        .config(|c| c.runners.heartbeat_interval_s = 1)
        .start()
        .await;
    let key = server.runner_key().await;
    let runner = RunnerProcess::spawn(&server, &key, "steady", &["linux"]);
    let before = runner.id(&server).await;
    let steps = json!([{"name": "echo", "run": ["echo", "ran"]}]);
    let id = server
        .api()
        .create(delegate(&["linux"], steps.clone(), &[]))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = server.api().finished(&id).await;
    assert_eq!(done["result"]["runner_id"], before.as_str(), "{done}");

    let server = server.restart().await;
    let task = server.api().create(delegate(&["linux"], steps, &[])).await;
    let done = server.api().finished(task["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    // The registration is in the store: the runner's token still works, no new one is made.
    assert_eq!(done["result"]["runner_id"], before.as_str(), "{done}");
    let (_, runners) = server.api().get("/api/v1/runners").await;
    assert_eq!(
        runners["data"].as_array().map(Vec::len),
        Some(1),
        "{runners}"
    );
    assert!(
        !runner.log().contains("registering again"),
        "{}",
        runner.log()
    );
}

/// Whether the process is gone (or a zombie nobody has reaped yet: it runs no more).
fn process_ended(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// The number a step printed after `label`, from the task's log (waits up to 60 s). The
/// command line is logged too, with `$$` or `$!` where the number will be.
async fn logged_pid(server: &TestServer, id: &str, label: &str) -> String {
    eventually(Duration::from_secs(60), move || async move {
        let logs = server.logs(id).await;
        let pid: String = logs
            .rfind(label)
            .map(|at| {
                logs[at + label.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect()
            })
            .unwrap_or_default();
        if pid.is_empty() {
            Err(format!("no {label:?} in the log: {logs}"))
        } else {
            Ok(pid)
        }
    })
    .await
}

async fn until_ended(pid: &str) {
    eventually(Duration::from_secs(30), move || async move {
        if process_ended(pid) {
            Ok(())
        } else {
            Err(format!("process {pid} still runs"))
        }
    })
    .await
}

#[tokio::test]
async fn a_step_past_its_timeout_is_killed_with_what_it_started_and_the_task_fails_timed_out() {
    let server = TestServer::start().await;
    let key = server.runner_key().await;
    let _runner = RunnerProcess::spawn(&server, &key, "timer", &["linux"]);
    let steps = json!([{"name": "hang", "timeout_s": 1, "run": ["sh", "-c",
        "sleep 120 & echo background pid $!; wait"]}]);
    let api = server.api();
    let task = api.create(delegate(&["linux"], steps, &[])).await;
    let id = task["id"].as_str().unwrap();
    let background = logged_pid(&server, id, "background pid ").await;

    let done = api.finished(id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "JOB_TIMED_OUT", "{done}");
    until_ended(&background).await;
    assert!(
        server
            .logs(id)
            .await
            .contains("step hang ended without an exit code")
    );
}

#[tokio::test]
async fn cancelling_a_delegated_task_stops_its_process_on_the_runner() {
    let server = TestServer::builder()
        .config(|c| c.runners.heartbeat_interval_s = 1)
        .start()
        .await;
    let key = server.runner_key().await;
    let runner = RunnerProcess::spawn(&server, &key, "stoppable", &["linux"]);
    let steps = json!([{"name": "long", "run": ["sh", "-c", "echo shell pid $$; exec sleep 120"]}]);
    let api = server.api();
    let task = api.create(delegate(&["linux"], steps, &[])).await;
    let id = task["id"].as_str().unwrap();
    let pid = logged_pid(&server, id, "shell pid ").await;

    let (status, cancelled) = api
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/tasks/{id}"),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{cancelled}");
    until_ended(&pid).await;
    let runner = &runner;
    eventually(Duration::from_secs(30), move || async move {
        let log = runner.log();
        if log.contains("status=Cancelled") {
            Ok(())
        } else {
            Err(format!(
                "the runner did not report the job cancelled: {log}"
            ))
        }
    })
    .await;
    assert_eq!(api.task(id).await["status"], "cancelled");
}

#[tokio::test]
async fn a_process_a_step_leaves_running_serves_later_steps_and_ends_with_the_job() {
    let server = TestServer::start().await;
    let key = server.runner_key().await;
    let _runner = RunnerProcess::spawn(&server, &key, "services", &["linux"]);
    let steps = json!([
        {"name": "start server", "run": ["sh", "-c",
            "sleep 120 & echo $! > server.pid; echo server pid $!"]},
        {"name": "use server", "run": ["sh", "-c",
            "kill -0 $(cat server.pid) && echo server still up"]},
    ]);
    let api = server.api();
    let task = api.create(delegate(&["linux"], steps, &[])).await;
    let id = task["id"].as_str().unwrap();
    let pid = logged_pid(&server, id, "server pid ").await;
    let done = api.finished(id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let tail = done["result"]["steps"][1]["output_tail"].as_str().unwrap();
    assert!(tail.contains("server still up"), "{tail}");
    until_ended(&pid).await;
}

#[tokio::test]
async fn megabytes_of_long_output_lines_reach_the_log_without_losing_the_job() {
    let server = TestServer::start().await;
    let key = server.runner_key().await;
    let runner = RunnerProcess::spawn(&server, &key, "chatty", &["linux"]);
    // 600 lines of 10 kB: 6 MB, far past one request body; each report must stay under it.
    let steps = json!([{"name": "chatter", "run": ["python3", "-c",
        "for i in range(600): print('line', i, 'x' * 10000)"]}]);
    let api = server.api();
    let task = api.create(delegate(&["linux"], steps, &[])).await;
    let id = task["id"].as_str().unwrap();
    let done = api.finished(id).await;
    assert_eq!(done["status"], "completed", "{done}\n{}", runner.log());
    let tail = done["result"]["steps"][0]["output_tail"].as_str().unwrap();
    assert!(
        tail.contains("line 599 xxxx"),
        "the tail ends with the last line"
    );
    assert!(!runner.log().contains("abandoned"), "{}", runner.log());
    assert!(!runner.log().contains("dropped"), "{}", runner.log());
    let (_, page) = api
        .get(&format!("/api/v1/tasks/{id}/logs?limit=1000"))
        .await;
    let lines = page["data"].as_array().unwrap();
    let printed = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("line "))
        })
        .count();
    assert_eq!(printed, 600, "every line is in the task's log");
}

#[tokio::test]
async fn a_step_finds_neither_the_runners_key_nor_other_jobs_directories() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start().await;
    let key = server.runner_key().await;
    let work = tempfile::tempdir().unwrap();
    // Steps of another user must be able to pass through to their own job directory.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let key_file = work.path().join("runner.key");
    std::fs::write(&key_file, &key).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sibling = work.path().join("jobs/an-earlier-job-1");
    std::fs::create_dir_all(&sibling).unwrap();
    std::fs::write(sibling.join("secret.txt"), "sibling-secret-contents").unwrap();
    std::fs::set_permissions(&sibling, std::fs::Permissions::from_mode(0o700)).unwrap();
    // As root (as CI runs) the runner is told to run steps as nobody; as any other user the
    // steps are that user, and only the environment is out of their reach.
    let as_root = unsafe { libc::geteuid() } == 0;
    let runner = RunnerProcess::spawn_in(work, &server, "isolated", &["linux"], |command| {
        command.arg("--api-key-file").arg(&key_file);
        if as_root {
            command.args(["--run-as", "nobody"]);
        }
    });
    runner.id(&server).await;

    let probe = format!(
        "echo uid=$(id -u); tr '\\0' '\\n' < /proc/$PPID/environ; cat {key}; ls $TASKHOST_JOB_DIR/..; \
         cat $TASKHOST_JOB_DIR/../an-earlier-job-1/secret.txt; env; echo probe-done",
        key = key_file.display()
    );
    let steps = json!([{"name": "probe", "run": ["sh", "-c", probe]}]);
    let api = server.api();
    let task = api.create(delegate(&["linux"], steps, &[])).await;
    let id = task["id"].as_str().unwrap();
    let done = api.finished(id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let logs = server.logs(id).await;
    assert!(logs.contains("probe-done"), "{logs}");
    let secret = key.rsplit('_').next().unwrap();
    assert!(
        !logs.contains(secret),
        "a step read the runner's key: {logs}"
    );
    assert!(!logs.contains("TASKHOST_API_KEY"), "{logs}");
    assert!(
        logs.contains("TASKHOST_JOB_ID="),
        "the job's own variables are there: {logs}"
    );
    if as_root {
        assert!(logs.contains("uid=65534"), "{logs}");
        assert!(!logs.contains("sibling-secret-contents"), "{logs}");
        assert!(
            !logs.contains("\"message\":\"an-earlier-job-1\""),
            "a step listed the work directory: {logs}"
        );
    } else {
        eprintln!(
            "not root: steps run as the runner's own user; key file and sibling checks need root"
        );
    }
}

//! The registry on a real (sled) store: matching, capacity, leases, adoption, masking and what
//! a restart keeps. The same store contract runs on PostgreSQL in the conformance suite.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::*;
use crate::storage::SledStorage;

/// A registry on a fresh store in its own directory (kept while the fixture lives).
struct Fixture {
    dir: tempfile::TempDir,
    runners: Runners,
}

fn fixture(config: RunnerConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let runners = open(&dir, config);
    Fixture { dir, runners }
}

fn open(dir: &tempfile::TempDir, config: RunnerConfig) -> Runners {
    let storage = Arc::new(SledStorage::open(&dir.path().join("store")).unwrap());
    let sealer = Arc::new(SecretBox::open(dir.path()).unwrap());
    Runners::new(config, storage, sealer)
}

fn spec(labels: &[&str]) -> JobSpec {
    JobSpec {
        name: "build".into(),
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        steps: vec![StepSpec {
            name: "test".into(),
            command: vec!["cargo".into(), "test".into()],
            timeout_s: None,
        }],
        env: Vec::new(),
        workdir: None,
        timeout_s: None,
        metadata: serde_json::Value::Null,
        artifacts: Vec::new(),
    }
}

/// A runner without labels, capacity 1; its id.
async fn registered(runners: &Runners, name: &str) -> String {
    runners
        .register("admin", name, Vec::new(), 1)
        .await
        .unwrap()
        .runner
        .id
}

fn labels(list: &[&str]) -> Vec<String> {
    list.iter().map(|l| (*l).to_owned()).collect()
}

#[tokio::test]
async fn a_job_goes_to_a_runner_carrying_all_its_labels() {
    let Fixture { runners, .. } = &fixture(RunnerConfig::default());
    let linux = runners
        .register("admin", "linux", labels(&["linux"]), 1)
        .await
        .unwrap();
    let rust = runners
        .register("admin", "rust", labels(&["linux", "rust"]), 1)
        .await
        .unwrap();
    assert_eq!(
        runners.authenticate(&rust.token).await.unwrap(),
        Some(rust.runner.id.clone())
    );
    assert_eq!(runners.authenticate("thr_forged").await.unwrap(), None);

    let job = runners
        .dispatch("task-1", "run-1", spec(&["rust"]), Vec::new())
        .await
        .unwrap();
    let none = runners
        .claim(&linux.runner.id, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(none.is_none(), "linux lacks the rust label");
    let lease = runners
        .claim(&rust.runner.id, Duration::from_millis(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.job_id, job);
    assert_eq!(
        lease.spec,
        spec(&["rust"]),
        "the sealed spec comes back whole"
    );
    assert_eq!(
        runners.get(&rust.runner.id).await.unwrap().running_jobs,
        vec![job.clone()]
    );
    // Capacity 1: nothing more for this runner until the job ends.
    runners
        .dispatch("task-2", "run-1", spec(&[]), Vec::new())
        .await
        .unwrap();
    let full = runners
        .claim(&rust.runner.id, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(full.is_none());
    runners
        .finish(&rust.runner.id, &job, JobStatus::Succeeded, Vec::new())
        .await
        .unwrap();
    let next = runners
        .claim(&rust.runner.id, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(next.is_some());
}

#[tokio::test]
async fn a_waiting_claim_wakes_when_a_job_is_dispatched() {
    let Fixture { runners, .. } = &fixture(RunnerConfig::default());
    let runner = runners.register("admin", "r", Vec::new(), 2).await.unwrap();
    let waiting = {
        let runners = runners.clone();
        let id = runner.runner.id.clone();
        tokio::spawn(async move { runners.claim(&id, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let job = runners
        .dispatch("task", "run-1", spec(&[]), Vec::new())
        .await
        .unwrap();
    let lease = tokio::time::timeout(Duration::from_millis(900), waiting)
        .await
        .expect("woken by the dispatch, before the once-a-second recheck")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(lease.job_id, job);
}

#[tokio::test]
async fn closing_ends_a_waiting_claim_at_once() {
    let Fixture { runners, .. } = &fixture(RunnerConfig::default());
    let r = registered(runners, "r").await;
    let waiting = {
        let runners = runners.clone();
        tokio::spawn(async move { runners.claim(&r, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    runners.close();
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the claim returned at close")
        .unwrap()
        .unwrap();
    assert!(answer.is_none());
}

#[tokio::test]
async fn a_lapsed_lease_puts_the_job_back_until_it_is_lost() {
    let Fixture { runners, .. } = &fixture(RunnerConfig {
        max_deliveries: 2,
        ..RunnerConfig::default()
    });
    let a = registered(runners, "a").await;
    let b = registered(runners, "b").await;
    let job = runners
        .dispatch("task", "run-1", spec(&[]), Vec::new())
        .await
        .unwrap();
    runners.claim(&a, Duration::ZERO).await.unwrap().unwrap();

    // A heartbeat renews the lease; a lapsed one requeues the job for another runner.
    runners
        .heartbeat(&a, std::slice::from_ref(&job), None)
        .await
        .unwrap();
    assert!(runners.reap_expired(Utc::now()).await.unwrap().is_empty());
    let later = Utc::now() + chrono::Duration::seconds(120);
    assert_eq!(
        runners.reap_expired(later).await.unwrap(),
        vec![job.clone()]
    );
    assert_eq!(runners.job(&job).await.unwrap().status, JobStatus::Queued);
    let again = runners.claim(&b, Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(again.delivery, 2);
    // The first runner, back, is told to stop the job it no longer holds.
    let reply = runners
        .heartbeat(&a, std::slice::from_ref(&job), None)
        .await
        .unwrap();
    assert_eq!(reply.stop, vec![job.clone()]);
    let late = runners
        .finish(&a, &job, JobStatus::Succeeded, Vec::new())
        .await;
    assert!(matches!(late, Err(RunnerError::NotLeased(ref id)) if *id == job));

    let much_later = Utc::now() + chrono::Duration::seconds(3600);
    runners.reap_expired(much_later).await.unwrap();
    assert_eq!(runners.job(&job).await.unwrap().status, JobStatus::Lost);
}

#[tokio::test]
async fn waiting_for_a_job_returns_when_it_ends_or_times_out() {
    let Fixture { runners, .. } = &fixture(RunnerConfig::default());
    let r = registered(runners, "r").await;
    let job = runners
        .dispatch("task", "run-1", spec(&[]), Vec::new())
        .await
        .unwrap();
    let state = runners.wait(&job, Duration::from_millis(20)).await.unwrap();
    assert_eq!(state.status, JobStatus::Queued);

    runners.claim(&r, Duration::ZERO).await.unwrap().unwrap();
    let waiter = {
        let runners = runners.clone();
        let job = job.clone();
        tokio::spawn(async move { runners.wait(&job, Duration::from_secs(10)).await })
    };
    let outcome = StepOutcome {
        name: "test".into(),
        exit_code: Some(1),
        duration_ms: 5,
        output_tail: "1 failed".into(),
    };
    let context = runners
        .step_finished(&r, &job, outcome.clone())
        .await
        .unwrap();
    assert_eq!(context.task_id, "task");
    runners
        .finish(&r, &job, JobStatus::Failed, Vec::new())
        .await
        .unwrap();
    let state = waiter.await.unwrap().unwrap();
    assert_eq!(state.status, JobStatus::Failed);
    assert_eq!(state.steps, vec![outcome]);
}

#[tokio::test]
async fn cancelling_stops_a_queued_job_at_once_and_a_running_one_at_its_heartbeat() {
    let Fixture { runners, .. } = &fixture(RunnerConfig::default());
    let r = registered(runners, "r").await;
    let queued = runners
        .dispatch("t1", "run-1", spec(&["gpu"]), Vec::new())
        .await
        .unwrap();
    assert_eq!(
        runners.cancel(&queued).await.unwrap().status,
        JobStatus::Cancelled
    );
    let running = runners
        .dispatch("t2", "run-1", spec(&[]), Vec::new())
        .await
        .unwrap();
    runners.claim(&r, Duration::ZERO).await.unwrap().unwrap();
    runners.settle_task_jobs("t2").await.unwrap();
    let reply = runners
        .heartbeat(&r, std::slice::from_ref(&running), None)
        .await
        .unwrap();
    assert_eq!(reply.stop, vec![running.clone()]);
    runners
        .finish(&r, &running, JobStatus::Cancelled, Vec::new())
        .await
        .unwrap();
    assert_eq!(
        runners.job(&running).await.unwrap().status,
        JobStatus::Cancelled
    );
}

#[tokio::test]
async fn the_dispatching_runs_secrets_are_masked_in_step_output_and_sealed_at_rest() {
    let fixture = fixture(RunnerConfig::default());
    let runners = &fixture.runners;
    let r = registered(runners, "r").await;
    let mut with_token = spec(&[]);
    with_token.env = vec![("TOKEN".into(), "hunter2-secret".into())];
    let job = runners
        .dispatch("task", "run-1", with_token, vec!["hunter2-secret".into()])
        .await
        .unwrap();
    runners.claim(&r, Duration::ZERO).await.unwrap().unwrap();
    let outcome = StepOutcome {
        name: "deploy".into(),
        exit_code: Some(0),
        duration_ms: 1,
        output_tail: "token=hunter2-secret ok".into(),
    };
    let context = runners.step_finished(&r, &job, outcome).await.unwrap();
    assert_eq!(context.secrets.as_slice(), ["hunter2-secret".to_owned()]);
    let tail = &runners.job(&job).await.unwrap().steps[0].output_tail;
    assert!(!tail.contains("hunter2-secret"), "{tail}");

    let stored = runners.storage.runners().job(&job).await.unwrap().unwrap();
    let at_rest = serde_json::to_string(&stored).unwrap();
    assert!(!at_rest.contains("hunter2"), "{at_rest}");
}

#[tokio::test]
async fn bad_registrations_and_jobs_are_refused() {
    let Fixture { runners, .. } = &fixture(RunnerConfig::default());
    assert!(runners.register("admin", "", Vec::new(), 1).await.is_err());
    assert!(runners.register("admin", "r", Vec::new(), 0).await.is_err());
    let mut empty = spec(&[]);
    empty.steps.clear();
    assert!(
        runners
            .dispatch("t", "run-1", empty, Vec::new())
            .await
            .is_err()
    );
    let mut no_program = spec(&[]);
    no_program.steps[0].command = vec![String::new()];
    assert!(
        runners
            .dispatch("t", "run-1", no_program, Vec::new())
            .await
            .is_err()
    );
    for pattern in ["../secrets/*", "/etc/passwd", "a\\..\\b", ""] {
        let mut escaping = spec(&[]);
        escaping.artifacts = vec![pattern.into()];
        let refused = runners.dispatch("t", "run-1", escaping, Vec::new()).await;
        assert!(refused.is_err(), "{pattern:?}");
    }
    assert!(
        runners
            .storage
            .runners()
            .runners()
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        runners
            .storage
            .runners()
            .uncollected_jobs("t")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn artifacts_are_kept_only_with_a_relative_path_and_a_sha256() {
    let Fixture { runners, .. } = &fixture(RunnerConfig::default());
    let r = registered(runners, "r").await;
    let job = runners
        .dispatch("task", "run-1", spec(&[]), Vec::new())
        .await
        .unwrap();
    runners.claim(&r, Duration::ZERO).await.unwrap().unwrap();
    let artifact = |path: &str, sha256: &str| Artifact {
        path: path.into(),
        size_bytes: 3,
        sha256: sha256.into(),
    };
    let good_hash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    for bad in [
        artifact("../out.bin", good_hash),
        artifact("/abs/out.bin", good_hash),
        artifact("out.bin", "not-a-hash"),
    ] {
        let refused = runners
            .finish(&r, &job, JobStatus::Succeeded, vec![bad])
            .await;
        assert!(matches!(refused, Err(RunnerError::Invalid(_))));
    }
    assert_eq!(runners.job(&job).await.unwrap().status, JobStatus::Running);
    let state = runners
        .finish(
            &r,
            &job,
            JobStatus::Succeeded,
            vec![artifact("dist/out.bin", good_hash)],
        )
        .await
        .unwrap();
    assert_eq!(state.artifacts[0].path, "dist/out.bin");
}

#[tokio::test]
async fn a_later_run_adopts_the_job_its_earlier_run_left_in_flight() {
    let Fixture { runners, .. } = &fixture(RunnerConfig::default());
    let r = registered(runners, "r").await;
    let first = runners
        .dispatch("task", "run-1", spec(&[]), Vec::new())
        .await
        .unwrap();
    runners.claim(&r, Duration::ZERO).await.unwrap().unwrap();
    // The same run dispatching the same spec again means a second job.
    let second = runners
        .dispatch("task", "run-1", spec(&[]), Vec::new())
        .await
        .unwrap();
    assert_ne!(first, second);
    // Run 2 (the host of run 1 died) gets the first job back, still leased.
    let adopted = runners
        .dispatch("task", "run-2", spec(&[]), Vec::new())
        .await
        .unwrap();
    assert_eq!(adopted, first);
    assert_eq!(
        runners.job(&first).await.unwrap().status,
        JobStatus::Running
    );
    // Another spec is not the same job.
    let other = runners
        .dispatch("task", "run-2", spec(&["gpu"]), Vec::new())
        .await
        .unwrap();
    assert!(other != first && other != second);
}

#[tokio::test]
async fn a_job_that_ended_while_no_run_watched_is_adopted_until_a_run_settles_it() {
    let Fixture { runners, .. } = &fixture(RunnerConfig::default());
    let r = registered(runners, "r").await;
    let job = runners
        .dispatch("task", "run-1", spec(&[]), Vec::new())
        .await
        .unwrap();
    runners.claim(&r, Duration::ZERO).await.unwrap().unwrap();
    // Run 1's host is gone; the runner finishes before run 2 starts.
    runners
        .finish(&r, &job, JobStatus::Succeeded, Vec::new())
        .await
        .unwrap();
    let adopted = runners
        .dispatch("task", "run-2", spec(&[]), Vec::new())
        .await
        .unwrap();
    assert_eq!(
        adopted, job,
        "run 2 takes the outcome instead of running it again"
    );
    assert_eq!(
        runners.wait(&job, Duration::ZERO).await.unwrap().status,
        JobStatus::Succeeded
    );

    // Run 2 ended and took it: a retry (run 3) runs the job afresh.
    runners.settle_task_jobs("task").await.unwrap();
    let fresh = runners
        .dispatch("task", "run-3", spec(&[]), Vec::new())
        .await
        .unwrap();
    assert_ne!(fresh, job);
    assert_eq!(runners.job(&fresh).await.unwrap().status, JobStatus::Queued);
}

#[tokio::test]
async fn runners_jobs_and_leases_survive_a_restart_of_the_host() {
    let fixture = fixture(RunnerConfig::default());
    let (dir, before) = (&fixture.dir, &fixture.runners);
    let registered = before
        .register("admin", "r", labels(&["linux"]), 2)
        .await
        .unwrap();
    let id = registered.runner.id.clone();
    let leased = before
        .dispatch(
            "task",
            "run-1",
            spec(&["linux"]),
            vec!["s3cret-value".into()],
        )
        .await
        .unwrap();
    before.claim(&id, Duration::ZERO).await.unwrap().unwrap();
    let queued = before
        .dispatch("task", "run-1", spec(&[]), Vec::new())
        .await
        .unwrap();
    let storage = before.storage.clone();
    drop(fixture.runners);
    storage.sync().await.unwrap();
    drop(storage);

    let after = open(dir, RunnerConfig::default());
    assert_eq!(
        after.authenticate(&registered.token).await.unwrap(),
        Some(id.clone())
    );
    let view = after.get(&id).await.unwrap();
    assert_eq!(view.running_jobs, vec![leased.clone()]);
    let reply = after
        .heartbeat(&id, std::slice::from_ref(&leased), None)
        .await
        .unwrap();
    assert!(reply.stop.is_empty(), "the lease is still the runner's");
    let context = after.touch(&id, &leased).await.unwrap();
    assert_eq!(context.secrets.as_slice(), ["s3cret-value".to_owned()]);
    let next = after.claim(&id, Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(next.job_id, queued);
}

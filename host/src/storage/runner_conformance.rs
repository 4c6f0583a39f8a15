//! The runner part of the storage conformance suite ([`super::conformance`] runs it on every
//! backend): registrations, the claim's matching, order and capacity under concurrency,
//! lease renewal, guarded changes, trimming, and what a restart keeps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

use super::Storage;
use super::conformance::Backend;
use super::runner_store::{JobRecord, RunnerRecord};
use crate::model::runner::{Artifact, Fact, JobStatus, ResourceUsage, RunnerProfile, StepOutcome};

/// Runs every runner check, each on a fresh store.
pub(crate) async fn run_all<B: Backend>(new_backend: &mut impl FnMut() -> B) {
    runners_are_found_by_id_and_token_until_removed(&mut new_backend()).await;
    a_claim_takes_the_oldest_job_the_runner_can_take_within_its_capacity(&mut new_backend()).await;
    concurrent_claims_never_lease_a_job_twice_or_overfill_a_runner(&mut new_backend()).await;
    a_heartbeat_renews_only_the_leases_its_runner_holds(&mut new_backend()).await;
    guarded_changes_lapses_and_trimming_keep_to_the_contract(&mut new_backend()).await;
    runners_jobs_and_leases_survive_a_restart(&mut new_backend()).await;
}

/// Whole milliseconds, which every backend stores exactly.
fn at(s: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_780_000_000_000 + s * 1000)
        .single()
        .unwrap_or_else(Utc::now)
}

fn runner(id: &str, labels: &[&str], capacity: u32) -> RunnerRecord {
    RunnerRecord {
        id: id.to_owned(),
        name: format!("runner {id}"),
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        capacity,
        owner: "admin".into(),
        token_hash: format!("hash-of-{id}"),
        registered_at: at(0),
        last_seen: at(0),
        profile: RunnerProfile::default(),
        usage: None,
    }
}

/// A queued job; `id`s are compared as the store orders them (dispatch order).
fn job(id: &str, task: &str, labels: &[&str]) -> JobRecord {
    JobRecord {
        id: id.to_owned(),
        task_id: task.to_owned(),
        run: "run-1".into(),
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        digest: format!("digest-{id}"),
        sealed: format!("sealed-{id}"),
        status: JobStatus::Queued,
        runner_id: None,
        lease_until: None,
        deliveries: 0,
        steps: Vec::new(),
        artifacts: Vec::new(),
        cancel_requested: false,
        collected: false,
    }
}

async fn claimed(store: &dyn Storage, runner: &str) -> Option<String> {
    store
        .runners()
        .claim_job(runner, at(60))
        .await
        .expect("claim")
        .map(|j| j.id)
}

async fn runners_are_found_by_id_and_token_until_removed(backend: &mut impl Backend) {
    let store = backend.open().await;
    let runners = store.runners();
    let mut b = runner("b", &["linux"], 2);
    b.registered_at = at(5);
    runners.insert_runner(&b).await.expect("b");
    runners
        .insert_runner(&runner("a", &[], 1))
        .await
        .expect("a");
    assert_eq!(runners.runner("b").await.expect("read"), Some(b.clone()));
    assert_eq!(
        runners.runner_by_token("hash-of-b").await.expect("read"),
        Some(b.clone())
    );
    assert_eq!(runners.runner_by_token("forged").await.expect("read"), None);
    let order: Vec<String> = runners
        .runners()
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(order, ["a", "b"], "oldest registration first");
    assert!(runners.remove_runner("b").await.expect("remove"));
    assert!(!runners.remove_runner("b").await.expect("remove again"));
    assert_eq!(
        runners.runner_by_token("hash-of-b").await.expect("read"),
        None
    );
}

async fn a_claim_takes_the_oldest_job_the_runner_can_take_within_its_capacity(
    backend: &mut impl Backend,
) {
    let store = backend.open().await;
    let runners = store.runners();
    runners
        .insert_runner(&runner("r", &["linux", "rust"], 2))
        .await
        .expect("runner");
    for (id, labels) in [
        ("j1", &["gpu"][..]),
        ("j2", &["linux"][..]),
        ("j3", &[][..]),
        ("j4", &["rust", "linux"][..]),
    ] {
        runners
            .insert_job(&job(id, "t", labels))
            .await
            .expect("job");
    }
    assert_eq!(claimed(store.as_ref(), "nobody").await, None);
    assert_eq!(claimed(store.as_ref(), "r").await.as_deref(), Some("j2"));
    assert_eq!(claimed(store.as_ref(), "r").await.as_deref(), Some("j3"));
    assert_eq!(claimed(store.as_ref(), "r").await, None, "capacity 2");

    let leased = runners.job("j2").await.expect("read").expect("j2");
    assert_eq!(leased.status, JobStatus::Running);
    assert_eq!(leased.runner_id.as_deref(), Some("r"));
    assert_eq!((leased.deliveries, leased.lease_until), (1, Some(at(60))));
    assert_eq!(
        runners.running_jobs().await.expect("running"),
        vec![
            ("j2".to_owned(), "r".to_owned()),
            ("j3".to_owned(), "r".to_owned())
        ]
    );

    let finish = |j: &mut JobRecord| {
        j.status = JobStatus::Succeeded;
        j.lease_until = None;
        true
    };
    runners.update_job("j2", &finish).await.expect("finish");
    assert_eq!(claimed(store.as_ref(), "r").await.as_deref(), Some("j4"));
    assert_eq!(
        runners.job("j1").await.expect("read").map(|j| j.status),
        Some(JobStatus::Queued),
        "no runner carries gpu"
    );
}

async fn concurrent_claims_never_lease_a_job_twice_or_overfill_a_runner(
    backend: &mut impl Backend,
) {
    let store = backend.open().await;
    let runners = store.runners();
    for (id, capacity) in [("r1", 3), ("r2", 5)] {
        runners
            .insert_runner(&runner(id, &[], capacity))
            .await
            .expect("runner");
    }
    for n in 0..20 {
        runners
            .insert_job(&job(&format!("j{n:02}"), "t", &[]))
            .await
            .expect("job");
    }
    let claims = (0..16).map(|n| {
        let store: Arc<dyn Storage> = store.clone();
        let runner = if n % 2 == 0 { "r1" } else { "r2" };
        tokio::spawn(async move {
            let got = claimed(store.as_ref(), runner).await;
            got.map(|id| (id, runner))
        })
    });
    let mut won = Vec::new();
    for claim in claims {
        won.extend(claim.await.expect("claim task"));
    }
    let ids: BTreeSet<&String> = won.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), won.len(), "no job leased twice: {won:?}");
    let on = |r: &str| won.iter().filter(|(_, runner)| *runner == r).count();
    assert_eq!(
        (on("r1"), on("r2")),
        (3, 5),
        "each runner filled to capacity"
    );
    assert_eq!(runners.running_jobs().await.expect("running").len(), 8);
}

async fn a_heartbeat_renews_only_the_leases_its_runner_holds(backend: &mut impl Backend) {
    let store = backend.open().await;
    let runners = store.runners();
    for id in ["a", "b"] {
        runners
            .insert_runner(&runner(id, &[], 2))
            .await
            .expect("runner");
    }
    for id in ["j1", "j2", "j3"] {
        runners.insert_job(&job(id, "t", &[])).await.expect("job");
    }
    claimed(store.as_ref(), "a").await.expect("j1 to a");
    claimed(store.as_ref(), "a").await.expect("j2 to a");
    claimed(store.as_ref(), "b").await.expect("j3 to b");
    let cancel = |j: &mut JobRecord| {
        j.cancel_requested = true;
        true
    };
    runners.update_job("j2", &cancel).await.expect("cancel");

    let asked: Vec<String> = ["j1", "j2", "j3", "gone"].map(String::from).to_vec();
    let renewed = runners
        .heartbeat("a", at(30), None, &asked, at(90))
        .await
        .expect("heartbeat")
        .expect("known runner");
    let got: Vec<(&str, bool)> = renewed
        .iter()
        .map(|r| (r.job_id.as_str(), r.cancel_requested))
        .collect();
    assert_eq!(got, [("j1", false), ("j2", true)]);
    let lease = |id: &'static str| {
        let store = store.clone();
        async move {
            let job = store.runners().job(id).await.expect("read").expect("job");
            job.lease_until
        }
    };
    assert_eq!(lease("j1").await, Some(at(90)));
    assert_eq!(
        lease("j3").await,
        Some(at(60)),
        "b's lease is not a's to renew"
    );
    let seen = runners.runner("a").await.expect("read").expect("a");
    assert_eq!(seen.last_seen, at(30));
    assert_eq!(seen.usage, None);

    // Usage a heartbeat reports is kept until one reports it again.
    let usage = ResourceUsage {
        values: BTreeMap::from([
            ("cpu_usage".to_owned(), 45.25),
            ("memory_usage".to_owned(), 512.0),
        ]),
        reported_at: at(40),
    };
    runners
        .heartbeat("a", at(40), Some(&usage), &[], at(100))
        .await
        .expect("heartbeat")
        .expect("known runner");
    runners
        .heartbeat("a", at(50), None, &[], at(110))
        .await
        .expect("heartbeat")
        .expect("known runner");
    let seen = runners.runner("a").await.expect("read").expect("a");
    assert_eq!((seen.last_seen, seen.usage), (at(50), Some(usage)));
    let unknown = runners
        .heartbeat("nobody", at(30), None, &asked, at(90))
        .await;
    assert_eq!(unknown.expect("heartbeat"), None);
}

async fn guarded_changes_lapses_and_trimming_keep_to_the_contract(backend: &mut impl Backend) {
    let store = backend.open().await;
    let runners = store.runners();
    runners
        .insert_runner(&runner("r", &[], 4))
        .await
        .expect("runner");
    for id in ["j1", "j2", "j3", "j4"] {
        runners.insert_job(&job(id, "t", &[])).await.expect("job");
    }
    runners
        .insert_job(&job("k1", "other", &[]))
        .await
        .expect("job");
    claimed(store.as_ref(), "r").await.expect("j1");
    claimed(store.as_ref(), "r").await.expect("j2");

    let declined = runners
        .update_job("j1", &|j| {
            j.status = JobStatus::Failed;
            false
        })
        .await
        .expect("update")
        .expect("j1");
    assert_eq!(
        declined,
        (runners.job("j1").await.expect("read").expect("j1"), false)
    );
    assert_eq!(
        declined.0.status,
        JobStatus::Running,
        "a declined change writes nothing"
    );
    assert!(
        runners
            .update_job("missing", &|_| true)
            .await
            .expect("update")
            .is_none()
    );

    let step = StepOutcome {
        name: "test".into(),
        exit_code: Some(0),
        duration_ms: 12,
        output_tail: "ok é".into(),
    };
    let artifact = Artifact {
        path: "dist/a.bin".into(),
        size_bytes: 3,
        sha256: "ab".repeat(32),
    };
    let (ended, written) = runners
        .update_job("j1", &|j| {
            j.steps.push(step.clone());
            j.artifacts = vec![artifact.clone()];
            j.status = JobStatus::Succeeded;
            j.lease_until = None;
            true
        })
        .await
        .expect("update")
        .expect("j1");
    assert!(written);
    assert_eq!(runners.job("j1").await.expect("read"), Some(ended));

    assert_eq!(
        runners.lapsed_jobs(at(59), 10).await.expect("lapsed"),
        Vec::<String>::new()
    );
    assert_eq!(
        runners.lapsed_jobs(at(60), 10).await.expect("lapsed"),
        ["j2"]
    );
    let uncollected = || async {
        runners
            .uncollected_jobs("t")
            .await
            .expect("uncollected")
            .into_iter()
            .map(|j| j.id)
            .collect::<Vec<String>>()
    };
    assert_eq!(uncollected().await, ["j1", "j2", "j3", "j4"]);
    runners
        .update_job("j1", &|j| {
            j.collected = true;
            true
        })
        .await
        .expect("collect");
    assert_eq!(uncollected().await, ["j2", "j3", "j4"]);

    for id in ["j3", "j4", "k1"] {
        runners
            .update_job(id, &|j| {
                j.status = JobStatus::Cancelled;
                true
            })
            .await
            .expect("cancel");
    }
    assert_eq!(runners.forget_finished(2).await.expect("trim"), 2);
    for (id, kept) in [
        ("j1", false),
        ("j3", false),
        ("j4", true),
        ("k1", true),
        ("j2", true),
    ] {
        let found = runners.job(id).await.expect("read").is_some();
        assert_eq!(
            found, kept,
            "{id}: the newest finished and every unfinished stay"
        );
    }
}

async fn runners_jobs_and_leases_survive_a_restart(backend: &mut impl Backend) {
    let store = backend.open().await;
    let runners = store.runners();
    let mut registered = runner("r", &["linux"], 2);
    registered.profile = RunnerProfile {
        os: Some("linux".into()),
        architecture: Some("x64".into()),
        capabilities: BTreeMap::from([
            ("docker".to_owned(), Fact::Flag(true)),
            ("max_concurrent_jobs".to_owned(), Fact::Number(5.into())),
        ]),
        resource_info: BTreeMap::from([("gpu".to_owned(), Fact::Text("a100".into()))]),
    };
    runners.insert_runner(&registered).await.expect("runner");
    runners
        .insert_job(&job("j1", "t", &["linux"]))
        .await
        .expect("job");
    runners.insert_job(&job("j2", "t", &[])).await.expect("job");
    claimed(store.as_ref(), "r").await.expect("j1");
    let before = runners.job("j1").await.expect("read");
    store.sync().await.expect("durable");

    let store = backend.reopen(store).await;
    let runners = store.runners();
    assert_eq!(
        runners.runner_by_token("hash-of-r").await.expect("read"),
        Some(registered)
    );
    assert_eq!(runners.job("j1").await.expect("read"), before);
    assert_eq!(
        runners.running_jobs().await.expect("running"),
        [("j1".to_owned(), "r".to_owned())]
    );
    assert_eq!(claimed(store.as_ref(), "r").await.as_deref(), Some("j2"));
}

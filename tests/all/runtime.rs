//! The plugin runtime and registry, exercised with the real bundled `testkit` component:
//! outcomes, limits, isolation, grants, control and hot replacement. No HTTP server of ours is
//! involved; the HTTP tests start a loopback server for the plugin to call.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use taskhost::registry::{PluginRegistry, PluginStorage};
use taskhost::runtime::{
    CompiledPlugin, FsMount, Grants, Invocation, LoadError, MemoryServices, RunOutcome,
    RunnersGrant, Runtime, RuntimeConfig, TaskControl, codes,
};
use taskhost::storage::plugin_store::PluginState;
use taskhost::storage::{SledStorage, Storage};
use warp::Filter;

const TESTKIT: &[u8] = include_bytes!(env!("TASKHOST_TESTKIT_WASM"));
const TESTKIT_NEXT: &[u8] = include_bytes!(env!("TASKHOST_TESTKIT_NEXT_WASM"));

/// A runtime whose compile cache is shared by all tests (compiling is the slow part).
fn runtime() -> Runtime {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache");
    Runtime::new(RuntimeConfig {
        cache_dir: Some(cache),
        ..RuntimeConfig::default()
    })
    .expect("runtime starts")
}

async fn testkit(grants: Grants) -> CompiledPlugin {
    runtime()
        .load(TESTKIT, grants)
        .await
        .expect("testkit loads")
}

fn invocation(task_type: &str, input: Value) -> Invocation {
    Invocation {
        task_id: format!("test-{task_type}"),
        task_type: task_type.to_owned(),
        input: input.to_string(),
        attempt: 1,
        labels: vec![("suite".into(), "runtime".into())],
        timeout: None,
    }
}

async fn run(
    plugin: &CompiledPlugin,
    task_type: &str,
    input: Value,
) -> (RunOutcome, Arc<MemoryServices>) {
    let services = Arc::new(MemoryServices::default());
    let outcome = plugin
        .run(
            invocation(task_type, input),
            services.clone(),
            TaskControl::new(),
        )
        .await;
    (outcome, services)
}

fn completed(outcome: RunOutcome) -> Value {
    match outcome {
        RunOutcome::Completed(value) => value,
        RunOutcome::Failed(failure) => panic!("expected completion, got {failure:?}"),
    }
}

fn failure_code(outcome: &RunOutcome) -> &str {
    &outcome.failure().expect("expected a failure").code
}

#[tokio::test]
async fn describe_lists_every_testkit_task_type_with_a_schema() {
    let plugin = testkit(Grants::default()).await;
    let info = plugin.info();
    assert_eq!(info.name, "testkit");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    let names: Vec<&str> = info.task_types.iter().map(|t| t.name.as_str()).collect();
    for expected in [
        "echo",
        "sleep",
        "fail",
        "trap",
        "busy_loop",
        "memory_hog",
        "host_calls",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let sleep = info.task_type("sleep").expect("sleep type");
    assert_eq!(sleep.input_schema["required"], json!(["ms"]));
}

#[tokio::test]
async fn echo_returns_its_input() {
    let plugin = testkit(Grants::default()).await;
    let input = json!({"hello": "world", "n": [1, 2, 3], "nested": {"ok": true}});
    let (outcome, _) = run(&plugin, "echo", input.clone()).await;
    assert_eq!(completed(outcome), input);
}

#[tokio::test]
async fn fail_reports_the_plugins_code_and_retryability() {
    let plugin = testkit(Grants::default()).await;
    let (outcome, _) = run(
        &plugin,
        "fail",
        json!({"retryable": true, "code": "FLAKY", "message": "try again"}),
    )
    .await;
    let failure = outcome.failure().expect("fails");
    assert_eq!(
        (
            failure.code.as_str(),
            failure.message.as_str(),
            failure.retryable
        ),
        ("FLAKY", "try again", true)
    );

    let (outcome, _) = run(&plugin, "fail", json!({})).await;
    assert!(!outcome.failure().expect("fails").retryable);
}

#[tokio::test]
async fn validate_passes_good_input_and_returns_the_plugins_reason_for_bad_input() {
    let plugin = testkit(Grants::default()).await;
    plugin
        .validate("sleep", r#"{"ms": 100, "steps": 4}"#)
        .await
        .expect("valid");
    let refused = plugin
        .validate("sleep", r#"{"ms": 2, "steps": 10}"#)
        .await
        .unwrap_err();
    assert_eq!(refused.code, "INVALID_INPUT");
    assert!(refused.message.contains("steps"), "{}", refused.message);
}

#[tokio::test]
async fn trap_busy_loop_and_memory_hog_fail_with_distinct_codes_while_echo_succeeds() {
    let mut grants = Grants::default();
    grants.limits.memory_mb = 32;
    grants.limits.timeout_s = 1;
    let plugin = testkit(grants).await;

    let (trap, busy, hog, echo) = tokio::join!(
        run(&plugin, "trap", json!({})),
        run(&plugin, "busy_loop", json!({})),
        run(&plugin, "memory_hog", json!({"mb_per_step": 4})),
        async {
            // Started while the others misbehave.
            tokio::time::sleep(Duration::from_millis(200)).await;
            run(&plugin, "echo", json!({"still": "serving"})).await
        },
    );

    assert_eq!(failure_code(&trap.0), codes::PLUGIN_TRAP);
    assert!(
        trap.1
            .log_lines()
            .iter()
            .any(|l| l.contains("testkit trap requested")),
        "the guest's panic message reaches the task log: {:?}",
        trap.1.log_lines()
    );
    assert_eq!(failure_code(&busy.0), codes::TIMEOUT);
    assert!(busy.0.failure().is_some_and(|f| f.retryable));
    assert_eq!(failure_code(&hog.0), codes::MEMORY_LIMIT_EXCEEDED);
    assert_eq!(completed(echo.0), json!({"still": "serving"}));
}

#[tokio::test]
async fn an_oversized_result_fails_the_task_with_result_too_large() {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache");
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache),
        max_result_bytes: 1024,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let plugin = runtime
        .load(TESTKIT, Grants::default())
        .await
        .expect("load");
    let (outcome, _) = run(&plugin, "echo", json!({"blob": "x".repeat(2048)})).await;
    assert_eq!(failure_code(&outcome), codes::RESULT_TOO_LARGE);
    let (outcome, _) = run(&plugin, "echo", json!({"small": true})).await;
    assert_eq!(completed(outcome), json!({"small": true}));
}

#[tokio::test]
async fn a_tasks_own_timeout_is_capped_by_the_plugin_limit_and_applies_below_it() {
    let plugin = testkit(Grants::default()).await;
    let mut short = invocation("sleep", json!({"ms": 5_000, "steps": 5}));
    short.timeout = Some(Duration::from_millis(300));
    let outcome = plugin
        .run(
            short,
            Arc::new(MemoryServices::default()),
            TaskControl::new(),
        )
        .await;
    // The guest is inside the host's sleep call, where only the async backstop can stop it.
    assert_eq!(failure_code(&outcome), codes::TIMEOUT);
}

#[tokio::test]
async fn without_a_grant_the_plugin_sees_no_files_no_env_and_no_args() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(data_dir.path().join("secret.txt"), "host data").expect("write");
    let plugin = testkit(Grants::default()).await;
    let (outcome, _) = run(
        &plugin,
        "host_calls",
        json!({
            "read_file": "/etc/passwd",
            "write_file": format!("{}/secret.txt", data_dir.path().display()),
        }),
    )
    .await;
    let report = completed(outcome);
    assert!(report["read_file"]["error"].is_string(), "{report}");
    assert!(report["write_file"]["error"].is_string(), "{report}");
    assert_eq!(report["env_vars"], 0);
    assert_eq!(report["args"], 0);
    assert_eq!(
        std::fs::read_to_string(data_dir.path().join("secret.txt")).expect("read"),
        "host data"
    );
}

#[tokio::test]
async fn a_read_only_grant_allows_reading_but_not_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("input.txt"), "granted content").expect("write");
    let mut grants = Grants::default();
    grants.fs.push(FsMount {
        host: dir.path().to_owned(),
        guest: "/data".into(),
        rw: false,
    });
    let plugin = testkit(grants).await;
    let (outcome, _) = run(
        &plugin,
        "host_calls",
        json!({"read_file": "/data/input.txt", "write_file": "/data/output.txt"}),
    )
    .await;
    let report = completed(outcome);
    assert_eq!(report["read_file"]["ok"], "granted content");
    assert!(report["write_file"]["error"].is_string(), "{report}");
    assert!(!dir.path().join("output.txt").exists());
    // The mount does not open anything above it.
    let (outcome, _) = run(
        &plugin,
        "host_calls",
        json!({"read_file": "/data/../../etc/passwd"}),
    )
    .await;
    assert!(completed(outcome)["read_file"]["error"].is_string());
}

#[tokio::test]
async fn a_read_write_grant_allows_writing_inside_the_mount() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut grants = Grants::default();
    grants.fs.push(FsMount {
        host: dir.path().to_owned(),
        guest: "/work".into(),
        rw: true,
    });
    let plugin = testkit(grants).await;
    let (outcome, _) = run(
        &plugin,
        "host_calls",
        json!({"write_file": "/work/out.txt"}),
    )
    .await;
    assert_eq!(completed(outcome)["write_file"]["ok"], true);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).expect("written"),
        "written by testkit"
    );
}

/// A loopback server with a page, a redirect to a host that is not allowed and a big body.
async fn http_fixture() -> std::net::SocketAddr {
    let hello = warp::path("hello").map(|| "hello from loopback");
    let away = warp::path("away").map(|| {
        warp::redirect::temporary(warp::http::Uri::from_static("http://127.0.0.2:9/elsewhere"))
    });
    let big = warp::path("big").map(|| vec![b'x'; 17 << 20]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(warp::serve(hello.or(away).or(big)).incoming(listener).run());
    addr
}

#[tokio::test]
async fn outbound_http_reaches_allowed_loopback_hosts_only() {
    let addr = http_fixture().await;

    let ungranted = testkit(Grants::default()).await;
    let (outcome, _) = run(
        &ungranted,
        "host_calls",
        json!({"http_url": format!("http://{addr}/hello")}),
    )
    .await;
    assert_eq!(completed(outcome)["http"]["error"], "not-granted");

    let mut grants = Grants::default();
    grants.http.allow = vec![format!("127.0.0.1:{}", addr.port())];
    let plugin = testkit(grants).await;

    let (outcome, _) = run(
        &plugin,
        "host_calls",
        json!({"http_url": format!("http://{addr}/hello")}),
    )
    .await;
    let report = completed(outcome);
    assert_eq!(report["http"]["ok"]["status"], 200, "{report}");
    assert_eq!(report["http"]["ok"]["body"], "hello from loopback");

    let other_port = format!(
        "http://127.0.0.1:{}/hello",
        addr.port().wrapping_add(1).max(1)
    );
    let (outcome, _) = run(&plugin, "host_calls", json!({"http_url": other_port})).await;
    assert_eq!(completed(outcome)["http"]["error"], "denied");

    let (outcome, _) = run(
        &plugin,
        "host_calls",
        json!({"http_url": format!("http://{addr}/away")}),
    )
    .await;
    let report = completed(outcome);
    assert_eq!(
        report["http"]["error"], "denied",
        "a redirect is re-checked: {report}"
    );

    let (outcome, _) = run(
        &plugin,
        "host_calls",
        json!({"http_url": format!("http://{addr}/big")}),
    )
    .await;
    assert_eq!(completed(outcome)["http"]["error"], "limit-exceeded");
}

/// A loopback server that answers with the request headers it got, one `name: value` a line.
async fn header_echo() -> std::net::SocketAddr {
    let echo = warp::header::headers_cloned().map(|headers: warp::http::HeaderMap| {
        headers
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("")))
            .collect::<String>()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(warp::serve(echo).incoming(listener).run());
    addr
}

#[tokio::test]
async fn internal_addresses_are_reached_only_when_listed_by_address() {
    let addr = http_fixture().await;
    let hello = json!({"http_url": format!("http://{addr}/hello")});
    for allow in ["*".to_owned(), format!("localhost:{}", addr.port())] {
        let mut grants = Grants::default();
        grants.http.allow = vec![allow.clone()];
        let plugin = testkit(grants).await;
        let url = if allow == "*" {
            format!("http://{addr}/hello")
        } else {
            format!("http://localhost:{}/hello", addr.port())
        };
        let (outcome, _) = run(&plugin, "host_calls", json!({"http_url": url})).await;
        let report = completed(outcome);
        assert_eq!(report["http"]["error"], "denied", "{allow}: {report}");
        assert!(
            report["http"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("internal address")),
            "{report}"
        );
    }
    let mut grants = Grants::default();
    grants.http.allow = vec!["*".into(), format!("127.0.0.1:{}", addr.port())];
    let plugin = testkit(grants).await;
    let (outcome, _) = run(&plugin, "host_calls", hello).await;
    assert_eq!(completed(outcome)["http"]["ok"]["status"], 200);
}

#[tokio::test]
async fn a_redirect_to_another_origin_carries_no_credentials_and_a_guest_host_is_dropped() {
    let echo = header_echo().await;
    let target = format!("http://{echo}/");
    let bounce = warp::any()
        .map(move || warp::redirect::temporary(target.parse::<warp::http::Uri>().expect("uri")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let bouncer = listener.local_addr().expect("addr");
    tokio::spawn(warp::serve(bounce).incoming(listener).run());

    let mut grants = Grants::default();
    grants.http.allow = vec![
        format!("127.0.0.1:{}", bouncer.port()),
        format!("127.0.0.1:{}", echo.port()),
    ];
    let plugin = testkit(grants).await;
    let headers = json!({"authorization": "Bearer s3cret", "private-token": "glpat-s3cret", "host": "metadata.internal", "x-trace": "kept"});
    let (outcome, _) = run(
        &plugin,
        "host_calls",
        json!({"http_url": format!("http://{bouncer}/start"), "http_headers": headers}),
    )
    .await;
    let report = completed(outcome);
    let seen = report["http"]["ok"]["body"]
        .as_str()
        .expect("echoed headers");
    assert!(seen.contains("x-trace: kept"), "{seen}");
    assert!(
        !seen.contains("s3cret"),
        "credentials followed the redirect: {seen}"
    );
    assert!(seen.contains(&format!("host: {echo}")), "{seen}");

    // On the same origin, the guest's headers arrive (its Host still does not).
    let (outcome, _) = run(
        &plugin,
        "host_calls",
        json!({"http_url": format!("http://{echo}/direct"), "http_headers": headers}),
    )
    .await;
    let report = completed(outcome);
    let seen = report["http"]["ok"]["body"]
        .as_str()
        .expect("echoed headers");
    assert!(seen.contains("authorization: Bearer s3cret"), "{seen}");
    assert!(!seen.contains("metadata.internal"), "{seen}");
}

#[tokio::test]
async fn every_host_import_answers_and_stdout_reaches_the_log() {
    let plugin = testkit(Grants::default()).await;
    let (outcome, services) = run(
        &plugin,
        "host_calls",
        json!({"spawn": true, "stdout": "printed by the guest"}),
    )
    .await;
    let report = completed(outcome);
    assert_eq!(report["emit_record"]["ok"], true);
    assert_eq!(report["checkpoint"]["ok"], true);
    assert_eq!(report["sleep"]["ok"], true);
    assert_eq!(
        report["kv"]["ok"],
        json!({"read": "value", "keys": ["probe"], "after_delete": false})
    );
    // MemoryServices has no scheduler: the guest sees `unavailable`, not a trap.
    assert_eq!(report["spawn"]["error"], "unavailable");
    // Runners are off unless granted; granted, MemoryServices has none to offer.
    assert_eq!(report["runners"]["error"], "not-granted");
    let granted = testkit(Grants {
        runners: Some(RunnersGrant::allowed()),
        ..Grants::default()
    })
    .await;
    let (granted_outcome, _) = run(&granted, "host_calls", json!({})).await;
    assert_eq!(
        completed(granted_outcome)["runners"]["error"],
        "unavailable"
    );

    assert_eq!(
        services.record("probe", "1"),
        Some(json!({"task": "test-host_calls"}))
    );
    let progress = services.progress_reports();
    assert_eq!(progress.len(), 1);
    assert_eq!(
        (progress[0].processed, progress[0].total),
        (Some(1), Some(2))
    );
    assert_eq!(progress[0].step.as_deref(), Some("calling the host"));
    let logs = services.log_lines();
    assert!(
        logs.contains(&"host_calls: logging works".to_owned()),
        "{logs:?}"
    );
    assert!(
        logs.contains(&"stdout: printed by the guest".to_owned()),
        "{logs:?}"
    );
    assert!(
        logs.contains(&"stderr: stderr: printed by the guest".to_owned()),
        "{logs:?}"
    );
}

#[tokio::test]
async fn cancelling_a_sleeping_task_stops_it_at_once() {
    let plugin = testkit(Grants::default()).await;
    let control = TaskControl::new();
    let started = Instant::now();
    let run = plugin.run(
        invocation("sleep", json!({"ms": 60_000, "steps": 2})),
        Arc::new(MemoryServices::default()),
        control.clone(),
    );
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        control.cancel();
    };
    let (outcome, ()) = tokio::join!(run, cancel);
    assert_eq!(failure_code(&outcome), codes::CANCELLED);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it did not sleep the minute out"
    );
}

#[tokio::test]
async fn killing_a_busy_loop_stops_it_without_its_cooperation() {
    let plugin = testkit(Grants::default()).await;
    let control = TaskControl::new();
    let run = plugin.run(
        invocation("busy_loop", json!({})),
        Arc::new(MemoryServices::default()),
        control.clone(),
    );
    let kill = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        control.kill();
    };
    let (outcome, ()) = tokio::join!(run, kill);
    assert_eq!(failure_code(&outcome), codes::CANCELLED);
}

#[tokio::test]
async fn a_paused_task_waits_at_its_checkpoint_and_finishes_after_resume() {
    let plugin = testkit(Grants::default()).await;
    let control = TaskControl::new();
    let services = Arc::new(MemoryServices::default());
    let run = plugin.run(
        invocation("sleep", json!({"ms": 100, "steps": 10})),
        services.clone(),
        control.clone(),
    );
    let steer = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(control.pause());
        // Long enough for every remaining step to have run had the pause been ignored.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let during_pause = services.progress_reports().len();
        assert!(during_pause < 10, "the task stopped reporting while paused");
        assert!(control.resume());
        during_pause
    };
    let (outcome, during_pause) = tokio::join!(run, steer);
    assert_eq!(completed(outcome)["steps"], 10);
    assert_eq!(services.progress_reports().len(), 10);
    assert!(during_pause >= 1);
}

#[tokio::test]
async fn concurrency_is_capped_per_plugin() {
    let mut grants = Grants::default();
    grants.limits.max_concurrency = 1;
    let plugin = testkit(grants).await;
    let started = Instant::now();
    let (a, b) = tokio::join!(
        run(&plugin, "sleep", json!({"ms": 200})),
        run(&plugin, "sleep", json!({"ms": 200})),
    );
    completed(a.0);
    completed(b.0);
    // With one slot the second sleep could only start after the first ended.
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn components_that_do_not_implement_the_world_are_refused_with_a_reason() {
    let runtime = runtime();
    let garbage = runtime
        .load(b"not wasm at all", Grants::default())
        .await
        .unwrap_err();
    assert!(matches!(garbage, LoadError::NotAComponent(_)), "{garbage}");

    let core_module = b"\0asm\x01\0\0\0";
    let core = runtime
        .load(core_module, Grants::default())
        .await
        .unwrap_err();
    assert!(core.to_string().contains("wasm32-wasip2"), "{core}");

    // An empty component (component-model binary header, no contents).
    let empty_component = b"\0asm\x0d\0\x01\0";
    let empty = runtime
        .load(empty_component, Grants::default())
        .await
        .unwrap_err();
    assert!(matches!(empty, LoadError::WrongWorld(_)), "{empty}");
    assert!(
        empty.to_string().contains("taskhost:plugin/plugin"),
        "{empty}"
    );
}

#[tokio::test]
async fn grants_above_the_hosts_maximum_are_refused() {
    let mut grants = Grants::default();
    grants.limits.memory_mb = 8192;
    let error = runtime().load(TESTKIT, grants).await.unwrap_err();
    assert!(matches!(error, LoadError::Grants(_)), "{error}");
}

#[tokio::test]
async fn replacing_a_plugin_lets_running_tasks_finish_on_the_old_version() {
    let data = tempfile::tempdir().expect("tempdir");
    let storage: Arc<dyn Storage> = Arc::new(SledStorage::open(data.path()).expect("store"));
    let registry = PluginRegistry::new(
        runtime(),
        Some(PluginStorage {
            storage: storage.clone(),
            host_id: "host-a".into(),
        }),
    );
    registry
        .install(TESTKIT, Grants::default())
        .await
        .expect("install");

    let old = registry.get("testkit").expect("loaded").plugin.clone();
    let control = TaskControl::new();
    let running = old.run(
        invocation("sleep", json!({"ms": 400, "steps": 4})),
        Arc::new(MemoryServices::default()),
        control,
    );
    let replace = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        registry
            .replace("testkit", TESTKIT_NEXT, None)
            .await
            .expect("replace")
    };
    let (outcome, replaced) = tokio::join!(running, replace);
    assert_eq!(completed(outcome)["version"], env!("CARGO_PKG_VERSION"));
    let next_version = format!("{}-next", env!("CARGO_PKG_VERSION"));
    assert_eq!(replaced.plugin.info().version, next_version);

    let current = registry
        .get("testkit")
        .expect("still loaded")
        .plugin
        .clone();
    let (outcome, _) = run(&current, "sleep", json!({"ms": 1})).await;
    assert_eq!(completed(outcome)["version"], next_version.as_str());

    // The installed version is stored for the next start and for every other host.
    let stored = storage
        .plugins()
        .get("testkit")
        .await
        .expect("read")
        .expect("stored");
    let PluginState::Installed { component, .. } = stored.state else {
        panic!("testkit stored as unloaded");
    };
    assert_eq!(component, TESTKIT_NEXT);
}

#[tokio::test]
async fn the_registry_loads_bundled_plugins_and_a_plugins_directory_with_grants() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("testkit.wasm"), TESTKIT_NEXT).expect("write");
    std::fs::write(
        dir.path().join("testkit.toml"),
        "[limits]\nmemory_mb = 48\n[config]\nregion = \"eu\"\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("broken.wasm"), b"nope").expect("write");

    let registry = PluginRegistry::new(runtime(), None);
    registry
        .load_bundled(&Default::default())
        .await
        .expect("bundled");
    assert_eq!(
        registry
            .get("testkit")
            .expect("bundled testkit")
            .plugin
            .info()
            .version,
        env!("CARGO_PKG_VERSION")
    );
    let failures = registry.load_dir(dir.path()).await;
    assert_eq!(
        failures.len(),
        1,
        "the broken file is reported, the rest loads"
    );
    assert!(failures[0].0.ends_with("broken.wasm"));
    let loaded = registry.get("testkit").expect("testkit");
    assert!(loaded.plugin.info().version.ends_with("-next"));
    assert_eq!(loaded.plugin.grants().limits.memory_mb, 48);

    registry.unload("testkit").await.expect("unload");
    assert!(registry.get("testkit").is_none());
    assert!(registry.unload("testkit").await.is_err());
}

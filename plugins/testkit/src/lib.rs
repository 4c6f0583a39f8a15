//! The bundled `testkit` plugin: task types whose behaviour is known in advance, used by the
//! test suite and by operators checking an installation (limits, grants, cancellation).
//!
//! - `echo`: the result is the input.
//! - `sleep`: `{"ms", "steps"}` — sleeps cooperatively, reporting progress at each step.
//! - `witness`: `{"url", "ms"}` — tells a recorder at `url` when its run starts and ends (GET
//!   `url/start` and `url/end` with the task, attempt and the operator's `config.host`),
//!   sleeping `ms` between: what actually ran where, seen from outside the host.
//! - `fail`: `{"retryable", "code"?, "message"?}` — fails with that error.
//! - `trap`: panics, which traps the instance.
//! - `busy_loop`: spins forever without calling the host (only the wall-clock limit stops it).
//! - `memory_hog`: `{"mb_per_step"?}` — allocates until the memory limit stops it.
//! - `host_calls`: calls every host import and reports what each answered.
//! - `leak_secret`: `{"credentials": {"access_token"}, "fail"?}` (writeOnly) — tries to leak the
//!   token through every channel a plugin has (log, stdout, progress text and metric names,
//!   record keys and collections, lines long enough to be cut, the result, or with `fail` the
//!   error code and message), to show that the host masks it everywhere.

use std::collections::BTreeMap;
use std::time::Duration;

use taskhost_plugin_sdk::{
    Context, HostError, Plugin, PluginInfo, Progress, TaskError, TaskType, Value, checkpoint,
    export_plugin, http, json, kv, log, records, runners, sleep, tasks,
};

/// The version reported by `describe`; the test suite builds a second copy with another
/// version to check hot replacement.
const VERSION: &str = match option_env!("TASKHOST_TESTKIT_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

struct Testkit;

impl Plugin for Testkit {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "testkit",
            VERSION,
            "Task types with known behaviour for testing a taskhost installation",
        )
        .task_type(TaskType::new(
            "echo",
            "Returns its input as the result",
            json!({}),
        ))
        .task_type(TaskType::new(
            "sleep",
            "Sleeps for `ms` milliseconds in `steps` steps, reporting progress after each",
            json!({
                "type": "object",
                "properties": {
                    "ms": {"type": "integer", "minimum": 0, "maximum": 86_400_000u64},
                    "steps": {"type": "integer", "minimum": 1, "maximum": 100_000},
                },
                "required": ["ms"],
                "additionalProperties": false,
            }),
        ))
        .task_type(TaskType::new(
            "witness",
            "Reports its start and end to a recorder, sleeping `ms` milliseconds between",
            json!({
                "type": "object",
                "properties": {
                    "url": {"type": "string", "minLength": 1},
                    "ms": {"type": "integer", "minimum": 0, "maximum": 600_000},
                },
                "required": ["url"],
                "additionalProperties": false,
            }),
        ))
        .task_type(TaskType::new(
            "fail",
            "Fails with the given error code and message",
            json!({
                "type": "object",
                "properties": {
                    "retryable": {"type": "boolean"},
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                },
                "additionalProperties": false,
            }),
        ))
        .task_type(TaskType::new(
            "trap",
            "Panics, trapping the instance",
            json!({}),
        ))
        .task_type(TaskType::new(
            "busy_loop",
            "Spins forever without yielding to the host",
            json!({}),
        ))
        .task_type(TaskType::new(
            "memory_hog",
            "Allocates memory until the plugin's memory limit stops it",
            json!({
                "type": "object",
                "properties": {"mb_per_step": {"type": "integer", "minimum": 1, "maximum": 1024}},
                "additionalProperties": false,
            }),
        ))
        .task_type(TaskType::new(
            "leak_secret",
            "Receives a secret token and tries to leak it through every channel",
            json!({
                "type": "object",
                "properties": {
                    "api_endpoint": {"type": "string"},
                    "credentials": {
                        "type": "object",
                        "properties": {
                            "access_token": {"type": "string", "writeOnly": true, "minLength": 4},
                        },
                        "required": ["access_token"],
                    },
                    "fail": {"type": "boolean"},
                },
                "required": ["credentials"],
            }),
        ))
        .task_type(TaskType::new(
            "host_calls",
            "Calls every host import and reports what each answered",
            json!({
                "type": "object",
                "properties": {
                    "http_url": {"type": "string"},
                    "http_headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "read_file": {"type": "string"},
                    "write_file": {"type": "string"},
                    "spawn": {"type": "boolean"},
                    "spawn_chain": {"type": "boolean"},
                    "stdout": {"type": "string"},
                    "progress_metrics": {"type": "integer", "minimum": 0, "maximum": 1000},
                },
                "additionalProperties": false,
            }),
        ))
    }

    fn validate(
        task_type: &str,
        input: &Value,
        _config: &BTreeMap<String, String>,
    ) -> Result<(), TaskError> {
        if task_type == "leak_secret" {
            let token = input["credentials"]["access_token"].as_str().unwrap_or("");
            if token == "reject-me" {
                return Err(TaskError::invalid_input(format!(
                    "token {token} is not acceptable"
                )));
            }
        }
        if task_type == "sleep" {
            let steps = input.get("steps").and_then(Value::as_u64).unwrap_or(1);
            let ms = input.get("ms").and_then(Value::as_u64).unwrap_or(0);
            if steps > ms.max(1) {
                return Err(TaskError::invalid_input(
                    "steps must not exceed ms (each step sleeps at least 1 ms)",
                ));
            }
        }
        Ok(())
    }

    fn run(ctx: Context) -> Result<Value, TaskError> {
        match ctx.task_type.as_str() {
            "echo" => Ok(ctx.input),
            "sleep" => run_sleep(&ctx.input),
            "witness" => witness(&ctx),
            "fail" => Err(TaskError {
                code: ctx.input["code"]
                    .as_str()
                    .unwrap_or("TESTKIT_FAILURE")
                    .to_owned(),
                message: ctx.input["message"]
                    .as_str()
                    .unwrap_or("failure requested by input")
                    .to_owned(),
                retryable: ctx.input["retryable"].as_bool().unwrap_or(false),
            }),
            "trap" => panic!("testkit trap requested"),
            "busy_loop" => busy_loop(),
            "memory_hog" => memory_hog(&ctx.input),
            "host_calls" => Ok(host_calls(&ctx)),
            "leak_secret" => leak_secret(&ctx.input),
            other => Err(TaskError::fatal(
                "UNSUPPORTED_TASK_TYPE",
                format!("testkit has no task type {other}"),
            )),
        }
    }
}

fn run_sleep(input: &Value) -> Result<Value, TaskError> {
    let ms = input["ms"].as_u64().unwrap_or(0);
    let steps = input["steps"].as_u64().unwrap_or(1).max(1);
    let per_step = ms / steps;
    for step in 1..=steps {
        // The last step absorbs the remainder so the total is exactly `ms`.
        let this_step = if step == steps {
            ms - per_step * (steps - 1)
        } else {
            per_step
        };
        sleep(Duration::from_millis(this_step))?;
        Progress::new()
            .processed(step)
            .total(steps)
            .step("sleeping")
            .report();
        checkpoint()?;
    }
    Ok(json!({"slept_ms": ms, "steps": steps, "version": VERSION}))
}

fn witness(ctx: &Context) -> Result<Value, TaskError> {
    let url = ctx.input["url"].as_str().unwrap_or_default();
    let host = ctx.config.get("host").map_or("", String::as_str);
    let tell = |phase: &str| {
        let query = format!(
            "{url}/{phase}?task={}&attempt={}&host={host}",
            ctx.task_id, ctx.attempt
        );
        match http::get(&query, &[]) {
            Ok(response) if response.status == 200 => Ok(()),
            Ok(response) => Err(TaskError::fatal(
                "WITNESS_REFUSED",
                format!("the recorder answered {}", response.status),
            )),
            Err(e) => Err(TaskError::fatal(
                "WITNESS_UNREACHABLE",
                format!("the recorder could not be told: {}", e.message),
            )),
        }
    };
    tell("start")?;
    // Short steps with a checkpoint between, so a cancel or pause stops it promptly.
    let mut left = ctx.input["ms"].as_u64().unwrap_or(0);
    while left > 0 {
        let step = left.min(10);
        sleep(Duration::from_millis(step))?;
        left -= step;
        checkpoint()?;
    }
    tell("end")?;
    Ok(json!({"attempt": ctx.attempt, "host": host}))
}

fn busy_loop() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

fn memory_hog(input: &Value) -> Result<Value, TaskError> {
    let mb_per_step = input["mb_per_step"].as_u64().unwrap_or(16) as usize;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touching every page makes the allocation real rather than reserved.
        hoard.push(vec![0xA5; mb_per_step * 1024 * 1024]);
        std::hint::black_box(&hoard);
    }
}

fn leak_secret(input: &Value) -> Result<Value, TaskError> {
    let token = input["credentials"]["access_token"]
        .as_str()
        .unwrap_or_default();
    log::info(&format!("using token {token}"));
    println!("stdout token={token}");
    eprintln!("stderr token={token}");
    Progress::new()
        .processed(1)
        .total(1)
        .message(&format!("authenticated with {token}"))
        .report();
    records::emit("tokens", token, &json!({"token": token}))?;
    // Channels that are names, not text: a metric, a record collection.
    Progress::new().metric(&format!("m-{token}"), 1.0).report();
    records::emit(&format!("col-{token}"), "k", &json!({}))?;
    // A line long enough to be cut, with the token across the cut.
    let filler = "x".repeat(16 * 1024 - token.len() / 2);
    println!("{filler}{token} after the cut");
    log::info(&format!(
        "{}{token}",
        "y".repeat(16 * 1024 - token.len() / 2)
    ));
    if input["fail"].as_bool().unwrap_or(false) {
        return Err(TaskError {
            code: format!("BAD_{token}"),
            message: format!("failed using {token}"),
            retryable: false,
        });
    }
    Ok(json!({
        "token": token,
        "token_length": token.len(),
        "looks_like_gitlab": token.starts_with("glpat-"),
    }))
}

fn outcome<T>(result: Result<T, HostError>, ok: impl FnOnce(T) -> Value) -> Value {
    match result {
        Ok(value) => json!({"ok": ok(value)}),
        Err(error) => json!({"error": error.kind.name(), "message": error.message}),
    }
}

fn host_calls(ctx: &Context) -> Value {
    let input = &ctx.input;
    let mut report = serde_json::Map::new();

    Progress::new()
        .processed(1)
        .total(2)
        .step("calling the host")
        .metric("calls", 1.0)
        .report();
    log::info("host_calls: logging works");
    report.insert(
        "emit_record".into(),
        outcome(
            records::emit("probe", "1", &json!({"task": ctx.task_id})),
            |_| json!(true),
        ),
    );
    report.insert("checkpoint".into(), outcome(checkpoint(), |_| json!(true)));
    report.insert(
        "sleep".into(),
        outcome(sleep(Duration::from_millis(1)), |_| json!(true)),
    );

    let kv_round_trip = kv::set("probe", b"value")
        .and_then(|_| kv::get("probe"))
        .and_then(|value| {
            let keys = kv::list_keys("pro", 10)?;
            kv::delete("probe")?;
            let after = kv::get("probe")?;
            Ok(json!({
                "read": value.map(|v| String::from_utf8_lossy(&v).into_owned()),
                "keys": keys,
                "after_delete": after.is_some(),
            }))
        });
    report.insert("kv".into(), outcome(kv_round_trip, |v| v));

    if let Some(url) = input["http_url"].as_str() {
        let mut headers = vec![("accept".to_owned(), "text/plain".to_owned())];
        if let Some(extra) = input["http_headers"].as_object() {
            headers.extend(
                extra
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())),
            );
        }
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        report.insert(
            "http".into(),
            outcome(http::get(url, &headers), |response| {
                json!({
                    "status": response.status,
                    "body": String::from_utf8_lossy(&response.body),
                })
            }),
        );
    }

    if let Some(count) = input["progress_metrics"].as_u64() {
        // More distinct metrics than the host keeps: the report is refused, not stored.
        let mut flood = Progress::new().step("many metrics");
        for i in 0..count {
            flood = flood.metric(&format!("metric_{i}"), i as f64);
        }
        flood.report();
    }

    if input["spawn"].as_bool().unwrap_or(false) {
        // `spawn_chain`: the child is another host_calls that spawns in turn, so a chain
        // grows until the host's depth limit stops it.
        let (task_type, child_input) = if input["spawn_chain"].as_bool().unwrap_or(false) {
            ("host_calls", json!({"spawn": true, "spawn_chain": true}))
        } else {
            ("echo", json!({"child_of": ctx.task_id}))
        };
        let spawned = tasks::spawn(&tasks::SpawnRequest {
            plugin: None,
            task_type: task_type.into(),
            input: child_input.to_string(),
            labels: Vec::new(),
            priority: None,
        });
        report.insert("spawn".into(), outcome(spawned, Value::String));
    }

    report.insert(
        "runners".into(),
        outcome(runners::list(&["linux".to_owned()]), |list| {
            json!(list.len())
        }),
    );

    if let Some(path) = input["read_file"].as_str() {
        report.insert(
            "read_file".into(),
            match std::fs::read_to_string(path) {
                Ok(text) => json!({"ok": text}),
                Err(e) => json!({"error": e.kind().to_string(), "message": e.to_string()}),
            },
        );
    }
    if let Some(path) = input["write_file"].as_str() {
        report.insert(
            "write_file".into(),
            match std::fs::write(path, b"written by testkit") {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"error": e.kind().to_string(), "message": e.to_string()}),
            },
        );
    }
    if let Some(text) = input["stdout"].as_str() {
        println!("{text}");
        eprintln!("stderr: {text}");
    }

    report.insert("env_vars".into(), json!(std::env::vars().count()));
    report.insert("args".into(), json!(std::env::args().count()));
    Value::Object(report)
}

export_plugin!(Testkit);

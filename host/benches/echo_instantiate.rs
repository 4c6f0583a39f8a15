//! Per-task cost of the runtime: a fresh store and instance of the bundled testkit plugin, one
//! `run` of `echo`, and teardown — what every task pays before doing any work.
//!
//! `cargo bench -p taskhost --bench echo_instantiate` prints the median, p90, p99 and mean per
//! run and the runs per second on one thread, with the pooling allocator and without it.
//! Set `ECHO_BENCH_RUNS` to change the number of measured runs (default 20000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use taskhost::bundled::BUNDLED_PLUGINS;
use taskhost::runtime::{
    Grants, Invocation, MemoryServices, RunOutcome, Runtime, RuntimeConfig, TaskControl,
};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn measure(pooling: bool, runs: usize) {
    let runtime = Runtime::new(RuntimeConfig {
        pooling,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let testkit = BUNDLED_PLUGINS
        .iter()
        .find(|(name, _)| *name == "testkit")
        .expect("testkit is bundled")
        .1;
    let plugin = runtime
        .load(testkit, Grants::default())
        .await
        .expect("load");
    let services = Arc::new(MemoryServices::default());
    let invocation = Invocation {
        task_id: "bench".into(),
        task_type: "echo".into(),
        input: r#"{"message":"hello","n":42}"#.into(),
        attempt: 1,
        labels: Vec::new(),
        timeout: None,
    };

    let warmup = runs / 10;
    let mut samples = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        let start = Instant::now();
        let outcome = plugin
            .run(invocation.clone(), services.clone(), TaskControl::new())
            .await;
        let elapsed = start.elapsed();
        assert!(matches!(outcome, RunOutcome::Completed(_)), "{outcome:?}");
        if i >= warmup {
            samples.push(elapsed);
        }
    }
    let total: Duration = samples.iter().sum();
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "echo instantiate+run, {:<9} allocator ({} runs): median {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, mean {:.1} µs, {:.0} runs/s on one thread",
        if runtime.is_pooling() {
            "pooling"
        } else {
            "on-demand"
        },
        runs,
        us(percentile(&samples, 0.5)),
        us(percentile(&samples, 0.9)),
        us(percentile(&samples, 0.99)),
        us(total) / runs as f64,
        runs as f64 / total.as_secs_f64(),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and expects a
    // quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let runs = if full {
        std::env::var("ECHO_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000)
    } else {
        100
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        measure(true, runs).await;
        measure(false, runs).await;
    });
}

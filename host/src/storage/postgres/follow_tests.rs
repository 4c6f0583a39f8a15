//! Following events written by other hosts, against a real private cluster.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::cluster::PgCluster;
use super::tests::{log_batch, settings};
use super::{connect, events, follow};
use crate::model::{Event, TaskStatus};
use crate::storage::conformance;

async fn write(pool: &sqlx::PgPool, transactions: std::ops::Range<usize>) -> usize {
    let task = conformance::task("writer", "p", "alice", TaskStatus::Running, 0);
    let mut written = 0;
    for n in transactions {
        let mut tx = pool.begin().await.expect("begin");
        let batch = log_batch(n);
        events::append(&mut tx, &task, &batch)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
        written += batch.len();
    }
    written
}

/// Receives until `seen` holds `count` events, checking each follows the last by one.
async fn receive(rx: &mut broadcast::Receiver<Event>, seen: &mut Vec<Event>, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} events arrived in 10 s", seen.len()))
            .expect("the follower is running");
        let expected = seen.last().map_or(1, |e| e.seq + 1);
        assert_eq!(event.seq, expected, "a gap or a duplicate");
        seen.push(event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_on_one_host_reach_a_follower_on_another_when_notified() {
    let cluster = PgCluster::start();
    let host_a = connect(&settings(cluster.url())).await.expect("host a");
    let host_b = connect(&settings(cluster.url())).await.expect("host b");
    let out = Arc::new(follow::Delivery::new(0, 1024));
    let mut rx = out.events.subscribe();
    // A poll far beyond the deadline: only notifications can deliver in time.
    let follower = follow::spawn(host_a, Duration::from_secs(600), out);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let written = write(&host_b, 0..30).await;
    let mut seen = Vec::new();
    receive(&mut rx, &mut seen, written).await;
    follower.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_listener_is_cut_off_catches_up_without_gap_or_duplicate() {
    let cluster = PgCluster::start();
    let host_a = connect(&settings(cluster.url())).await.expect("host a");
    let host_b = connect(&settings(cluster.url())).await.expect("host b");
    let out = Arc::new(follow::Delivery::new(0, 1024));
    let mut rx = out.events.subscribe();
    let follower = follow::spawn(host_a, Duration::from_millis(200), out.clone());

    let first = write(&host_b, 0..10).await;
    let mut seen = Vec::new();
    receive(&mut rx, &mut seen, first).await;

    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(&host_b)
    .await
    .expect("terminate the listener");
    assert_eq!(cut, vec![true], "one listening connection was cut");

    let second = write(&host_b, 10..20).await;
    receive(&mut rx, &mut seen, first + second).await;
    let last = seen.last().map_or(0, |e| e.seq);
    let mut delivered = out.delivered.subscribe();
    tokio::time::timeout(Duration::from_secs(5), delivered.wait_for(|d| *d == last))
        .await
        .expect("delivered up to the last event")
        .expect("delivery open");
    assert_eq!(out.visible.load(std::sync::atomic::Ordering::Acquire), last);
    // Nothing more arrives: no event was delivered twice after the reconnect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(
        rx.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
    follower.abort();
}

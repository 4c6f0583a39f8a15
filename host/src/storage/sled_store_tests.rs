//! The sled backend against the storage conformance suite, and its layout migration.

use std::sync::Arc;

use super::*;
use crate::storage::conformance::{self, Backend};

struct Sled {
    dir: tempfile::TempDir,
}

impl Backend for Sled {
    async fn open(&mut self) -> Arc<dyn Storage> {
        Arc::new(SledStorage::open(self.dir.path()).expect("sled opens"))
    }

    async fn reopen(&mut self, store: Arc<dyn Storage>) -> Arc<dyn Storage> {
        drop(store);
        self.open().await
    }
}

fn sled() -> Sled {
    Sled {
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

#[tokio::test]
async fn sled_passes_the_storage_conformance_suite() {
    conformance::run_all(sled).await;
}

#[tokio::test]
async fn a_store_of_an_older_layout_gets_its_indexes_and_counters_rebuilt_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStorage::open(dir.path()).expect("opens");
    for n in 0..5 {
        let mut task = conformance::task(&format!("m{n}"), "p", "alice", TaskStatus::Queued, n);
        task.labels.insert("project".into(), "x".into());
        store.create_task(&task, &[]).await.expect("created");
    }
    let query = TaskQuery {
        labels: vec![("project".into(), "x".into())],
        limit: 10,
        ..TaskQuery::default()
    };
    let before = store.list_tasks(&query).await.expect("listing");
    let counts = store.status_counts().await.expect("counts");
    // What a store written before the counters looked like: no derived keys, no version.
    for derived in sled_index::DERIVED_PREFIXES
        .iter()
        .chain([&b"m\0"[..]].iter())
    {
        for k in store.main.scan_prefix(derived).keys() {
            store.main.remove(k.expect("key")).expect("removed");
        }
    }
    store.log.committed(Vec::new());
    store.sync().await.expect("durable");
    assert_eq!(store.list_tasks(&query).await.expect("listing").1, 0);
    drop(store);

    let store = SledStorage::open(dir.path()).expect("reopens");
    assert_eq!(store.list_tasks(&query).await.expect("listing"), before);
    assert_eq!(store.status_counts().await.expect("counts"), counts);
    assert_eq!(before.1, 5);
}

#[tokio::test]
async fn a_store_reopened_in_place_right_after_its_drop_opens_every_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    for n in 0..20 {
        let store = SledStorage::open(dir.path()).expect("opens after the previous drop");
        let task = conformance::task(&format!("r{n}"), "p", "alice", TaskStatus::Queued, n);
        store.create_task(&task, &[]).await.expect("created");
        drop(store);
    }
    let store = SledStorage::open(dir.path()).expect("opens");
    let counts = store.status_counts().await.expect("counts");
    assert_eq!(counts["p"].get(&TaskStatus::Queued), Some(&20));
}

#[test]
fn a_data_dir_held_by_an_open_store_is_refused_as_unavailable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _held = SledStorage::open(dir.path()).expect("opens");
    match SledStorage::open(dir.path()) {
        Err(StorageError::Unavailable(message)) => assert!(message.contains("in use"), "{message}"),
        Err(other) => panic!("expected unavailable, got {other:?}"),
        Ok(_) => panic!("a second store opened on a held data dir"),
    }
}

//! The plugin part of the storage conformance suite ([`super::conformance`] runs it on every
//! backend): generations, the write guard under concurrency, unloads, and what a restart keeps.

use std::sync::Arc;

use super::Storage;
use super::conformance::Backend;
use super::plugin_store::{PluginState, PutOutcome};

/// Runs every plugin check, each on a fresh store.
pub(crate) async fn run_all<B: Backend>(new_backend: &mut impl FnMut() -> B) {
    changes_get_rising_generations_and_read_back_whole(&mut new_backend()).await;
    a_write_that_saw_an_older_generation_is_refused(&mut new_backend()).await;
    of_concurrent_writers_expecting_one_generation_exactly_one_wins(&mut new_backend()).await;
    plugins_and_unloads_survive_a_restart(&mut new_backend()).await;
}

fn installed(bytes: &[u8], grants: &str) -> PluginState {
    PluginState::Installed {
        component: bytes.to_vec(),
        grants: grants.to_owned(),
    }
}

async fn stored(store: &dyn Storage, name: &str, state: PluginState, expected: Option<u64>) -> u64 {
    let digest = match &state {
        PluginState::Installed { component, .. } => format!("digest-{}", component.len()),
        PluginState::Unloaded => String::new(),
    };
    match store
        .plugins()
        .put(name, &digest, state, "host-a", expected)
        .await
        .expect("put")
    {
        PutOutcome::Stored(generation) => generation,
        other => panic!("{name} not stored: {other:?}"),
    }
}

/// Every stored name with its generation and whether it is installed.
async fn summary(store: &dyn Storage) -> Vec<(String, u64, bool)> {
    let heads = store.plugins().heads().await.expect("heads");
    heads
        .into_iter()
        .map(|h| (h.name, h.generation, h.installed))
        .collect()
}

async fn changes_get_rising_generations_and_read_back_whole(backend: &mut impl Backend) {
    let store = backend.open().await;
    assert!(store.plugins().heads().await.expect("heads").is_empty());
    assert_eq!(store.plugins().get("echo").await.expect("get"), None);

    // A component with every byte value, as a real one has.
    let component: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let first = stored(
        store.as_ref(),
        "echo",
        installed(&component, "[http]\n"),
        None,
    )
    .await;
    let other = stored(store.as_ref(), "alpha", installed(b"a", ""), None).await;
    let second = stored(
        store.as_ref(),
        "echo",
        installed(b"v2", "x = 1\n"),
        Some(first),
    )
    .await;
    assert!(first < other && other < second, "{first} {other} {second}");

    let record = store
        .plugins()
        .get("alpha")
        .await
        .expect("get")
        .expect("alpha");
    assert_eq!(record.state, installed(b"a", ""));
    assert_eq!(record.changed_by, "host-a");
    let record = store
        .plugins()
        .get("echo")
        .await
        .expect("get")
        .expect("echo");
    assert_eq!(record.generation, second);
    assert_eq!(record.digest, "digest-2");
    assert_eq!(record.state, installed(b"v2", "x = 1\n"));

    let third = stored(store.as_ref(), "echo", PluginState::Unloaded, Some(second)).await;
    let summary = summary(store.as_ref()).await;
    assert_eq!(
        summary,
        [("alpha".into(), other, true), ("echo".into(), third, false)]
    );
    let record = store
        .plugins()
        .get("echo")
        .await
        .expect("get")
        .expect("echo");
    assert_eq!(record.state, PluginState::Unloaded);

    // An unloaded name may be installed again, from the unload's generation.
    let fourth = stored(store.as_ref(), "echo", installed(b"v3", ""), Some(third)).await;
    assert!(fourth > third);
}

async fn a_write_that_saw_an_older_generation_is_refused(backend: &mut impl Backend) {
    let store = backend.open().await;
    let plugins = store.plugins();
    let first = stored(store.as_ref(), "echo", installed(b"v1", ""), None).await;
    // Installing a name that has a record, as if none were there.
    assert_eq!(
        plugins
            .put("echo", "d", installed(b"late", ""), "host-b", None)
            .await
            .expect("put"),
        PutOutcome::Superseded(Some(first))
    );
    let second = stored(store.as_ref(), "echo", installed(b"v2", ""), Some(first)).await;
    assert_eq!(
        plugins
            .put("echo", "d", PluginState::Unloaded, "host-b", Some(first))
            .await
            .expect("put"),
        PutOutcome::Superseded(Some(second))
    );
    // Replacing a name nobody stored.
    assert_eq!(
        plugins
            .put("ghost", "d", installed(b"g", ""), "host-b", Some(7))
            .await
            .expect("put"),
        PutOutcome::Superseded(None)
    );
    let record = plugins.get("echo").await.expect("get").expect("echo");
    assert_eq!(
        (record.generation, record.state),
        (second, installed(b"v2", ""))
    );
    assert_eq!(plugins.get("ghost").await.expect("get"), None);
}

async fn of_concurrent_writers_expecting_one_generation_exactly_one_wins(
    backend: &mut impl Backend,
) {
    let store = backend.open().await;
    let first = stored(store.as_ref(), "echo", installed(b"v1", ""), None).await;
    let writers = (0..8u8).map(|i| {
        let store: Arc<dyn Storage> = store.clone();
        tokio::spawn(async move {
            let component = vec![i; 3];
            store
                .plugins()
                .put("echo", "d", installed(&component, ""), "host", Some(first))
                .await
                .expect("put")
        })
    });
    let mut winners = Vec::new();
    for (i, writer) in writers.enumerate() {
        if let PutOutcome::Stored(generation) = writer.await.expect("writer") {
            winners.push((i, generation));
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let (winner, generation) = winners[0];
    let record = store
        .plugins()
        .get("echo")
        .await
        .expect("get")
        .expect("echo");
    assert_eq!(record.generation, generation);
    let byte = u8::try_from(winner).expect("small");
    assert_eq!(record.state, installed(&[byte; 3], ""));
}

async fn plugins_and_unloads_survive_a_restart(backend: &mut impl Backend) {
    let store = backend.open().await;
    let echo = stored(store.as_ref(), "echo", installed(b"v1", "a = 1\n"), None).await;
    let gone = stored(store.as_ref(), "gitlab", PluginState::Unloaded, None).await;
    store.sync().await.expect("durable");

    let store = backend.reopen(store).await;
    let summary = summary(store.as_ref()).await;
    assert_eq!(
        summary,
        [("echo".into(), echo, true), ("gitlab".into(), gone, false)]
    );
    let after = stored(store.as_ref(), "other", installed(b"o", ""), None).await;
    assert!(after > gone, "generations continue above: {after} > {gone}");
    let record = store
        .plugins()
        .get("echo")
        .await
        .expect("get")
        .expect("echo");
    assert_eq!(record.state, installed(b"v1", "a = 1\n"));
}

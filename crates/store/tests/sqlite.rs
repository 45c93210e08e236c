//! The store contract on SQLite: a fresh database file in a temp dir per test.

use std::future::Future;
use std::path::Path;

use waymark_store::{SqliteStore, Store};

mod contract;

use contract::{Fixture, identify, t0, track};

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open_path(path)
        .await
        .expect("a database file in a temp dir opens")
}

/// Runs a contract test on a new database file.
async fn on_sqlite<F, Fut>(test: F)
where
    F: FnOnce(Fixture) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("waymark.db")).await;
    test(Fixture::new(store.shared())).await;
}

contract::suite!(on_sqlite);

#[tokio::test]
async fn state_survives_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("waymark.db");
    let store = open(&path).await;
    let f = Fixture::new(store.clone().shared());
    identify(&f, "ann").await;
    track(&f, "ann", "signed_up", t0()).await;
    let before = f.store.load_customer("ann").await.unwrap();
    store.close().await;

    let after = open(&path).await.load_customer("ann").await.unwrap();
    assert_eq!(after.revision, before.revision);
    assert_eq!(after.state.enrollments, before.state.enrollments);
    assert_eq!(after.state.profile.traits, before.state.profile.traits);
    assert_eq!(
        after.state.profile.history.events(),
        before.state.profile.history.events()
    );
}

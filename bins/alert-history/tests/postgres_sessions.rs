//! What alert-history's PostgreSQL sessions ask of the server.

mod support;

use alert_history::Store;
use alert_history::store::BACKEND_FLUSH_AFTER;

/// Its sessions write back evicted pages every 256 kB, unless
/// `DATABASE_URL`'s `options` say otherwise; SQLite has no such setting.
#[tokio::test]
async fn sessions_set_backend_flush_after_unless_the_url_does() {
    let db = support::postgres().await;
    let store = Store::connect(&db.url, 2).await.unwrap();
    assert_eq!(BACKEND_FLUSH_AFTER, "256kB");
    assert_eq!(
        store
            .postgres_setting("backend_flush_after")
            .await
            .unwrap()
            .as_deref(),
        Some(BACKEND_FLUSH_AFTER)
    );
    store.close().await;

    // The schema's URL already has `options=-c search_path=...`.
    let url = format!("{}%20-c%20backend_flush_after%3D0", db.url);
    let store = Store::connect(&url, 2).await.unwrap();
    assert_eq!(
        store
            .postgres_setting("backend_flush_after")
            .await
            .unwrap()
            .as_deref(),
        Some("0")
    );
    store.close().await;

    let sqlite = support::sqlite().await;
    let store = Store::connect(&sqlite.url, 2).await.unwrap();
    assert_eq!(
        store.postgres_setting("backend_flush_after").await.unwrap(),
        None
    );
    store.close().await;
}

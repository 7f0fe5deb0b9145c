//! `RedisPrefix` against the real local Redis.
#![cfg(feature = "redis")]

use keel_testkit::services::RedisPrefix;
use redis::AsyncCommands;

#[tokio::test]
async fn keys_under_the_prefix_are_listed_and_deleted_on_drop() -> anyhow::Result<()> {
    let a = RedisPrefix::new().await;
    let b = RedisPrefix::new().await;
    assert_ne!(a.prefix(), b.prefix());
    assert!(a.prefix().starts_with("keel-test:") && a.prefix().ends_with(':'));

    let mut conn = a.connection().await?;
    for i in 0..1_200 {
        let _: () = conn.set(a.key(&format!("k{i:04}")), i).await?;
    }
    let _: () = conn.set(b.key("other"), 1).await?;
    let keys = a.keys().await?;
    assert_eq!(keys.len(), 1_200);
    assert_eq!(keys[0], a.key("k0000"));
    assert_eq!(b.keys().await?, vec![b.key("other")]);

    let probe = a.key("k0000");
    drop(a);
    let exists: bool = conn.exists(&probe).await?;
    assert!(!exists, "keys are deleted when the prefix is dropped");
    let other: i64 = conn.get(b.key("other")).await?;
    assert_eq!(other, 1, "another test's keys are untouched");
    assert_eq!(b.cleanup().await?, 1);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_server_says_how_to_start_it() {
    let err = RedisPrefix::try_with_url("redis://127.0.0.1:1")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("Redis is unreachable at redis://127.0.0.1:1"),
        "{message}"
    );
    assert!(
        message.contains("redis-server --daemonize yes"),
        "{message}"
    );
    assert!(message.contains("KEEL_TEST_REDIS_URL"), "{message}");
}

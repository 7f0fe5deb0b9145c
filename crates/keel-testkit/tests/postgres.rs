//! `PgSchema` against the real local PostgreSQL.
#![cfg(feature = "postgres")]

use std::str::FromStr;

use keel_testkit::services::{PgSchema, postgres_url};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

async fn schema_exists(name: &str) -> bool {
    let mut conn = PgConnectOptions::from_str(&postgres_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let row =
        sqlx::query("SELECT count(*) AS n FROM information_schema.schemata WHERE schema_name = $1")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let _ = conn.close().await;
    row.get::<i64, _>("n") == 1
}

#[tokio::test]
async fn each_schema_is_private_and_dropped_on_drop() -> anyhow::Result<()> {
    let a = PgSchema::new().await;
    let b = PgSchema::new().await;
    assert_ne!(a.name(), b.name());
    assert!(a.name().starts_with("keel_test_"));

    // Unqualified names resolve in the test's schema, through the pool...
    sqlx::query("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(a.pool())
        .await?;
    sqlx::query("INSERT INTO items VALUES (1), (2)")
        .execute(a.pool())
        .await?;
    sqlx::query("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(b.pool())
        .await?;
    let in_b: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(b.pool())
        .await?;
    assert_eq!(in_b, 0);

    // ...and through the URL handed to code under test.
    let mut conn = sqlx::PgConnection::connect(a.url()).await?;
    let in_a: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(in_a, 2);
    let path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(path, a.name());
    conn.close().await?;

    let (name_a, name_b) = (a.name().to_owned(), b.name().to_owned());
    assert!(schema_exists(&name_a).await);
    drop(a);
    assert!(!schema_exists(&name_a).await, "dropped with its table");
    b.cleanup().await?;
    assert!(!schema_exists(&name_b).await);
    Ok(())
}

#[tokio::test]
async fn connect_options_use_the_schema() -> anyhow::Result<()> {
    let schema = PgSchema::new().await;
    let mut conn = schema.connect_options().connect().await?;
    let current: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(current, schema.name());
    conn.close().await?;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_server_says_how_to_start_it() {
    let err = PgSchema::try_with_url("postgres://postgres@127.0.0.1:1/test")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("PostgreSQL is unreachable at postgres://postgres@127.0.0.1:1/test"),
        "{message}"
    );
    assert!(message.contains("pg_ctlcluster"), "{message}");
    assert!(message.contains("KEEL_TEST_POSTGRES_URL"), "{message}");
}

//! A 2xx means stored: a full disk, a deleted database file and a dropped
//! schema are answered 503 and turn readiness red, and the service
//! recovers without a restart once the cause is gone.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use serde_json::{Value, json};
use support::{TestApp, TestDb, firing, payload};

/// One delivery of `n` alerts with `size`-byte annotations, fingerprints
/// `{tag}-{i}`.
fn big_delivery(tag: &str, n: usize, size: usize) -> Value {
    let alerts = (0..n)
        .map(|i| {
            let mut a = firing("Full", &format!("{tag}-{i:04}"), 0, &[]);
            a["annotations"]["description"] = json!("x".repeat(size));
            a
        })
        .collect();
    payload(alerts)
}

async fn stored(t: &TestApp, tag: &str, n: usize) -> usize {
    let mut found = 0;
    for i in 0..n {
        let (status, rows) = t.get(&format!("/history?fingerprint={tag}-{i:04}")).await;
        assert_eq!(status, StatusCode::OK, "{rows}");
        found += rows.as_array().map_or(0, Vec::len);
    }
    found
}

/// A 2 MB tmpfs mounted for one test, unmounted at the end.
struct Tmpfs {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Tmpfs {
    /// `None` when mounting is not permitted (not root): the test is skipped.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Tmpfs {
            dir: Some(dir),
            path,
        })
    }

    /// Fills the file system, then frees `keep` bytes; returns the filler.
    fn fill(&self, keep: u64) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![1u8; 16 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(keep)).unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
        drop(self.dir.take());
    }
}

async fn readiness(t: &TestApp) -> (StatusCode, Value) {
    t.get("/readyz").await
}

/// The scenario on a real full file system: every 2xx is stored,
/// nothing answered 5xx is, readiness is red while writes fail, and the
/// service takes deliveries again once space is freed, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_a_full_filesystem_acknowledges_only_what_it_stored() {
    let Some(fs) = Tmpfs::mount("2m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let url = format!("sqlite://{}", fs.path.join("h.db").display());
    let t = TestApp::new(TestDb::sqlite_at(url, tempfile::tempdir().unwrap())).await;
    assert_eq!(readiness(&t).await.0, StatusCode::OK);
    let filler = fs.fill(96 * 1024);

    let (mut acked, mut refused) = (BTreeSet::new(), BTreeSet::new());
    for d in 0..30 {
        let tag = format!("d{d:02}");
        let (status, body) = t
            .post("/webhook", big_delivery(&tag, 10, 2000).to_string())
            .await;
        match status {
            StatusCode::OK => assert!(acked.insert(tag)),
            StatusCode::SERVICE_UNAVAILABLE => assert!(refused.insert(tag)),
            other => panic!("{other}: {body}"),
        }
    }
    assert!(!refused.is_empty(), "the disk never filled up");
    let (status, body) = readiness(&t).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body["dependencies"]["database"]["status"], "error",
        "{body}"
    );

    std::fs::remove_file(&filler).unwrap();
    let (status, body) = t
        .post("/webhook", big_delivery("after", 10, 2000).to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    acked.insert("after".to_owned());
    let (status, body) = readiness(&t).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "ready again once a write succeeded: {body}"
    );

    for tag in &acked {
        assert_eq!(stored(&t, tag, 10).await, 10, "{tag} was answered 200");
    }
    for tag in &refused {
        assert_eq!(stored(&t, tag, 10).await, 0, "{tag} was answered 503");
    }
    // And what was acknowledged survives a restart.
    t.store().close().await;
    let again = TestApp::new(TestDb::sqlite_at(
        t.db.url.clone(),
        tempfile::tempdir().unwrap(),
    ))
    .await;
    for tag in &acked {
        assert_eq!(stored(&again, tag, 10).await, 10, "{tag} lost at restart");
    }
    again.store().close().await;
}

fn db_path(url: &str) -> &Path {
    Path::new(url.strip_prefix("sqlite://").unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_database_file_removed_is_503_and_not_ready() {
    let t = TestApp::new(support::sqlite().await).await;
    assert_eq!(
        t.deliver(&payload(vec![firing("A", "f-1", 0, &[])])).await,
        1
    );
    std::fs::remove_file(db_path(&t.db.url)).unwrap();
    let (status, body) = t
        .post(
            "/webhook",
            payload(vec![firing("A", "f-2", 0, &[])]).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, body) = readiness(&t).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let error = body["dependencies"]["database"]["error"].as_str().unwrap();
    assert!(error.contains("removed or replaced"), "{error}");
    let (status, _) = t.get("/health/database").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dropped_schema_is_503_and_not_ready() {
    let t = TestApp::new(support::postgres().await).await;
    assert_eq!(
        t.deliver(&payload(vec![firing("A", "f-1", 0, &[])])).await,
        1
    );
    let schema = t.db.pg_schema().unwrap();
    sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", schema.name()))
        .execute(schema.pool())
        .await
        .unwrap();
    let (status, body) = t
        .post(
            "/webhook",
            payload(vec![firing("A", "f-2", 0, &[])]).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, body) = readiness(&t).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let error = body["dependencies"]["database"]["error"].as_str().unwrap();
    assert!(error.contains("schema missing"), "{error}");
}

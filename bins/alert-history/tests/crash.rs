//! Crash consistency of the SQLite store: the real binary is killed with
//! SIGKILL at seeded random moments while senders post deliveries, then
//! started again on the same file, many times. Every delivery that was
//! answered 2xx must be stored, whole, and the file must stay intact.
//!
//! `CRASH_ROUNDS` sets the number of kills (default 6, a few seconds; the
//! long version in `docs/RELIABILITY.md` runs 200).

mod support;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use keel_core::Rng;
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::SqliteConnectOptions;
use support::{firing, payload};
use tokio::sync::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_alert-history");
const ALERTS_PER_DELIVERY: usize = 5;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(url: &str, port: u16, synchronous: &str) -> tokio::process::Child {
    let child = tokio::process::Command::new(BIN)
        .env("DATABASE_URL", url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("SQLITE_SYNCHRONOUS", synchronous)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("alert-history never became ready on {url}");
}

/// The fingerprints of one delivery.
fn fingerprints(delivery: u64) -> Vec<String> {
    (0..ALERTS_PER_DELIVERY)
        .map(|i| format!("crash-{delivery:06}-{i}"))
        .collect()
}

/// Posts deliveries with fresh fingerprints until the service stops
/// answering; records the ones acknowledged with a 2xx.
async fn sender(port: u16, next: Arc<Mutex<u64>>, acked: Arc<Mutex<BTreeSet<String>>>) {
    let client = reqwest::Client::new();
    loop {
        let n = {
            let mut next = next.lock().await;
            *next += 1;
            *next
        };
        let alerts = fingerprints(n)
            .iter()
            .map(|fp| {
                let mut a = firing("CrashLoop", fp, 1_700_000_000 + n as i64, &[("n", "x")]);
                a["annotations"]["description"] = Value::String("y".repeat(200));
                a
            })
            .collect();
        let sent = client
            .post(format!("http://127.0.0.1:{port}/webhook"))
            .json(&payload(alerts))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => acked.lock().await.extend(fingerprints(n)),
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

async fn crash_rounds(synchronous: &str) {
    let rounds: u64 = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let url = format!("sqlite://{}", path.display());
    let rng = Rng::with_seed(0x5eed_c4a5);
    let next = Arc::new(Mutex::new(0u64));
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    for _ in 0..rounds {
        let port = free_port();
        let mut child = start(&url, port, synchronous).await;
        let senders: Vec<_> = (0..4)
            .map(|_| tokio::spawn(sender(port, next.clone(), acked.clone())))
            .collect();
        // Killed anywhere between a few deliveries in and a few hundred.
        let after = rng.duration_between(Duration::from_millis(20), Duration::from_millis(400));
        tokio::time::sleep(after).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        for s in senders {
            s.await.unwrap();
        }
    }
    let acked = acked.lock().await.clone();
    assert!(
        acked.len() >= ALERTS_PER_DELIVERY,
        "some deliveries were acknowledged"
    );

    // The file opens, passes SQLite's own check, and holds every
    // acknowledged alert, each one whole.
    let options = SqliteConnectOptions::new().filename(&path);
    let mut db = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    use sqlx::Connection;
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    let rows = sqlx::query("SELECT fingerprint, labels, annotations, raw FROM alert_events")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let mut stored = BTreeSet::new();
    for row in rows {
        let fp: String = row.get(0);
        for column in 1..4 {
            let text: String = row.get(column);
            let parsed: Result<Value, _> = serde_json::from_str(&text);
            assert!(parsed.is_ok(), "{fp}: column {column} is torn: {text}");
        }
        stored.insert(fp);
    }
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged alerts lost after {rounds} kills: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // A delivery is one transaction: its alerts are all there or none.
    for delivery in 1..=*next.lock().await {
        let present = fingerprints(delivery)
            .iter()
            .filter(|fp| stored.contains(*fp))
            .count();
        assert!(
            present == 0 || present == ALERTS_PER_DELIVERY,
            "delivery {delivery} is half-written ({present} of {ALERTS_PER_DELIVERY})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_no_acknowledged_alert_full() {
    crash_rounds("full").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_no_acknowledged_alert_normal() {
    crash_rounds("normal").await;
}

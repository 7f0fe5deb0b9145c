//! Two service instances on one PostgreSQL receive the same webhooks
//! concurrently: every event is stored once, and `saved` across both
//! instances adds up to the number of distinct events.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use alert_history::{Config, Service};
use serde_json::Value;
use support::{firing, payload, resolved};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_store_each_event_once() {
    let db = support::postgres().await;
    let config = Config::for_database(&db.url);
    // Both start (and migrate) at the same time.
    let (a, b) = tokio::join!(Service::start(&config), Service::start(&config));
    let (a, b) = (a.unwrap(), b.unwrap());
    let bases = [
        format!("http://{}", a.local_addr()),
        format!("http://{}", b.local_addr()),
    ];
    let client = reqwest::Client::new();

    // 40 deliveries of 10 alerts over 25 fingerprints: overlapping keys,
    // firing and resolved, in varying order.
    let mut payloads = Vec::new();
    let mut keys = HashSet::new();
    // Deliveries of each event (a repeat within one payload is one).
    let mut deliveries = 0usize;
    for d in 0..40i64 {
        let mut alerts = Vec::new();
        let mut in_payload = HashSet::new();
        for k in 0..10i64 {
            let n = (d * 7 + k * 3) % 25;
            let fp = format!("c0de{n:012}");
            let start = n;
            let key = if (d + k) % 4 == 0 {
                alerts.push(resolved("Race", &fp, start, start + 2, &[]));
                (fp, "resolved")
            } else {
                alerts.push(firing("Race", &fp, start, &[]));
                (fp, "firing")
            };
            in_payload.insert(key.clone());
            keys.insert(key);
        }
        deliveries += in_payload.len();
        payloads.push(payload(alerts).to_string());
    }

    let mut tasks = Vec::new();
    for body in &payloads {
        for base in &bases {
            let client = client.clone();
            let url = format!("{base}/webhook");
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                let response = client.post(url).body(body).send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.json::<Value>().await.unwrap()["saved"]
                    .as_u64()
                    .unwrap()
            }));
        }
    }
    let mut saved = 0;
    for task in tasks {
        saved += task.await.unwrap();
    }
    assert_eq!(
        saved,
        keys.len() as u64,
        "each event saved exactly once across instances"
    );
    assert_eq!(
        a.state().store().count_events().await.unwrap(),
        keys.len() as i64
    );
    let rows: Vec<Value> = client
        .get(format!("{}/history?limit=1000", bases[1]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rows.len(), keys.len());
    let total: i64 = rows
        .iter()
        .map(|r| r["occurrences"].as_i64().unwrap())
        .sum();
    // Every delivery of an event to either instance was counted once.
    assert_eq!(total as usize, deliveries * 2);

    a.stop(Duration::from_secs(5)).await;
    b.stop(Duration::from_secs(5)).await;
}

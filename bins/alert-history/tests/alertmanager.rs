//! A real Alertmanager delivers to the service (in-process, loopback port):
//! alerts posted to Alertmanager appear in `/history`, so do their
//! resolutions, and redeliveries add no duplicates. Run on both backends.

mod support;

use std::time::Duration;

use alert_history::{Config, Service};
use keel_testkit::Alertmanager;
use serde_json::{Value, json};
use support::TestDb;

on_both_backends!(alertmanager_delivers_history);

const TOKEN: &str = "am-token";

async fn history(client: &reqwest::Client, base: &str, query: &str) -> Vec<Value> {
    client
        .get(format!("{base}/history?{query}"))
        .send()
        .await
        .unwrap()
        .json::<Vec<Value>>()
        .await
        .unwrap()
}

/// Polls `check` every 200 ms for up to `secs` seconds.
async fn eventually<F, Fut>(what: &str, secs: u64, mut check: F) -> Vec<Value>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = (bool, Vec<Value>)>,
{
    let mut last = Vec::new();
    for _ in 0..secs * 5 {
        let (ok, rows) = check().await;
        if ok {
            return rows;
        }
        last = rows;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}; last history: {last:#?}");
}

async fn alertmanager_delivers_history(db: TestDb) {
    let mut config = Config::for_database(&db.url);
    config.webhook_token = Some(TOKEN.to_owned());
    let service = Service::start(&config).await.unwrap();
    let base = format!("http://{}", service.local_addr());
    let am = Alertmanager::builder()
        .config_yaml(format!(
            "\
route:
  receiver: 'history'
  group_by: ['alertname']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 2s
receivers:
  - name: 'history'
    webhook_configs:
      - url: '{base}/webhook'
        send_resolved: true
        http_config:
          authorization:
            credentials: '{TOKEN}'
"
        ))
        .start()
        .await;
    let client = reqwest::Client::new();
    let starts = chrono::Utc::now() - chrono::Duration::seconds(30);
    let starts_at = starts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let alert = |instance: &str, ends: Option<String>| {
        let mut a = json!({
            "labels": { "alertname": "AmDiskFull", "instance": instance, "severity": "critical", "namespace": "prod" },
            "annotations": { "summary": format!("disk full on {instance}") },
            "startsAt": starts_at,
            "generatorURL": "http://prometheus.local/graph",
        });
        if let Some(ends) = ends {
            a["endsAt"] = json!(ends);
        }
        a
    };
    am.post_alerts(&json!([alert("n1", None), alert("n2", None)]))
        .await
        .unwrap();

    // Both alerts arrive, keyed by Alertmanager's fingerprints.
    let rows = eventually("two firing events", 20, || async {
        let rows = history(&client, &base, "alertname=AmDiskFull").await;
        (rows.len() == 2, rows)
    })
    .await;
    let am_alerts = am.alerts().await.unwrap();
    let mut am_fps: Vec<&str> = am_alerts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["fingerprint"].as_str().unwrap())
        .collect();
    let mut ours: Vec<&str> = rows
        .iter()
        .map(|e| e["fingerprint"].as_str().unwrap())
        .collect();
    am_fps.sort_unstable();
    ours.sort_unstable();
    assert_eq!(ours, am_fps);
    assert!(
        rows.iter()
            .all(|e| e["status"] == "firing" && e["namespace"] == "prod")
    );

    // repeat_interval 2s: Alertmanager redelivers the group; still two rows.
    let rows = eventually("redeliveries", 20, || async {
        let rows = history(&client, &base, "alertname=AmDiskFull").await;
        let redelivered = rows.iter().all(|e| e["occurrences"].as_i64().unwrap() >= 2);
        (rows.len() == 2 && redelivered, rows)
    })
    .await;
    assert_eq!(rows.len(), 2, "no duplicates after redeliveries: {rows:#?}");

    // Resolve n1: same labels, endsAt in the past.
    let ended = (chrono::Utc::now() - chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    am.post_alerts(&json!([alert("n1", Some(ended))]))
        .await
        .unwrap();
    let rows = eventually("the resolution", 20, || async {
        let rows = history(&client, &base, "alertname=AmDiskFull&status=resolved").await;
        (rows.len() == 1, rows)
    })
    .await;
    assert_eq!(rows[0]["labels"]["instance"], "n1");
    assert_eq!(rows[0]["startsAt"], starts_at);

    // Let a few more group intervals pass: still exactly one event per
    // (fingerprint, status, startsAt, endsAt), and n2 still firing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = history(&client, &base, "alertname=AmDiskFull").await;
    assert_eq!(all.len(), 3, "{all:#?}");
    let report: Value = client
        .get(format!("{base}/report?alertname=AmDiskFull"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["summary"]["firing_now"], 1);
    assert_eq!(report["summary"]["resolved_now"], 1);
    assert_eq!(report["unique_alerts"], 2);

    drop(am);
    let drained = service.stop(Duration::from_secs(10)).await;
    assert!(drained.is_clean(), "{drained:?}");
}

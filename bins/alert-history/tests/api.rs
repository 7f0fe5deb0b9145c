//! Router-level tests (`oneshot`, no socket) of every route and status code,
//! each scenario run on SQLite and on PostgreSQL.

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use support::{TestApp, TestDb, at, firing, payload, resolved};

on_both_backends!(
    redelivery_is_idempotent,
    firing_and_resolved_are_two_events,
    duplicates_within_one_payload_count_once,
    malformed_json_is_400,
    wrong_shape_is_422_and_nothing_is_written,
    too_large_is_413,
    webhook_token_is_required_when_set,
    unknown_fields_are_kept,
    raw_is_the_alert_as_delivered,
    history_filters,
    history_limits,
    keyset_pagination_follows_link_headers,
    offset_pagination_matches_the_predecessor,
    report_counts_and_flaps,
    timeline_of_one_alert,
    state_never_moves_back,
    health_and_readiness,
    metrics_use_route_templates,
    retention_deletes_old_events_in_batches,
    dashboard_api_matches_report,
    dashboard_page_is_self_contained,
    concurrent_deliveries_store_each_event_once,
    an_alert_without_alertname_does_not_lose_its_group,
    unstorable_values_are_422_naming_the_field,
    everything_accepted_reads_back,
    until_a_date_includes_that_day_and_milliseconds_are_understood,
    utf8_label_names_filter_history,
    report_summary_honours_since_and_until,
);

fn rows(v: &Value) -> &Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}"))
}

async fn redelivery_is_idempotent(db: TestDb) {
    let t = TestApp::new(db).await;
    let p = payload(vec![
        firing(
            "DiskFull",
            "aaaa000000000001",
            0,
            &[("severity", "critical")],
        ),
        firing(
            "DiskFull",
            "aaaa000000000002",
            1,
            &[("severity", "critical")],
        ),
    ]);
    assert_eq!(t.deliver(&p).await, 2);
    for _ in 0..3 {
        let (status, body) = t.post("/webhook", p.to_string()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({ "result": "ok", "saved": 0, "processed_alerts": 2 })
        );
    }
    let (_, history) = t.get("/history").await;
    let history = rows(&history);
    assert_eq!(history.len(), 2);
    assert!(history.iter().all(|e| e["occurrences"] == 4), "{history:?}");
    assert_eq!(t.store().count_events().await.unwrap(), 2);
}

async fn firing_and_resolved_are_two_events(db: TestDb) {
    let t = TestApp::new(db).await;
    let fp = "bbbb000000000001";
    assert_eq!(
        t.deliver(&payload(vec![firing("Cpu", fp, 0, &[])])).await,
        1
    );
    assert_eq!(
        t.deliver(&payload(vec![resolved("Cpu", fp, 0, 5, &[])]))
            .await,
        1
    );
    assert_eq!(
        t.deliver(&payload(vec![resolved("Cpu", fp, 0, 5, &[])]))
            .await,
        0
    );
    let (_, history) = t.get(&format!("/history?fingerprint={fp}")).await;
    let history = rows(&history);
    assert_eq!(history.len(), 2);
    // Newest first: the resolution (event time = endsAt) comes first.
    assert_eq!(history[0]["status"], "resolved");
    assert_eq!(history[0]["endsAt"], at(5));
    assert_eq!(history[1]["status"], "firing");
    assert_eq!(history[1]["endsAt"], "0001-01-01T00:00:00Z");
    for key in [
        "alertname",
        "fingerprint",
        "status",
        "labels",
        "startsAt",
        "endsAt",
        "updatedAt",
        "namespace",
    ] {
        assert!(
            history[0].get(key).is_some(),
            "missing predecessor field {key}"
        );
    }
    for key in ["annotations", "generatorURL", "occurrences", "lastSeen"] {
        assert!(history[0].get(key).is_some(), "missing Keel field {key}");
    }
}

async fn duplicates_within_one_payload_count_once(db: TestDb) {
    let t = TestApp::new(db).await;
    let a = firing("Dup", "cccc000000000001", 0, &[]);
    let (status, body) = t
        .post(
            "/webhook",
            payload(vec![a.clone(), a.clone(), a]).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["saved"], 1);
    assert_eq!(body["processed_alerts"], 3);
}

async fn malformed_json_is_400(db: TestDb) {
    let t = TestApp::new(db).await;
    let (status, body) = t.post("/webhook", "{\"alerts\": [").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("malformed JSON"),
        "{body}"
    );
    let (status, _) = t.post("/webhook/", "not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn wrong_shape_is_422_and_nothing_is_written(db: TestDb) {
    let t = TestApp::new(db).await;
    let mut bad = firing("Second", "dddd000000000002", 0, &[]);
    bad["startsAt"] = json!("yesterday");
    let p = payload(vec![firing("First", "dddd000000000001", 0, &[]), bad]);
    let (status, body) = t.post("/webhook", p.to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["field"], "alerts[1].startsAt", "{body}");
    assert_eq!(
        body["detail"][0]["loc"],
        json!(["body", "alerts[1]", "startsAt"])
    );
    let (status, body) = t.post("/webhook", r#"{"receiver":"x"}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["field"], "alerts");
    assert_eq!(
        t.store().count_events().await.unwrap(),
        0,
        "nothing half-written"
    );
    let (_, metrics) = t.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("alert_history_webhook_errors_total 2"),
        "{metrics}"
    );
}

async fn too_large_is_413(db: TestDb) {
    let t = TestApp::with_config(db, |c| c.max_body_bytes = 2048).await;
    let alerts = (0..40)
        .map(|i| {
            firing(
                "Big",
                &format!("eeee{i:012}"),
                i,
                &[("pad", "xxxxxxxxxxxxxxxxxxxxxxxx")],
            )
        })
        .collect();
    let body = payload(alerts).to_string();
    assert!(body.len() > 2048);
    let (status, reply) = t.post("/webhook", body.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{reply}");
    // Without Content-Length (chunked): still 413.
    let stream = futures::stream::iter(
        body.into_bytes()
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let (status, _, _) = t
        .request(
            Request::post("/webhook")
                .body(Body::from_stream(stream))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(t.store().count_events().await.unwrap(), 0);
}

async fn webhook_token_is_required_when_set(db: TestDb) {
    let t = TestApp::with_config(db, |c| c.webhook_token = Some("s3cret".into())).await;
    let p = payload(vec![firing("Auth", "ffff000000000001", 0, &[])]).to_string();
    let (status, headers, _) = t
        .request(
            Request::post("/webhook")
                .body(Body::from(p.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    let (status, _, _) = t
        .request(
            Request::post("/webhook")
                .header(header::AUTHORIZATION, "Bearer wrong!")
                .body(Body::from(p.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = t
        .request(
            Request::post("/webhook")
                .header(header::AUTHORIZATION, "Bearer s3cret")
                .body(Body::from(p))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["saved"], 1);
}

async fn unknown_fields_are_kept(db: TestDb) {
    let t = TestApp::new(db).await;
    let mut a = firing("Grafana", "9999000000000001", 0, &[]);
    a["orgId"] = json!(1);
    a["silenceURL"] = json!("http://grafana/silence");
    a["values"] = json!({ "B": 97.5 });
    let mut p = payload(vec![a]);
    p["orgId"] = json!(1);
    t.deliver(&p).await;
    let raw = t.store().raw_events("9999000000000001").await.unwrap();
    assert_eq!(raw[0]["silenceURL"], "http://grafana/silence");
    assert_eq!(raw[0]["values"]["B"], 97.5);
    let (_, timeline) = t.get("/alerts/9999000000000001").await;
    assert_eq!(timeline["events"][0]["raw"]["orgId"], 1);
}

/// `raw` comes back as delivered on both databases (PostgreSQL stores it
/// without the labels and annotations it repeats, and puts them back):
/// without annotations, with empty ones, and when a redelivery of the same
/// event carries other labels, in its own webhook or in the same one.
async fn raw_is_the_alert_as_delivered(db: TestDb) {
    let t = TestApp::new(db).await;
    let full = firing("Raw", "7777000000000001", 0, &[("team", "a")]);
    let mut bare = firing("Raw", "7777000000000002", 0, &[]);
    bare.as_object_mut().unwrap().remove("annotations");
    bare.as_object_mut().unwrap().remove("generatorURL");
    let mut empty = firing("Raw", "7777000000000003", 0, &[]);
    empty["annotations"] = json!({});
    empty["generatorURL"] = json!("");
    let mut null = resolved("Raw", "7777000000000005", 0, 3, &[]);
    null["generatorURL"] = Value::Null;
    t.deliver(&payload(vec![
        full.clone(),
        bare.clone(),
        empty.clone(),
        null.clone(),
    ]))
    .await;
    for (fp, sent) in [
        ("7777000000000001", &full),
        ("7777000000000002", &bare),
        ("7777000000000003", &empty),
        ("7777000000000005", &null),
    ] {
        let raw = t.store().raw_events(fp).await.unwrap();
        assert_eq!(raw, vec![sent.clone()], "{fp}");
    }

    // The same event again, with other labels, annotations and
    // generatorURL: `raw` is the latest delivery, whole.
    let mut again = full.clone();
    again["labels"]["team"] = json!("b");
    again["annotations"] = json!({ "summary": "changed", "runbook": 7 });
    again["generatorURL"] = json!("http://other:9090/graph");
    t.deliver(&payload(vec![again.clone()])).await;
    let raw = t.store().raw_events("7777000000000001").await.unwrap();
    assert_eq!(raw, vec![again]);
    // And once more without a generatorURL: it does not come back.
    let mut without = full.clone();
    without.as_object_mut().unwrap().remove("generatorURL");
    t.deliver(&payload(vec![without.clone()])).await;
    let raw = t.store().raw_events("7777000000000001").await.unwrap();
    assert_eq!(raw, vec![without]);
    let (_, history) = t.get("/history?fingerprint=7777000000000001").await;
    assert_eq!(rows(&history)[0]["generatorURL"], Value::Null);

    // Twice in one webhook, the labels differing: the last one wins.
    let first = firing("Raw", "7777000000000004", 0, &[("team", "a")]);
    let mut last = first.clone();
    last["labels"]["team"] = json!("c");
    t.deliver(&payload(vec![first, last.clone()])).await;
    let raw = t.store().raw_events("7777000000000004").await.unwrap();
    assert_eq!(raw, vec![last]);
}

async fn seed_history(t: &TestApp) {
    let alerts = vec![
        firing(
            "DiskFull",
            "1000000000000001",
            10,
            &[
                ("namespace", "prod"),
                ("severity", "critical"),
                ("team", "storage"),
            ],
        ),
        firing(
            "DiskFull",
            "1000000000000002",
            20,
            &[
                ("namespace", "dev"),
                ("severity", "warning"),
                ("team", "storage"),
            ],
        ),
        firing(
            "HighCpu",
            "1000000000000003",
            30,
            &[
                ("namespace", "prod"),
                ("severity", "warning"),
                ("team", "compute"),
            ],
        ),
        resolved(
            "HighCpu",
            "1000000000000003",
            30,
            40,
            &[
                ("namespace", "prod"),
                ("severity", "warning"),
                ("team", "compute"),
            ],
        ),
        firing("NoNamespace", "1000000000000004", 50, &[]),
    ];
    assert_eq!(t.deliver(&payload(alerts)).await, 5);
}

async fn history_filters(db: TestDb) {
    let t = TestApp::new(db).await;
    seed_history(&t).await;
    let fps = |v: &Value| {
        rows(v)
            .iter()
            .map(|e| e["fingerprint"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let (_, all) = t.get("/history").await;
    assert_eq!(
        rows(&all)
            .iter()
            .map(|e| (
                e["fingerprint"].as_str().unwrap()[14..].to_owned(),
                e["status"].as_str().unwrap().to_owned()
            ))
            .collect::<Vec<_>>(),
        vec![
            ("04".into(), "firing".into()),
            ("03".into(), "resolved".into()),
            ("03".into(), "firing".into()),
            ("02".into(), "firing".into()),
            ("01".into(), "firing".into())
        ],
        "newest first by event time"
    );
    let (_, v) = t.get("/history?alertname=DiskFull").await;
    assert_eq!(fps(&v), ["1000000000000002", "1000000000000001"]);
    let (_, v) = t.get("/history?status=resolved").await;
    assert_eq!(fps(&v), ["1000000000000003"]);
    let (_, v) = t.get("/history?namespace=prod&status=firing").await;
    assert_eq!(fps(&v), ["1000000000000003", "1000000000000001"]);
    let (_, v) = t.get("/history?severity=warning").await;
    assert_eq!(rows(&v).len(), 3);
    let (_, v) = t
        .get("/history?label=team=storage&label=namespace=dev")
        .await;
    assert_eq!(fps(&v), ["1000000000000002"]);
    let (_, v) = t.get("/history?label=team%3Dcompute").await;
    assert_eq!(rows(&v).len(), 2);
    let (_, v) = t
        .get(&format!("/history?since={}&until={}", at(20), at(30)))
        .await;
    assert_eq!(fps(&v), ["1000000000000003", "1000000000000002"]);
    let (_, v) = t
        .get("/history?fingerprint=1000000000000004&alertname=&namespace=")
        .await;
    assert_eq!(rows(&v)[0]["namespace"], Value::Null);
    // Unix seconds work as times too.
    let since = chrono::DateTime::parse_from_rfc3339(&at(45))
        .unwrap()
        .timestamp();
    let (_, v) = t.get(&format!("/history?since={since}")).await;
    assert_eq!(fps(&v), ["1000000000000004"]);
    for (query, param) in [
        ("status=open", "status"),
        ("label=team", "label"),
        // UTF-8 names (bad-name, service.name) are names: only an empty
        // or unterminated quoted one is refused.
        ("label==x", "label"),
        ("since=yesterday", "since"),
        ("cursor=zzz", "cursor"),
        ("cursor=1-1&offset=3", "offset"),
    ] {
        let (status, body) = t.get(&format!("/history?{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(body["field"], param, "{query}: {body}");
        assert_eq!(body["detail"][0]["loc"], json!(["query", param]));
    }
}

async fn history_limits(db: TestDb) {
    let t = TestApp::new(db).await;
    let alerts = (0..120)
        .map(|i| firing("Many", &format!("2000{i:012}"), i, &[]))
        .collect();
    assert_eq!(t.deliver(&payload(alerts)).await, 120);
    let (_, v) = t.get("/history").await;
    assert_eq!(rows(&v).len(), 100, "default limit");
    let (_, v) = t.get("/history?limit=7").await;
    assert_eq!(rows(&v).len(), 7);
    let (_, v) = t.get("/history?limit=1000").await;
    assert_eq!(rows(&v).len(), 120);
    for limit in ["0", "1001", "-1", "ten"] {
        let (status, body) = t.get(&format!("/history?limit={limit}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "limit={limit}");
        assert_eq!(body["field"], "limit");
    }
}

async fn keyset_pagination_follows_link_headers(db: TestDb) {
    let t = TestApp::new(db).await;
    // 25 events, several sharing an event time so the id tie-break matters.
    let alerts = (0..25)
        .map(|i| firing("Page", &format!("3000{i:012}"), i / 3, &[("team", "x")]))
        .collect();
    assert_eq!(t.deliver(&payload(alerts)).await, 25);
    let (_, all) = t.get("/history?limit=1000&label=team=x").await;
    let all: Vec<Value> = rows(&all).clone();
    let mut seen = Vec::new();
    let mut next = Some("/history?limit=10&label=team%3Dx".to_owned());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let (status, headers, body) = t
            .request(Request::get(&path).body(Body::empty()).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        seen.extend(rows(&body).iter().cloned());
        pages += 1;
        if let Some(link) = headers.get(header::LINK) {
            let link = link.to_str().unwrap();
            assert!(link.ends_with("rel=\"next\""), "{link}");
            assert!(link.contains("label=team%3Dx"), "filters kept: {link}");
            next = Some(link[1..link.find('>').unwrap()].to_owned());
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen, all,
        "pages concatenate to the full list, in order, no duplicates"
    );
}

async fn offset_pagination_matches_the_predecessor(db: TestDb) {
    let t = TestApp::new(db).await;
    let alerts = (0..15)
        .map(|i| firing("Off", &format!("4000{i:012}"), i, &[]))
        .collect();
    t.deliver(&payload(alerts)).await;
    let (_, all) = t.get("/history?limit=15").await;
    let (_, page) = t.get("/history?limit=5&offset=5").await;
    assert_eq!(rows(&page)[..], rows(&all)[5..10]);
}

/// A group flaps F R F R F: 4 changes.
async fn report_counts_and_flaps(db: TestDb) {
    let t = TestApp::new(db).await;
    let ns = [("namespace", "prod")];
    let fp = "5000000000000001";
    let mut events = vec![];
    for round in 0..2 {
        let start = round * 10;
        events.push(payload(vec![firing("Flappy", fp, start, &ns)]));
        events.push(payload(vec![resolved("Flappy", fp, start, start + 5, &ns)]));
    }
    events.push(payload(vec![firing("Flappy", fp, 20, &ns)]));
    for p in &events {
        t.deliver(p).await;
        t.deliver(p).await; // redeliveries change nothing
    }
    t.deliver(&payload(vec![firing("Steady", "5000000000000002", 1, &ns)]))
        .await;
    t.deliver(&payload(vec![firing(
        "Steady",
        "5000000000000003",
        2,
        &[("namespace", "dev"), ("severity", "info")],
    )]))
    .await;
    t.deliver(&payload(vec![resolved(
        "Once",
        "5000000000000004",
        3,
        4,
        &[],
    )]))
    .await;

    let (status, r) = t.get("/report").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r["total_events"], 8);
    assert_eq!(r["unique_alerts"], 4);
    assert_eq!(
        r["top_alerts"][0],
        json!({ "alertname": "Flappy", "namespace": "prod", "events": 5 })
    );
    assert_eq!(rows(&r["top_alerts"]).len(), 4);
    assert_eq!(
        r["flapping_alerts"],
        json!([{ "alertname": "Flappy", "namespace": "prod", "flaps": 4 }])
    );
    assert_eq!(r["summary"]["firing_now"], 3);
    assert_eq!(r["summary"]["resolved_now"], 1);
    assert_eq!(r["summary"]["by_namespace"]["prod"], 6);
    assert_eq!(r["summary"]["by_namespace"]["none"], 1);
    assert_eq!(r["summary"]["by_severity"]["info"], 1);
    assert_eq!(r["summary"]["firing_by_severity"]["none"], 2);

    let (_, r) = t.get("/report?min_flap=5").await;
    assert_eq!(r["flapping_alerts"], json!([]));
    let (_, r) = t.get("/report?top=1&namespace=prod").await;
    assert_eq!(rows(&r["top_alerts"]).len(), 1);
    assert_eq!(r["total_events"], 6);
    let (_, r) = t
        .get(&format!("/report?alertname=Flappy&until={}", at(12)))
        .await;
    // F(0) R(5) F(10): two changes.
    assert_eq!(r["total_events"], 3);
    assert_eq!(r["flapping_alerts"][0]["flaps"], 2);
    for q in ["top=0", "min_flap=0", "top=x", "since=nope"] {
        let (status, _) = t.get(&format!("/report?{q}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{q}");
    }
}

async fn timeline_of_one_alert(db: TestDb) {
    let t = TestApp::new(db).await;
    let fp = "6000000000000001";
    t.deliver(&payload(vec![firing("Tl", fp, 0, &[])])).await;
    t.deliver(&payload(vec![resolved("Tl", fp, 0, 10, &[])]))
        .await;
    t.deliver(&payload(vec![firing("Tl", fp, 30, &[])])).await;
    t.deliver(&payload(vec![resolved("Tl", fp, 30, 33, &[])]))
        .await;
    let (status, v) = t.get(&format!("/alerts/{fp}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["firing_seconds"], json!(13.0 * 60.0));
    assert_eq!(v["flaps"], 3);
    assert_eq!(v["firing_periods"], 2);
    assert_eq!(v["status"], "resolved");
    let statuses: Vec<&str> = rows(&v["events"])
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["firing", "resolved", "firing", "resolved"],
        "oldest first"
    );
    let (status, v) = t.get("/alerts/0000000000000000").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("0000000000000000"));
}

async fn state_never_moves_back(db: TestDb) {
    let t = TestApp::new(db).await;
    let fp = "7000000000000001";
    // The resolution arrives, then a late redelivery of the firing event.
    t.deliver(&payload(vec![resolved("Late", fp, 0, 5, &[])]))
        .await;
    t.deliver(&payload(vec![firing("Late", fp, 0, &[])])).await;
    let (_, r) = t.get("/report").await;
    assert_eq!(r["summary"]["firing_now"], 0);
    assert_eq!(r["summary"]["resolved_now"], 1);
    // A new firing period (later startsAt) does move it forward.
    t.deliver(&payload(vec![firing("Late", fp, 60, &[])])).await;
    let (_, r) = t.get("/report").await;
    assert_eq!(r["summary"]["firing_now"], 1);
    let (_, o) = t.get("/api/dashboard/overview?hours=8760").await;
    assert_eq!(o["firing"][0]["startsAt"], at(60));

    // Redeliveries leave the state row alone, but the state still shows
    // its latest delivery (its event's lastSeen) as updatedAt.
    let body = payload(vec![firing("Late", fp, 60, &[])]).to_string();
    let events = alert_history::model::parse_webhook(body.as_bytes()).unwrap();
    let later = 4_102_444_800_000; // 2100-01-01
    t.store().ingest(&events, later).await.unwrap();
    let (_, o) = t.get("/api/dashboard/overview?hours=8760").await;
    assert_eq!(o["firing"][0]["updatedAt"], "2100-01-01T00:00:00Z");
    let (_, h) = t
        .get(&format!("/history?fingerprint={fp}&status=firing"))
        .await;
    assert_eq!(rows(&h)[0]["startsAt"], at(60));
    assert_eq!(rows(&h)[0]["lastSeen"], o["firing"][0]["updatedAt"]);
    assert_eq!(rows(&h)[0]["occurrences"], 2);
}

async fn health_and_readiness(db: TestDb) {
    let t = TestApp::new(db).await;
    let (status, v) = t.get("/healthz").await;
    assert_eq!((status, v), (StatusCode::OK, json!({ "status": "ok" })));
    let (status, v) = t.get("/health/liveness").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    for path in ["/readyz", "/health/readiness"] {
        let (status, v) = t.get(path).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["status"], "ready");
        assert_eq!(v["dependencies"]["database"]["status"], "ok");
    }
    let (status, v) = t.get("/health/database").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["events"], 0);
    let (status, v) = t.get("/health/detailed").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["retention_days"], 90);
    // Database gone: not ready, 503; liveness stays up.
    t.store().close().await;
    let (status, v) = t.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["dependencies"]["database"]["status"], "error");
    let (status, _) = t.get("/health/database").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = t.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    // Ingest fails with a 5xx (Alertmanager retries), never a 2xx.
    let (status, _) = t
        .post(
            "/webhook",
            payload(vec![firing("X", "8000000000000001", 0, &[])]).to_string(),
        )
        .await;
    assert!(status.is_server_error());
}

async fn metrics_use_route_templates(db: TestDb) {
    let t = TestApp::new(db).await;
    t.deliver(&payload(vec![firing(
        "M",
        "8100000000000001",
        0,
        &[("namespace", "prod")],
    )]))
    .await;
    t.get("/alerts/8100000000000001").await;
    t.get("/history").await;
    t.get("/report").await;
    let (status, text) = t.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap();
    for needle in [
        "alert_history_webhook_events_total{alertname=\"M\",namespace=\"prod\",status=\"firing\"} 1",
        "alert_history_history_queries_total 1",
        "alert_history_report_queries_total 1",
        "alert_history_db_alerts 1",
        "alert_history_http_request_duration_seconds_count{route=\"/alerts/{fingerprint}\",method=\"GET\",status=\"2xx\"} 1",
        "route=\"/webhook\",method=\"POST\"",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    assert!(
        !text.contains("8100000000000001"),
        "no per-fingerprint series"
    );
}

async fn retention_deletes_old_events_in_batches(db: TestDb) {
    let t = TestApp::with_config(db, |c| {
        c.api_token = Some("admin".into());
        c.retention_days = 30;
    })
    .await;
    let now = chrono::Utc::now().timestamp_millis();
    let old = now - 31 * 86_400_000;
    // 2,500 old events (three delete batches) and 3 recent ones.
    let old_events: Vec<_> = (0..2500)
        .map(|i| {
            let body = payload(vec![firing("Old", &format!("9000{i:012}"), i, &[])]).to_string();
            alert_history::parse_webhook(body.as_bytes())
                .unwrap()
                .remove(0)
        })
        .collect();
    t.store().ingest(&old_events, old).await.unwrap();
    // An old event redelivered since (a long-firing alert) stays; another
    // redelivered long ago goes (on PostgreSQL the redeliveries are counted
    // beside the event, and the cutoff must see them).
    let kept = payload(vec![firing("Kept", "9200000000000001", 0, &[])]).to_string();
    let kept = alert_history::parse_webhook(kept.as_bytes()).unwrap();
    t.store().ingest(&kept, old).await.unwrap();
    t.store().ingest(&kept, now - 60_000).await.unwrap();
    t.store().ingest(&old_events[..1], old + 1).await.unwrap();
    let recent: Vec<_> = (0..3)
        .map(|i| firing("New", &format!("9100{i:012}"), i, &[]))
        .collect();
    t.deliver(&payload(recent)).await;
    let (status, _, _) = t
        .request(
            Request::post("/admin/retention")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, v) = t
        .request(
            Request::post("/admin/retention")
                .header(header::AUTHORIZATION, "Bearer admin")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["deleted"], 2500);
    let (_, left) = t.get("/history?limit=1000").await;
    let mut names: Vec<&str> = rows(&left)
        .iter()
        .map(|e| e["alertname"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["Kept", "New", "New", "New"]);
    let kept = rows(&left)
        .iter()
        .find(|e| e["alertname"] == "Kept")
        .unwrap();
    assert_eq!(kept["occurrences"], 2);
    assert_eq!(t.state.metrics().db_alerts(), 4);
}

async fn dashboard_api_matches_report(db: TestDb) {
    let t = TestApp::new(db).await;
    let now = chrono::Utc::now();
    let minutes_ago = |m: i64| {
        (now - chrono::Duration::minutes(m)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let mut a = firing("Recent", "a100000000000001", 0, &[("severity", "critical")]);
    a["startsAt"] = json!(minutes_ago(90));
    let mut b = resolved("Recent2", "a100000000000002", 0, 0, &[]);
    b["startsAt"] = json!(minutes_ago(200));
    b["endsAt"] = json!(minutes_ago(30));
    t.deliver(&payload(vec![a, b])).await;
    let (status, o) = t.get("/api/dashboard/overview").await;
    assert_eq!(status, StatusCode::OK, "{o}");
    assert_eq!(o["summary"]["firing_now"], 1);
    assert_eq!(o["total_events"], 2);
    assert_eq!(rows(&o["firing"]).len(), 1);
    assert_eq!(o["firing"][0]["alertname"], "Recent");
    // The state's labels and annotations are its event's.
    assert_eq!(o["firing"][0]["labels"]["severity"], "critical");
    assert_eq!(o["firing"][0]["annotations"]["summary"], "Recent is firing");
    let (_, state) = t.store().alert("a100000000000002").await.unwrap();
    let state = state.unwrap();
    assert_eq!(state.status, "resolved");
    assert_eq!(state.labels.0["alertname"], "Recent2");
    assert_eq!(state.annotations.0["summary"], "Recent2 is resolved");
    let (_, c) = t.get("/api/dashboard/charts?hours=6&buckets=12").await;
    let buckets = rows(&c["buckets"]);
    assert_eq!(buckets.len(), 12);
    assert_eq!(c["bucket_seconds"], 1800.0);
    let firing: i64 = buckets.iter().map(|b| b["firing"].as_i64().unwrap()).sum();
    let resolved_n: i64 = buckets
        .iter()
        .map(|b| b["resolved"].as_i64().unwrap())
        .sum();
    assert_eq!((firing, resolved_n), (1, 1));
    let (_, recent) = t.get("/api/dashboard/alerts/recent?limit=1").await;
    assert_eq!(rows(&recent).len(), 1);
    assert_eq!(recent[0]["alertname"], "Recent2");
    let (status, _) = t.get("/api/dashboard/charts?buckets=0").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

async fn dashboard_page_is_self_contained(db: TestDb) {
    let t = TestApp::new(db).await;
    let (status, headers, html) = t
        .request(Request::get("/dashboard").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = html.as_str().unwrap();
    assert!(html.contains("<!DOCTYPE html>"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
    for path in ["/dashboard/app.js", "/dashboard/app.css"] {
        let (status, _, body) = t
            .request(Request::get(path).body(Body::empty()).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);
        let body = body.as_str().unwrap();
        assert!(!body.contains("https://"), "{path} loads nothing external");
    }
}

/// Many deliveries at once (on SQLite they share group commits): each event
/// is saved once and `saved` adds up to the distinct events.
async fn concurrent_deliveries_store_each_event_once(db: TestDb) {
    let t = std::sync::Arc::new(TestApp::new(db).await);
    let mut distinct = std::collections::HashSet::new();
    let mut tasks = Vec::new();
    for d in 0..60i64 {
        let alerts: Vec<Value> = (0..10i64)
            .map(|k| {
                let n = (d * 7 + k) % 30;
                distinct.insert(n);
                firing("Burst", &format!("b000{n:012}"), n, &[])
            })
            .collect();
        let t = t.clone();
        let body = payload(alerts);
        tasks.push(tokio::spawn(async move { t.deliver(&body).await }));
    }
    let mut saved = 0;
    for task in tasks {
        saved += task.await.unwrap();
    }
    assert_eq!(saved, distinct.len() as u64);
    assert_eq!(
        t.store().count_events().await.unwrap(),
        distinct.len() as i64
    );
    let (_, v) = t.get("/history?limit=1000").await;
    let total: i64 = rows(&v)
        .iter()
        .map(|e| e["occurrences"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 600, "every delivery of every event counted");
}

async fn an_alert_without_alertname_does_not_lose_its_group(db: TestDb) {
    let t = TestApp::new(db).await;
    let mut nameless = firing("X", "eeee000000000002", 0, &[("job", "node")]);
    nameless["labels"]
        .as_object_mut()
        .unwrap()
        .remove("alertname");
    let mut no_labels = firing("X", "eeee000000000003", 0, &[]);
    no_labels.as_object_mut().unwrap().remove("labels");
    let p = payload(vec![
        firing("Named", "eeee000000000001", 0, &[]),
        nameless,
        no_labels,
    ]);
    assert_eq!(t.deliver(&p).await, 3);
    let (status, body) = t.get("/alerts/eeee000000000002").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["alertname"], "");
    assert_eq!(body["labels"], json!({ "job": "node" }));
    let (_, history) = t.get("/history").await;
    assert_eq!(rows(&history).len(), 3);
}

async fn unstorable_values_are_422_naming_the_field(db: TestDb) {
    let t = TestApp::new(db).await;
    let deep = (0..70).fold(json!(1), |v, _| json!([v]));
    for (key, value, field) in [
        (
            "annotations",
            json!({ "d": "a\u{0}b" }),
            "alerts[1].annotations.d",
        ),
        ("extra", deep, "alerts[1].extra[0]"),
    ] {
        let mut bad = firing("Bad", "ffff000000000002", 0, &[]);
        bad[key] = value;
        let p = payload(vec![firing("Good", "ffff000000000001", 0, &[]), bad]);
        let (status, body) = t.post("/webhook", p.to_string()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body["field"].as_str().unwrap().starts_with(field), "{body}");
    }
    let text = payload(vec![firing("Bad", "ffff000000000003", 0, &[])])
        .to_string()
        .replace(
            "0001-01-01T00:00:00Z\"",
            "0001-01-01T00:00:00Z\",\"n\":1e400",
        );
    let (status, body) = t.post("/webhook", text).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "alerts[0].n", "{body}");
    assert_eq!(t.store().count_events().await.unwrap(), 0);
}

async fn everything_accepted_reads_back(db: TestDb) {
    let t = TestApp::new(db).await;
    // 64 levels in all (the alert object is the first), huge and tiny
    // numbers, escapes that are not NUL.
    let deep = (0..62).fold(json!("bottom"), |v, _| json!({ "d": v }));
    let mut a = firing("Edge", "abab000000000001", 0, &[]);
    a["annotations"]["deep"] = deep.clone();
    a["annotations"]["text"] = json!("tab\t quote\" backslash\\ \u{1} \\u0000");
    let text = payload(vec![a]).to_string().replace(
        "\"fingerprint\"",
        "\"big\":1e300,\"small\":2.5e-300,\"fingerprint\"",
    );
    let (status, body) = t.post("/webhook", text).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = t.get("/alerts/abab000000000001").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let raw = &body["events"][0]["raw"];
    assert_eq!(raw["annotations"]["deep"], deep);
    assert_eq!(raw["big"].as_f64(), Some(1e300));
    assert_eq!(raw["small"].as_f64(), Some(2.5e-300));
    let (status, history) = t.get("/history?alertname=Edge").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows(&history)[0]["annotations"]["deep"], deep);
}

async fn until_a_date_includes_that_day_and_milliseconds_are_understood(db: TestDb) {
    let t = TestApp::new(db).await;
    // at(m) is m minutes after 2026-01-01T00:00:00Z: 23:59 that day, and
    // the next day's 00:01.
    t.deliver(&payload(vec![
        firing("Late", "ca11000000000001", 23 * 60 + 59, &[]),
        firing("Next", "ca11000000000002", 24 * 60 + 1, &[]),
    ]))
    .await;
    let (status, rows_) = t.get("/history?until=2026-01-01").await;
    assert_eq!(status, StatusCode::OK, "{rows_}");
    let names: Vec<&str> = rows(&rows_)
        .iter()
        .map(|r| r["alertname"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Late"]);
    let (_, rows_) = t.get("/history?since=2026-01-02").await;
    assert_eq!(rows(&rows_).len(), 1);
    // 2026-01-01T23:00:00Z in seconds and in milliseconds.
    for since in ["1767308400", "1767308400000"] {
        let (status, rows_) = t.get(&format!("/history?since={since}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(rows(&rows_).len(), 2, "since={since}");
    }
}

async fn utf8_label_names_filter_history(db: TestDb) {
    let t = TestApp::new(db).await;
    t.deliver(&payload(vec![
        firing("U", "ca22000000000001", 0, &[("service.name", "api")]),
        firing("U", "ca22000000000002", 0, &[("service.name", "db")]),
        firing("U", "ca22000000000003", 0, &[("odd\"na=me", "x y")]),
    ]))
    .await;
    for (query, expected) in [
        ("label=service.name=api", "ca22000000000001"),
        ("label=%22service.name%22=db", "ca22000000000002"),
        ("label=%22odd%5C%22na%3Dme%22=x%20y", "ca22000000000003"),
    ] {
        let (status, body) = t.get(&format!("/history?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        let fps: Vec<&str> = rows(&body)
            .iter()
            .map(|r| r["fingerprint"].as_str().unwrap())
            .collect();
        assert_eq!(fps, [expected], "{query}");
    }
    for bad in ["label=%22open=x", "label==x", "label=noequals"] {
        let (status, body) = t.get(&format!("/history?{bad}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
}

async fn report_summary_honours_since_and_until(db: TestDb) {
    let t = TestApp::new(db).await;
    t.deliver(&payload(vec![
        firing("Old", "ca33000000000001", 0, &[("severity", "critical")]),
        firing("New", "ca33000000000002", 120, &[("severity", "warning")]),
    ]))
    .await;
    let (_, all) = t.get("/report").await;
    assert_eq!(all["summary"]["firing_now"], 2, "{all}");
    let (_, recent) = t.get(&format!("/report?since={}", at(60))).await;
    assert_eq!(recent["total_events"], 1, "{recent}");
    assert_eq!(recent["summary"]["firing_now"], 1, "{recent}");
    assert_eq!(
        recent["summary"]["firing_by_severity"],
        json!({ "warning": 1 })
    );
    let (_, early) = t.get(&format!("/report?until={}", at(60))).await;
    assert_eq!(early["summary"]["firing_now"], 1, "{early}");
    assert_eq!(
        early["summary"]["firing_by_severity"],
        json!({ "critical": 1 })
    );
}

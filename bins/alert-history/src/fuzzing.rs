//! The properties that the fuzz targets of `fuzz/` check, one function per
//! target, each taking the fuzzer's bytes and panicking when a property
//! fails (`tests/fuzz_replay.rs` runs them over the committed corpus and
//! regressions in CI; docs/RELIABILITY.md has the budgets run).
//!
//! * [`webhook`]: [`parse_webhook`] on any body (Alertmanager's and
//!   Grafana's, which is Alertmanager's shape with extra fields): every
//!   accepted event agrees with its alert's JSON, what the store writes
//!   reads back equal, its times survive the API's formatting; a refusal
//!   is 400 exactly when the body is not JSON, else 422 naming a field.
//! * [`webhook_store`]: the body through the real ingest path into a
//!   SQLite store kept for the whole process, checked against a model of
//!   what must be stored; a refused body changes nothing.
//! * [`history_query`], [`report_query`]: the query strings of `/history`
//!   and `/report`: accepted values within their documented limits; the
//!   `Link` of the next page parses back to the same query.
//! * [`cursor`]: the `/history` cursor codec: the decoder accepts exactly
//!   the encoder's spellings, and every cursor round-trips.
//!
//! Only built with the `fuzzing` feature.

use std::cell::RefCell;
use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::PayloadError;
use crate::http::{
    ApiError, DEFAULT_LIMIT, End, MAX_LIMIT, event_json, last, parse_history_query,
    parse_report_query, query_pairs, receive, time_param,
};
use crate::model::{
    MAX_NOTIFICATION_REASON, NewEvent, Status, ZERO_TIME_MS, alertmanager_fingerprint,
    check_storable, format_time, parse_time, parse_webhook,
};
use crate::store::{Cursor, HistoryQuery, PoolRef, ReportQuery, Store};
use crate::{AppState, Config};

/// The alerts of a body, as the parser splits them (the parser's payload
/// shape, so that serde reads the same bodies: it also takes an array,
/// `[[alerts...], reason]`, for a struct).
#[derive(Deserialize)]
struct Alerts<'a> {
    #[serde(borrow)]
    alerts: Vec<&'a RawValue>,
    #[serde(default, borrow, rename = "notification_reason")]
    _reason: Option<&'a RawValue>,
}

/// `/webhook`'s parser: deterministic, every accepted event agrees with the
/// JSON it came from, refusals classified as the API answers them.
///
/// # Panics
/// When a property fails.
pub fn webhook(data: &[u8]) {
    let parsed = parse_webhook(data);
    assert_eq!(parsed, parse_webhook(data), "parsing is not deterministic");
    match parsed {
        Ok(events) => check_events(data, &events),
        Err(e) => check_refusal(data, &e),
    }
}

fn check_events(data: &[u8], events: &[NewEvent]) {
    assert!(
        std::str::from_utf8(data).is_ok(),
        "a body that is not UTF-8 was accepted"
    );
    let alerts: Alerts<'_> =
        serde_json::from_slice(data).expect("an accepted body has an alerts list");
    assert_eq!(events.len(), alerts.alerts.len(), "one event per alert");
    let reason = events.first().and_then(|e| e.notification_reason.clone());
    for (i, (event, raw)) in events.iter().zip(&alerts.alerts).enumerate() {
        let at = |what: &str| format!("alerts[{i}]: {what}");
        assert_eq!(
            event.raw,
            raw.get(),
            "{}",
            at("raw is the alert as delivered")
        );
        assert!(
            check_storable(&event.raw).is_ok(),
            "{}",
            at("raw not storable")
        );
        let alert: Map<String, Value> =
            serde_json::from_str(&event.raw).expect("an accepted alert is a JSON object");
        assert_eq!(alert["status"], event.status.as_str(), "{}", at("status"));

        let labels: BTreeMap<String, String> = alert
            .get("labels")
            .map(|l| serde_json::from_value(l.clone()).expect("labels are strings"))
            .unwrap_or_default();
        assert_eq!(event.labels, labels, "{}", at("labels"));
        let label = |name: &str| labels.get(name).cloned();
        assert_eq!(
            event.alertname,
            label("alertname").unwrap_or_default(),
            "{}",
            at("alertname")
        );
        assert_eq!(event.namespace, label("namespace"), "{}", at("namespace"));
        assert_eq!(event.severity, label("severity"), "{}", at("severity"));
        let annotations = match alert.get("annotations") {
            None | Some(Value::Null) => Map::new(),
            Some(a) => a.as_object().expect("annotations are an object").clone(),
        };
        assert_eq!(event.annotations, annotations, "{}", at("annotations"));

        let text = |name: &str| {
            alert
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        assert_eq!(Some(event.starts_at), text("startsAt").and_then(parse_time));
        match event.status {
            Status::Firing => assert_eq!(event.ends_at, ZERO_TIME_MS, "{}", at("firing endsAt")),
            Status::Resolved => assert_eq!(
                event.ends_at,
                text("endsAt").map_or(ZERO_TIME_MS, |t| parse_time(t).expect("endsAt")),
                "{}",
                at("resolved endsAt")
            ),
        }
        // The API answers times with `format_time`: a client must be able
        // to read them back as the same instant.
        for ms in [event.starts_at, event.ends_at] {
            let shown = format_time(ms);
            assert_eq!(
                parse_time(&shown),
                Some(ms),
                "{}",
                at(&format!("{ms} shown as {shown}"))
            );
        }
        match text("fingerprint") {
            Some(fp) => assert_eq!(event.fingerprint, fp, "{}", at("fingerprint")),
            None => assert_eq!(event.fingerprint, alertmanager_fingerprint(&labels)),
        }
        assert_eq!(
            event.generator_url.as_deref(),
            text("generatorURL"),
            "{}",
            at("generatorURL")
        );

        // The JSON columns the store writes read back as the same values.
        let labels_text = serde_json::to_string(&event.labels).expect("labels serialize");
        let back: BTreeMap<String, String> = serde_json::from_str(&labels_text).expect("labels");
        assert_eq!(back, event.labels, "{}", at("labels column"));
        let annotations_text = serde_json::to_string(&event.annotations).expect("annotations");
        let back: Map<String, Value> =
            serde_json::from_str(&annotations_text).expect("annotations");
        assert_eq!(back, event.annotations, "{}", at("annotations column"));

        assert_eq!(event.notification_reason, reason, "one reason per delivery");
    }
    if let Some(reason) = reason {
        assert!(!reason.is_empty() && !reason.contains('\0'));
        assert!(reason.chars().count() <= MAX_NOTIFICATION_REASON);
    }
}

fn check_refusal(data: &[u8], e: &PayloadError) {
    // 400 only for a body serde_json cannot read as a value (not UTF-8,
    // not JSON, or a number out of f64's range, RFC 8259's allowed limit);
    // 422 only for one that is JSON as far as a skipping parse sees (which
    // takes any number).
    let unreadable =
        std::str::from_utf8(data).is_err() || serde_json::from_slice::<Value>(data).is_err();
    let not_json = std::str::from_utf8(data).is_err()
        || serde_json::from_slice::<serde::de::IgnoredAny>(data).is_err();
    let status = ApiError::from(e.clone()).into_response().status();
    match e {
        PayloadError::Malformed { .. } => {
            assert!(unreadable, "JSON refused as malformed: {e}");
            assert_eq!(status, StatusCode::BAD_REQUEST);
        }
        PayloadError::Invalid { field, reason } => {
            assert!(
                !not_json,
                "a body that is not JSON refused as invalid, not malformed: {e}"
            );
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(!reason.is_empty());
            assert!(field == "." || field.starts_with("alerts"), "{e}");
            if let Some(rest) = field.strip_prefix("alerts[") {
                let i: usize = rest
                    .split(']')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("index");
                let alerts: Alerts<'_> = serde_json::from_slice(data).expect("alerts list");
                assert!(i < alerts.alerts.len(), "{e}");
            }
        }
    }
}

// ------------------------------------------------------------ the store

/// What one stored event must hold (the `alert_events` columns the model
/// can predict: not the ids and delivery times).
type Row = (
    String,         // alertname
    Option<String>, // namespace
    Option<String>, // severity
    i64,            // event_at
    String,         // labels
    String,         // annotations
    Option<String>, // generator_url
    String,         // raw
    i64,            // occurrences
    Option<String>, // notification_reason
);

/// An event's identity as the database holds it.
type Key = (String, String, i64, i64);

/// A store kept for the whole process, and a model of what it holds.
struct Harness {
    runtime: tokio::runtime::Runtime,
    state: AppState,
    model: RefCell<BTreeMap<Key, Row>>,
}

/// Events kept before the store (and model) start over: the checks read
/// every row after each delivery.
const MAX_MODEL_ROWS: usize = 200;

thread_local! {
    static HARNESS: Harness = Harness::new();
}

impl Harness {
    fn new() -> Harness {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        // One file per process and thread, replaced at start (libFuzzer
        // gives no chance to delete it at exit).
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("alert-history-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the fuzz store");
        let url = format!("sqlite://{}", dir.join("history.db").display());
        let state = runtime.block_on(async {
            let store = Store::connect(&url, 2).await.expect("the fuzz store");
            AppState::new(store, &Config::for_database(&url), Default::default())
                .expect("app state")
        });
        Harness {
            runtime,
            state,
            model: RefCell::new(BTreeMap::new()),
        }
    }

    fn sqlite(pool: PoolRef<'_>) -> &sqlx::SqlitePool {
        match pool {
            PoolRef::Sqlite(pool) => pool,
            PoolRef::Postgres(_) => unreachable!("the fuzz store is SQLite"),
        }
    }

    /// Every row of the tables ingest writes, in a comparable form.
    async fn snapshot(&self) -> (BTreeMap<Key, Row>, Vec<(Key, i64)>, i64) {
        let pool = Harness::sqlite(self.state.store().read_pool());
        type Full = (
            String,
            String,
            i64,
            i64,
            String,
            Option<String>,
            Option<String>,
            i64,
            String,
            String,
            Option<String>,
            String,
            i64,
            Option<String>,
        );
        let rows: Vec<Full> = sqlx::query_as(
            "SELECT fingerprint, status, starts_at, ends_at, alertname, namespace, severity, \
             event_at, labels, annotations, generator_url, raw, occurrences, notification_reason \
             FROM alert_events",
        )
        .fetch_all(pool)
        .await
        .expect("reading alert_events");
        let events = rows
            .into_iter()
            .map(|r| {
                (
                    (r.0, r.1, r.2, r.3),
                    (r.4, r.5, r.6, r.7, r.8, r.9, r.10, r.11, r.12, r.13),
                )
            })
            .collect();
        let states: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT fingerprint, status, starts_at, ends_at, updated_at FROM alert_state \
             ORDER BY fingerprint",
        )
        .fetch_all(pool)
        .await
        .expect("reading alert_state");
        let outbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM publish_outbox")
            .fetch_one(pool)
            .await
            .expect("reading publish_outbox");
        let states = states
            .into_iter()
            .map(|s| ((s.0, s.1, s.2, s.3), s.4))
            .collect();
        (events, states, outbox)
    }

    async fn wipe(&self) {
        let pool = Harness::sqlite(self.state.store().write_pool());
        for table in ["alert_events", "alert_state"] {
            sqlx::query(&format!("DELETE FROM {table}"))
                .execute(pool)
                .await
                .expect("emptying the fuzz store");
        }
        self.model.borrow_mut().clear();
    }

    async fn deliver(&self, data: &[u8]) {
        let before = self.snapshot().await;
        let parsed = parse_webhook(data);
        let answer = receive(&self.state, &HeaderMap::new(), Body::from(data.to_vec())).await;
        let (events, (_, outcome)) = match (parsed, answer) {
            (Ok(events), Ok(answer)) => (events, answer),
            (Err(e), Err(refused)) => {
                let status = refused.into_response().status();
                let expected = ApiError::from(e).into_response().status();
                assert_eq!(
                    status, expected,
                    "refused with another status than the parser's"
                );
                assert!(
                    self.snapshot().await == before,
                    "a refused delivery changed the store"
                );
                return;
            }
            (Ok(_), Err(refused)) => {
                panic!(
                    "a parsed delivery was answered {}",
                    refused.into_response().status()
                )
            }
            (Err(e), Ok(_)) => panic!("a delivery the parser refuses was stored: {e}"),
        };
        assert_eq!(outcome.processed, events.len() as u64);

        // The model: the last copy of a repeated event in a delivery wins;
        // a redelivered event keeps its first labels and gets the latest
        // annotations, generatorURL and raw, and one more occurrence.
        let mut latest: BTreeMap<Key, &NewEvent> = BTreeMap::new();
        for event in &events {
            latest.insert(key_of(event), event);
        }
        let mut saved = 0;
        {
            let mut model = self.model.borrow_mut();
            for (key, event) in &latest {
                match model.get_mut(key) {
                    Some(row) => {
                        row.5 = json(&event.annotations);
                        row.6.clone_from(&event.generator_url);
                        row.7.clone_from(&event.raw);
                        row.8 += 1;
                    }
                    None => {
                        saved += 1;
                        model.insert(key.clone(), row_of(event));
                    }
                }
            }
        }
        assert_eq!(outcome.saved, saved, "saved count");
        let (stored, states, outbox) = self.snapshot().await;
        {
            let model = self.model.borrow();
            if stored != *model {
                let diff = model
                    .iter()
                    .find(|(k, v)| stored.get(*k) != Some(*v))
                    .map(|(k, v)| format!("{k:?}: model {v:?}, stored {:?}", stored.get(k)))
                    .or_else(|| {
                        stored
                            .keys()
                            .find(|k| !model.contains_key(*k))
                            .map(|k| format!("{k:?} stored, not in the model"))
                    });
                panic!("the store does not hold what was delivered: {diff:?}");
            }
            for (key, _) in &states {
                assert!(
                    model.contains_key(key),
                    "state {key:?} names no stored event"
                );
            }
        }
        assert_eq!(outbox, 0, "no publishing targets, no outbox rows");
        self.read_back(&latest).await;
        if self.model.borrow().len() > MAX_MODEL_ROWS {
            self.wipe().await;
        }
    }

    /// Each fingerprint of the delivery through the timeline's reads
    /// (`GET /alerts/{fingerprint}`): the events as the API answers them.
    async fn read_back(&self, delivered: &BTreeMap<Key, &NewEvent>) {
        let store = self.state.store();
        let mut fingerprints: Vec<&str> = delivered.keys().map(|k| k.0.as_str()).collect();
        fingerprints.dedup();
        for fp in fingerprints {
            let expected: BTreeMap<Key, Row> = self
                .model
                .borrow()
                .range(range_of(fp))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let (rows, state) = store.alert(fp).await.expect("reading a timeline");
            let raws = store.raw_events(fp).await.expect("reading raw events");
            assert_eq!(rows.len(), expected.len(), "events of {fp:?}");
            assert_eq!(raws.len(), rows.len(), "raw events of {fp:?}");
            assert!(state.is_some(), "{fp:?} has no current state");
            for (row, raw) in rows.iter().zip(&raws) {
                let key = (
                    row.fingerprint.clone(),
                    row.status.clone(),
                    row.starts_at,
                    row.ends_at,
                );
                let want = &expected[&key];
                let shown = event_json(row);
                let parse = |text: &str| serde_json::from_str::<Value>(text).expect("model JSON");
                assert_eq!(shown["labels"], parse(&want.4), "labels of {key:?}");
                assert_eq!(
                    shown["annotations"],
                    parse(&want.5),
                    "annotations of {key:?}"
                );
                assert_eq!(shown["status"], key.1.as_str(), "status of {key:?}");
                assert_eq!(shown["occurrences"], want.8, "occurrences of {key:?}");
                for (field, ms) in [("startsAt", key.2), ("endsAt", key.3)] {
                    let text = shown[field].as_str().expect("a time");
                    assert_eq!(
                        parse_time(text),
                        Some(ms),
                        "{field} of {key:?} shown as {text}"
                    );
                }
                assert_eq!(*raw, parse(&want.7), "raw of {key:?}");
            }
        }
    }
}

fn key_of(event: &NewEvent) -> Key {
    (
        event.fingerprint.clone(),
        event.status.as_str().to_owned(),
        event.starts_at,
        event.ends_at,
    )
}

fn range_of(fp: &str) -> std::ops::RangeInclusive<Key> {
    (fp.to_owned(), String::new(), i64::MIN, i64::MIN)
        ..=(fp.to_owned(), "~".to_owned(), i64::MAX, i64::MAX)
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("maps of strings and values serialize")
}

fn row_of(event: &NewEvent) -> Row {
    (
        event.alertname.clone(),
        event.namespace.clone(),
        event.severity.clone(),
        event.event_at(),
        json(&event.labels),
        json(&event.annotations),
        event.generator_url.clone(),
        event.raw.clone(),
        1,
        event.notification_reason.clone(),
    )
}

/// The real ingest path (`/webhook`'s `receive`: parse, stages, group
/// commit) into a SQLite store kept for the process: an accepted delivery
/// leaves the store holding exactly what a model of the write rules
/// predicts, and each of its alerts reads back through the timeline's
/// queries equal to what was delivered; a refused one (answered with the
/// parser's status) changes no row. The store starts over every
/// [`MAX_MODEL_ROWS`] events.
///
/// # Panics
/// When a property fails.
pub fn webhook_store(data: &[u8]) {
    HARNESS.with(|h| h.runtime.block_on(h.deliver(data)));
}

// ------------------------------------------------------------ queries

/// Checks `since` and `until` of an accepted query: each is the parse of
/// the last non-empty value, within chrono's range, and a value names the
/// same or an earlier instant as a start than as an end (a bare date is
/// the whole day).
fn check_times(pairs: &[(String, String)], since: Option<i64>, until: Option<i64>) {
    for (name, got) in [("since", since), ("until", until)] {
        assert_eq!(got.is_some(), last(pairs, name).is_some(), "{name}");
        let Some(ms) = got else { continue };
        assert!(ms.abs() <= 10_000_000_000_000_000, "{name} = {ms}");
        let start = time_param(pairs, name, End::Start).expect("parsed once");
        let end = time_param(pairs, name, End::Finish).expect("parsed once");
        let (start, end) = (start.expect("a value"), end.expect("a value"));
        assert!(
            start <= end && end - start < 86_400_000,
            "{name}: {start}..{end}"
        );
    }
}

/// `/history`'s query string: accepted values within their limits, each
/// filter the last non-empty value; the `Link` of the next page parses back
/// to the same query at that page; a refusal names a parameter.
///
/// # Panics
/// When a property fails.
pub fn history_query(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let parsed = parse_history_query(Some(&raw));
    assert_eq!(parsed, parse_history_query(Some(&raw)), "not deterministic");
    let pairs = query_pairs(Some(&raw));
    let q = match parsed {
        Ok(q) => q,
        Err(e) => {
            let known = [
                "status", "label", "cursor", "offset", "since", "until", "limit",
            ];
            assert!(known.contains(&e.param.as_str()), "{e}");
            assert!(
                pairs.iter().any(|(k, _)| *k == e.param),
                "{e} names a parameter not sent"
            );
            return;
        }
    };
    assert!((1..=MAX_LIMIT).contains(&q.limit), "limit {}", q.limit);
    if last(&pairs, "limit").is_none() {
        assert_eq!(q.limit, DEFAULT_LIMIT);
    }
    assert!(i64::try_from(q.offset).is_ok(), "offset {}", q.offset);
    assert!(q.cursor.is_none() || q.offset == 0, "cursor and offset");
    for (name, got) in [
        ("alertname", &q.alertname),
        ("fingerprint", &q.fingerprint),
        ("namespace", &q.namespace),
        ("severity", &q.severity),
    ] {
        assert_eq!(got.as_deref(), last(&pairs, name), "{name}");
    }
    assert_eq!(q.status.map(Status::as_str), last(&pairs, "status"));
    let sent = pairs.iter().filter(|(k, _)| k == "label").count();
    assert_eq!(q.labels.len(), sent, "every label filter is kept");
    assert!(q.labels.iter().all(|(name, _)| !name.is_empty()));
    if let Some(c) = q.cursor {
        assert_eq!(Some(c.encode().as_str()), last(&pairs, "cursor"));
    }
    check_times(&pairs, q.since, q.until);

    // The next page's Link, built as `history` builds it.
    let cursor = Cursor {
        event_at: q.since.unwrap_or(-1),
        id: i64::from(q.limit),
    };
    let mut next = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        if k != "cursor" && k != "offset" {
            next.append_pair(k, v);
        }
    }
    next.append_pair("cursor", &cursor.encode());
    let next = next.finish();
    assert_eq!(
        parse_history_query(Some(&next)),
        Ok(HistoryQuery {
            cursor: Some(cursor),
            offset: 0,
            ..q
        }),
        "the next page's query {next:?}"
    );
}

/// `/report`'s query string: accepted values within their limits or the
/// defaults; a refusal names a parameter.
///
/// # Panics
/// When a property fails.
pub fn report_query(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let parsed = parse_report_query(Some(&raw));
    assert_eq!(parsed, parse_report_query(Some(&raw)), "not deterministic");
    let pairs = query_pairs(Some(&raw));
    let q = match parsed {
        Ok(q) => q,
        Err(e) => {
            let known = ["since", "until", "min_flap", "top"];
            assert!(known.contains(&e.param.as_str()), "{e}");
            assert!(
                pairs.iter().any(|(k, _)| *k == e.param),
                "{e} names a parameter not sent"
            );
            return;
        }
    };
    let defaults = ReportQuery::default();
    for (name, got, range, default) in [
        ("min_flap", q.min_flap, 1..=1_000_000, defaults.min_flap),
        ("top", q.top, 1..=1000, defaults.top),
    ] {
        assert!(range.contains(&got), "{name} = {got}");
        if last(&pairs, name).is_none() {
            assert_eq!(got, default, "{name} default");
        }
    }
    assert_eq!(q.alertname.as_deref(), last(&pairs, "alertname"));
    assert_eq!(q.namespace.as_deref(), last(&pairs, "namespace"));
    check_times(&pairs, q.since, q.until);
}

/// The `/history` cursor codec: a text the decoder accepts is exactly the
/// encoder's spelling of that cursor (so the decoder never yields a cursor
/// the encoder could not have produced, nor takes a second spelling of
/// one), `cursor=` in a query agrees with the decoder, and a cursor built
/// from any fields (the first 16 bytes) round-trips.
///
/// # Panics
/// When a property fails.
pub fn cursor(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let decoded = Cursor::decode(text);
        if let Some(c) = decoded {
            assert_eq!(
                c.encode(),
                text,
                "decoded {c:?} from a spelling the encoder never writes"
            );
            assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }
        let query: String = form_urlencoded::byte_serialize(text.as_bytes()).collect();
        let parsed = parse_history_query(Some(&format!("cursor={query}")));
        match parsed {
            Ok(q) => assert_eq!(q.cursor, decoded, "cursor={query}"),
            Err(e) => {
                assert!(decoded.is_none() && !text.is_empty(), "cursor={query}: {e}");
                assert_eq!(e.param, "cursor");
            }
        }
    }
    let mut bytes = [0u8; 16];
    let n = data.len().min(16);
    bytes[..n].copy_from_slice(&data[..n]);
    let [a, b] = [&bytes[..8], &bytes[8..]]
        .map(|half| i64::from_le_bytes(half.try_into().expect("8 bytes")));
    let c = Cursor { event_at: a, id: b };
    let text = c.encode();
    assert_eq!(Cursor::decode(&text), Some(c), "{text}");
    let (x, y) = text.split_once('-').expect("two fields");
    for field in [x, y] {
        assert!((1..=16).contains(&field.len()));
        assert!(
            field
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }
}

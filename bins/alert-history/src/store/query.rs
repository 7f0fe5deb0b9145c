//! Reading events back: history pages, one alert's timeline, firing-now,
//! counts; and the `WHERE` builder the report shares.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sqlx::types::Json;

use super::{Cursor, Store, write};
use crate::config::Backend;
use crate::model::Status;

/// A bind parameter of a dynamically built query.
#[derive(Debug, Clone)]
pub(super) enum Param {
    I64(i64),
    Text(String),
    Json(Value),
}

/// Collects `WHERE` conditions and their parameters, numbering `$N`.
#[derive(Debug, Default)]
pub(super) struct Filter {
    pub(super) conditions: Vec<String>,
    pub(super) params: Vec<Param>,
}

impl Filter {
    pub(super) fn param(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("${}", self.params.len())
    }

    pub(super) fn eq(&mut self, column: &str, value: &Option<String>) {
        if let Some(v) = value {
            let p = self.param(Param::Text(v.clone()));
            self.conditions.push(format!("{column} = {p}"));
        }
    }

    pub(super) fn cmp(&mut self, column: &str, op: &str, value: Option<i64>) {
        if let Some(v) = value {
            let p = self.param(Param::I64(v));
            self.conditions.push(format!("{column} {op} {p}"));
        }
    }

    pub(super) fn sql(&self) -> String {
        if self.conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conditions.join(" AND "))
        }
    }
}

/// Filters of `GET /history`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryQuery {
    /// `alertname` equals.
    pub alertname: Option<String>,
    /// Firing or resolved events only.
    pub status: Option<Status>,
    /// `fingerprint` equals.
    pub fingerprint: Option<String>,
    /// `namespace` label equals.
    pub namespace: Option<String>,
    /// `severity` label equals.
    pub severity: Option<String>,
    /// Events at or after (epoch ms).
    pub since: Option<i64>,
    /// Events at or before (epoch ms).
    pub until: Option<i64>,
    /// Every `(name, value)` label must match.
    pub labels: Vec<(String, String)>,
    /// Page size, 1..=1000.
    pub limit: u32,
    /// Rows to skip (the predecessor's pagination; slow on deep pages).
    pub offset: u64,
    /// Keyset position: rows strictly older than it.
    pub cursor: Option<Cursor>,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRow {
    /// Row id (insertion order).
    pub id: i64,
    /// Alertmanager fingerprint.
    pub fingerprint: String,
    /// `alertname` label.
    pub alertname: String,
    /// `namespace` label.
    pub namespace: Option<String>,
    /// `severity` label.
    pub severity: Option<String>,
    /// `firing` or `resolved`.
    pub status: String,
    /// `startsAt`, epoch ms.
    pub starts_at: i64,
    /// `endsAt`, epoch ms.
    pub ends_at: i64,
    /// When the state change happened, epoch ms.
    pub event_at: i64,
    /// Labels.
    pub labels: Json<BTreeMap<String, String>>,
    /// Annotations.
    pub annotations: Json<Map<String, Value>>,
    /// `generatorURL`.
    pub generator_url: Option<String>,
    /// First delivery, epoch ms.
    pub received_at: i64,
    /// Latest delivery, epoch ms.
    pub last_seen: i64,
    /// Deliveries that carried this event.
    pub occurrences: i64,
}

const EVENT_COLUMNS: &str = "id, fingerprint, alertname, namespace, severity, status, starts_at, \
    ends_at, event_at, labels, annotations, generator_url, received_at, last_seen, occurrences";

/// The current state of one alert.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StateRow {
    /// Alertmanager fingerprint.
    pub fingerprint: String,
    /// `alertname` label.
    pub alertname: String,
    /// `namespace` label.
    pub namespace: Option<String>,
    /// `severity` label.
    pub severity: Option<String>,
    /// `firing` or `resolved`.
    pub status: String,
    /// `startsAt`, epoch ms.
    pub starts_at: i64,
    /// `endsAt`, epoch ms.
    pub ends_at: i64,
    /// Labels.
    pub labels: Json<BTreeMap<String, String>>,
    /// Annotations.
    pub annotations: Json<Map<String, Value>>,
    /// Latest delivery that changed or confirmed it, epoch ms.
    pub updated_at: i64,
}

/// A state row's columns; its labels and annotations are those of the
/// event it is (the state stores only that event's identity: each write of
/// a state writes its event in the same transaction), and its `updated_at`
/// that event's latest delivery (the row itself is written only when the
/// state changes). `{}` and the time of the change if retention has
/// deleted that event (a state still firing, not delivered for
/// `RETENTION_DAYS`).
const STATE_COLUMNS: &str = "s.fingerprint, s.alertname, s.namespace, s.severity, s.status, \
    s.starts_at, s.ends_at, COALESCE(e.labels, '{}') AS labels, \
    COALESCE(e.annotations, '{}') AS annotations, \
    COALESCE(e.last_seen, s.updated_at) AS updated_at";

/// The state table and, by its identity, its event ([`STATE_COLUMNS`]).
const STATE_FROM: &str = "alert_state s LEFT JOIN alert_events_seen e \
    ON e.fingerprint = s.fingerprint AND e.status = s.status \
    AND e.starts_at = s.starts_at AND e.ends_at = s.ends_at";

impl Store {
    /// A page of history, newest first (by event time, then id).
    ///
    /// # Errors
    /// The database error.
    pub async fn history(&self, q: &HistoryQuery) -> Result<Vec<EventRow>, sqlx::Error> {
        let mut f = Filter::default();
        f.eq("alertname", &q.alertname);
        f.eq("status", &q.status.map(|s| s.as_str().to_owned()));
        f.eq("fingerprint", &q.fingerprint);
        f.eq("namespace", &q.namespace);
        f.eq("severity", &q.severity);
        f.cmp("event_at", ">=", q.since);
        f.cmp("event_at", "<=", q.until);
        for (name, value) in &q.labels {
            match self.backend() {
                Backend::Postgres => {
                    let mut object = Map::new();
                    object.insert(name.clone(), Value::String(value.clone()));
                    let p = f.param(Param::Json(Value::Object(object)));
                    f.conditions.push(format!("labels @> {p}"));
                }
                Backend::Sqlite if !name.contains(['"', '\\']) => {
                    // Any UTF-8 name (`service.name`) is one key in a
                    // quoted JSON path.
                    let path = f.param(Param::Text(format!("$.\"{name}\"")));
                    let v = f.param(Param::Text(value.clone()));
                    f.conditions
                        .push(format!("json_extract(labels, {path}) = {v}"));
                }
                Backend::Sqlite => {
                    // A quote or backslash cannot be written in a JSON
                    // path: compare the keys themselves.
                    let k = f.param(Param::Text(name.clone()));
                    let v = f.param(Param::Text(value.clone()));
                    f.conditions.push(format!(
                        "EXISTS (SELECT 1 FROM json_each(labels) WHERE key = {k} AND value = {v})"
                    ));
                }
            }
        }
        if let Some(c) = q.cursor {
            let a = f.param(Param::I64(c.event_at));
            let b = f.param(Param::I64(c.id));
            f.conditions.push(format!("(event_at, id) < ({a}, {b})"));
        }
        let limit = f.param(Param::I64(i64::from(q.limit)));
        let offset = f.param(Param::I64(q.offset.min(i64::MAX as u64) as i64));
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM alert_events_seen{} ORDER BY event_at DESC, id DESC LIMIT {limit} OFFSET {offset}",
            f.sql()
        );
        on_read!(self, |pool| bind_all!(
            sqlx::query_as::<_, EventRow>(&sql),
            f.params
        )
        .fetch_all(pool)
        .await)
    }

    /// The raw alert JSON of every event of one alert, oldest first, exactly
    /// as delivered (unknown fields included).
    ///
    /// # Errors
    /// The database error.
    pub async fn raw_events(&self, fingerprint: &str) -> Result<Vec<Value>, sqlx::Error> {
        // Read as text and parsed here: a row stored before ingest checked
        // what is storable (JSON nested past serde_json's limit, `1e400`)
        // comes back as its text instead of failing the whole timeline.
        let raw = match self.backend() {
            Backend::Sqlite => "raw".to_owned(),
            Backend::Postgres => format!("({})::text", write::RAW_POSTGRES),
        };
        let sql =
            format!("SELECT {raw} FROM alert_events WHERE fingerprint = $1 ORDER BY event_at, id");
        let rows: Vec<(String,)> = on_read!(self, |pool| sqlx::query_as(&sql)
            .bind(fingerprint)
            .fetch_all(pool)
            .await)?;
        Ok(rows
            .into_iter()
            .map(|(raw,)| serde_json::from_str(&raw).unwrap_or(Value::String(raw)))
            .collect())
    }

    /// Every event of one alert, oldest first, and its current state.
    ///
    /// # Errors
    /// The database error.
    pub async fn alert(
        &self,
        fingerprint: &str,
    ) -> Result<(Vec<EventRow>, Option<StateRow>), sqlx::Error> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM alert_events_seen WHERE fingerprint = $1 ORDER BY event_at, id"
        );
        let state_sql =
            format!("SELECT {STATE_COLUMNS} FROM {STATE_FROM} WHERE s.fingerprint = $1");
        on_read!(self, |pool| {
            let events = sqlx::query_as::<_, EventRow>(&sql)
                .bind(fingerprint)
                .fetch_all(pool)
                .await?;
            let state = sqlx::query_as::<_, StateRow>(&state_sql)
                .bind(fingerprint)
                .fetch_optional(pool)
                .await?;
            Ok((events, state))
        })
    }

    /// Alerts whose current state is firing, most recently started first.
    ///
    /// # Errors
    /// The database error.
    pub async fn firing_now(&self, limit: u32) -> Result<Vec<StateRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {STATE_COLUMNS} FROM {STATE_FROM} WHERE s.status = 'firing' \
             ORDER BY s.starts_at DESC, s.fingerprint LIMIT $1"
        );
        on_read!(self, |pool| sqlx::query_as::<_, StateRow>(&sql)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)
    }

    /// How many events are stored.
    ///
    /// # Errors
    /// The database error.
    pub async fn count_events(&self) -> Result<i64, sqlx::Error> {
        on_read!(self, |pool| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM alert_events"
        )
        .fetch_one(pool)
        .await)
    }
}

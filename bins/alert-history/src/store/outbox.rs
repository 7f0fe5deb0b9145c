//! The outbox's write side: which targets each new event goes to, decided
//! and written in the transaction that stores the event (issue 19).
//!
//! The publisher installs a [`Route`] ([`Store::set_outbox_route`]); the
//! writers call it once per new event of a group commit (never for a
//! redelivery: a stored event already has its rows) and insert one
//! `publish_outbox` row per target it names, in the same transaction. With
//! no route installed (no targets), ingest writes nothing more than part 1
//! did.

use std::sync::Arc;

use parking_lot::RwLock;
use sqlx::{Postgres, Sqlite, Transaction};

use super::Store;
use super::write::Encoded;
use crate::routing::AlertView;

/// Decides the targets of a new event (their names; empty for none).
pub type Route = Arc<dyn Fn(&AlertView) -> Vec<Arc<str>> + Send + Sync>;

/// The installed route, shared by the store's clones and its writers.
#[derive(Default)]
pub(crate) struct OutboxRouting {
    route: RwLock<Option<Route>>,
}

impl std::fmt::Debug for OutboxRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRouting")
            .field("installed", &self.route.read().is_some())
            .finish()
    }
}

impl OutboxRouting {
    fn current(&self) -> Option<Route> {
        self.route.read().clone()
    }
}

impl Store {
    /// Installs (or, with `None`, removes) the route that decides, in the
    /// transaction storing each new event, which targets get an outbox row.
    pub fn set_outbox_route(&self, route: Option<Route>) {
        *self.outbox.route.write() = route;
    }
}

/// One outbox row to insert.
struct Row {
    event_id: i64,
    target: Arc<str>,
}

/// The rows for the new events `new` (id and event), by the installed
/// route; empty without one.
fn rows<'a>(routing: &OutboxRouting, new: impl Iterator<Item = (i64, &'a Encoded)>) -> Vec<Row> {
    let Some(route) = routing.current() else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for (event_id, e) in new {
        let view = e.view(event_id);
        for target in route(&view) {
            rows.push(Row { event_id, target });
        }
    }
    rows
}

/// Rows per statement: 4 parameters each.
const CHUNK: usize = 200;

fn insert_sql(placeholder: impl Fn(usize) -> String, rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO publish_outbox (event_id, target, created_at, next_attempt_at) VALUES ",
    );
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for p in 0..4 {
            if p > 0 {
                sql.push(',');
            }
            sql.push_str(&placeholder(r * 4 + p + 1));
        }
        sql.push(')');
    }
    sql
}

/// SQLite: inserts the outbox rows of `new` in the open transaction.
pub(super) async fn write_sqlite<'a>(
    tx: &mut Transaction<'_, Sqlite>,
    routing: &OutboxRouting,
    new: impl Iterator<Item = (i64, &'a Encoded)>,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    let rows = rows(routing, new);
    for chunk in rows.chunks(CHUNK) {
        let sql = insert_sql(|_| "?".to_owned(), chunk.len());
        let mut query = sqlx::query(&sql);
        for row in chunk {
            query = query
                .bind(row.event_id)
                .bind(&*row.target)
                .bind(now_ms)
                .bind(now_ms);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// PostgreSQL: inserts the outbox rows of `new` in the open transaction.
pub(super) async fn write_postgres<'a>(
    tx: &mut Transaction<'_, Postgres>,
    routing: &OutboxRouting,
    new: impl Iterator<Item = (i64, &'a Encoded)>,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    let rows = rows(routing, new);
    for chunk in rows.chunks(CHUNK) {
        let sql = insert_sql(|n| format!("${n}"), chunk.len());
        let mut query = sqlx::query(&sql);
        for row in chunk {
            query = query
                .bind(row.event_id)
                .bind(&*row.target)
                .bind(now_ms)
                .bind(now_ms);
        }
        query.persistent(false).execute(&mut **tx).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------- publisher side

/// One leased outbox row with its event.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// `publish_outbox.id`.
    pub id: i64,
    /// The target's name.
    pub target: String,
    /// When the row was written (the event's commit), epoch ms.
    pub created_at: i64,
    /// Attempts so far, this one included.
    pub attempts: i64,
    /// Set once a `delay` rule held the row: it is not held again.
    pub delayed_until: Option<i64>,
    /// The event; `None` when retention removed it meanwhile.
    pub alert: Option<AlertView>,
}

/// One `publish_history` row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryEntry {
    /// The event.
    pub event_id: i64,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The target's name.
    pub target: String,
    /// `success`, `failure`, `filtered` or `retry`.
    pub status: &'static str,
    /// Which attempt.
    pub attempt: i64,
    /// The destination's HTTP status, when known.
    pub response_code: Option<i64>,
    /// Commit → outcome, ms.
    pub latency_ms: Option<i64>,
    /// Why (a rule's name, an error).
    pub detail: Option<String>,
    /// When, epoch ms.
    pub at: i64,
}

/// A `publish_history` row read back.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct HistoryRecord {
    /// The event.
    pub event_id: i64,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The target's name.
    pub target: String,
    /// `success`, `failure`, `filtered` or `retry`.
    pub status: String,
    /// Which attempt.
    pub attempt: i64,
    /// The destination's HTTP status, when known.
    pub response_code: Option<i64>,
    /// Commit → outcome, ms.
    pub latency_ms: Option<i64>,
    /// Why.
    pub detail: Option<String>,
    /// When, epoch ms.
    pub at: i64,
}

/// Rows waiting for one target.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct Backlog {
    /// The target's name.
    pub target: String,
    /// Rows not yet settled.
    pub rows: i64,
    /// The oldest row's `created_at`, epoch ms.
    pub oldest: i64,
}

/// Outcomes of one target by status.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct Outcomes {
    /// The target's name.
    pub target: String,
    /// The status.
    pub status: String,
    /// How many.
    pub count: i64,
    /// Mean latency (commit → outcome), ms.
    pub avg_latency_ms: Option<f64>,
}

type EventTuple = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    i64,
    i64,
    String,
    String,
    Option<String>,
);

fn view_of(t: EventTuple) -> AlertView {
    let (id, fingerprint, alertname, namespace, severity, status, starts_at, ends_at, l, a, url) =
        t;
    AlertView {
        event_id: id,
        fingerprint,
        alertname,
        namespace,
        severity,
        status: crate::model::Status::parse(&status).unwrap_or(crate::model::Status::Firing),
        starts_at,
        ends_at,
        labels: serde_json::from_str(&l).unwrap_or_default(),
        annotations: serde_json::from_str(&a).unwrap_or_default(),
        generator_url: url,
    }
}

const CLAIM_SQLITE: &str = "UPDATE publish_outbox SET lease_owner = $1, lease_until = $2, \
     attempts = attempts + 1 \
     WHERE id IN (SELECT id FROM publish_outbox WHERE target = $3 AND next_attempt_at <= $4 \
                  AND (lease_until IS NULL OR lease_until < $4) ORDER BY id LIMIT $5) \
     RETURNING id, event_id, created_at, attempts, delayed_until";

const CLAIM_POSTGRES: &str = "WITH c AS (SELECT id FROM publish_outbox WHERE target = $3 \
         AND next_attempt_at <= $4 AND (lease_until IS NULL OR lease_until < $4) \
         ORDER BY id LIMIT $5 FOR UPDATE SKIP LOCKED) \
     UPDATE publish_outbox o SET lease_owner = $1, lease_until = $2, attempts = o.attempts + 1 \
     FROM c WHERE o.id = c.id \
     RETURNING o.id, o.event_id, o.created_at, o.attempts, o.delayed_until";

const EVENTS_SQLITE: &str = "SELECT id, fingerprint, alertname, namespace, severity, status, \
     starts_at, ends_at, labels, annotations, generator_url FROM alert_events \
     WHERE id IN (SELECT value FROM json_each($1))";

const EVENTS_POSTGRES: &str = "SELECT id, fingerprint, alertname, namespace, severity, status, \
     starts_at, ends_at, labels::text, annotations::text, generator_url FROM alert_events \
     WHERE id = ANY($1)";

const SETTLE: &str = "DELETE FROM publish_outbox WHERE id = $1 AND lease_owner = $2";

const HISTORY: &str = "INSERT INTO publish_history (event_id, fingerprint, target, status, \
     attempt, response_code, latency_ms, detail, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

macro_rules! bind_history {
    ($q:expr, $h:expr) => {
        $q.bind($h.event_id)
            .bind($h.fingerprint.as_str())
            .bind($h.target.as_str())
            .bind($h.status)
            .bind($h.attempt)
            .bind($h.response_code)
            .bind($h.latency_ms)
            .bind($h.detail.as_deref())
            .bind($h.at)
    };
}

impl Store {
    /// Leases up to `limit` due rows of `target` (oldest first) to `owner`
    /// until `now + lease_ms`, counting an attempt on each, with their
    /// events. On PostgreSQL rows another replica is leasing right now are
    /// skipped (`FOR UPDATE SKIP LOCKED`); an expired lease is taken over.
    ///
    /// # Errors
    /// The database's.
    pub async fn claim_outbox(
        &self,
        target: &str,
        owner: &str,
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, sqlx::Error> {
        type Claimed = (i64, i64, i64, i64, Option<i64>);
        let until = now + lease_ms;
        let (mut claimed, events): (Vec<Claimed>, Vec<EventTuple>) = match &self.pools {
            super::Pools::Sqlite { write, read, .. } => {
                let claimed: Vec<Claimed> = sqlx::query_as(CLAIM_SQLITE)
                    .bind(owner)
                    .bind(until)
                    .bind(target)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(write)
                    .await?;
                let ids = serde_json::to_string(&claimed.iter().map(|c| c.1).collect::<Vec<_>>())
                    .unwrap_or_else(|_| "[]".to_owned());
                let events = if claimed.is_empty() {
                    Vec::new()
                } else {
                    sqlx::query_as(EVENTS_SQLITE)
                        .bind(ids)
                        .fetch_all(read)
                        .await?
                };
                (claimed, events)
            }
            super::Pools::Postgres { pool, .. } => {
                let claimed: Vec<Claimed> = sqlx::query_as(CLAIM_POSTGRES)
                    .bind(owner)
                    .bind(until)
                    .bind(target)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?;
                let ids: Vec<i64> = claimed.iter().map(|c| c.1).collect();
                let events = if ids.is_empty() {
                    Vec::new()
                } else {
                    sqlx::query_as(EVENTS_POSTGRES)
                        .bind(ids)
                        .fetch_all(pool)
                        .await?
                };
                (claimed, events)
            }
        };
        claimed.sort_unstable_by_key(|c| c.0);
        let mut by_id: std::collections::HashMap<i64, AlertView> =
            events.into_iter().map(|t| (t.0, view_of(t))).collect();
        Ok(claimed
            .into_iter()
            .map(
                |(id, event_id, created_at, attempts, delayed_until)| OutboxRow {
                    id,
                    target: target.to_owned(),
                    created_at,
                    attempts,
                    delayed_until,
                    // One row per (event, target): each event is taken once.
                    alert: by_id.remove(&event_id),
                },
            )
            .collect())
    }

    /// Settles leased rows: each is deleted (if `owner` still holds it) and
    /// its outcome recorded in `publish_history`, in one transaction.
    /// Returns how many rows were still held (the others were taken over by
    /// another replica after the lease expired: their outcome is its to
    /// record).
    ///
    /// # Errors
    /// The database's; nothing is settled then.
    pub async fn settle_outbox(
        &self,
        owner: &str,
        settled: &[(i64, HistoryEntry)],
    ) -> Result<usize, sqlx::Error> {
        if settled.is_empty() {
            return Ok(0);
        }
        on_write!(self, |pool| in_transaction!(pool, |tx| {
            let mut held = 0;
            for (id, entry) in settled {
                let done = sqlx::query(SETTLE)
                    .bind(id)
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if done == 1 {
                    held += 1;
                    bind_history!(sqlx::query(HISTORY), entry)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            held
        }))
    }

    /// Gives leased rows back to be tried again at `next_attempt_at`
    /// (recording each `entry` as a `retry` if given).
    ///
    /// # Errors
    /// The database's.
    pub async fn release_outbox(
        &self,
        owner: &str,
        released: &[(i64, Option<HistoryEntry>)],
        next_attempt_at: i64,
    ) -> Result<(), sqlx::Error> {
        if released.is_empty() {
            return Ok(());
        }
        on_write!(self, |pool| in_transaction!(pool, |tx| {
            for (id, entry) in released {
                let done = sqlx::query(
                    "UPDATE publish_outbox SET lease_owner = NULL, lease_until = NULL, \
                     next_attempt_at = $3 WHERE id = $1 AND lease_owner = $2",
                )
                .bind(id)
                .bind(owner)
                .bind(next_attempt_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if done == 1
                    && let Some(entry) = entry
                {
                    bind_history!(sqlx::query(HISTORY), entry)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }))
    }

    /// Holds a leased row until `until` (a `delay` rule): released, not
    /// counted as an attempt, and never held again.
    ///
    /// # Errors
    /// The database's.
    pub async fn delay_outbox(&self, owner: &str, id: i64, until: i64) -> Result<(), sqlx::Error> {
        let sql = "UPDATE publish_outbox SET lease_owner = NULL, lease_until = NULL, \
                   delayed_until = $3, next_attempt_at = $3, attempts = attempts - 1 \
                   WHERE id = $1 AND lease_owner = $2";
        on_write!(self, |pool| {
            sqlx::query(sql)
                .bind(id)
                .bind(owner)
                .bind(until)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// Extends every lease `owner` holds to `until`; returns how many.
    ///
    /// # Errors
    /// The database's.
    pub async fn renew_outbox_leases(&self, owner: &str, until: i64) -> Result<u64, sqlx::Error> {
        let sql = "UPDATE publish_outbox SET lease_until = $2 WHERE lease_owner = $1";
        on_write!(self, |pool| {
            Ok(sqlx::query(sql)
                .bind(owner)
                .bind(until)
                .execute(pool)
                .await?
                .rows_affected())
        })
    }

    /// Rows waiting, per target.
    ///
    /// # Errors
    /// The database's.
    pub async fn outbox_backlog(&self) -> Result<Vec<Backlog>, sqlx::Error> {
        let sql = "SELECT target, count(*) AS rows, min(created_at) AS oldest \
                   FROM publish_outbox GROUP BY target ORDER BY target";
        on_read!(self, |pool| sqlx::query_as(sql).fetch_all(pool).await)
    }

    /// Outcomes since `since` (epoch ms) per target and status.
    ///
    /// # Errors
    /// The database's.
    pub async fn publish_outcomes(&self, since: i64) -> Result<Vec<Outcomes>, sqlx::Error> {
        let sql = "SELECT target, status, count(*) AS count, \
                   avg(CAST(latency_ms AS DOUBLE PRECISION)) AS avg_latency_ms \
                   FROM publish_history WHERE at >= $1 GROUP BY target, status \
                   ORDER BY target, status";
        let sqlite = "SELECT target, status, count(*) AS count, \
                   avg(CAST(latency_ms AS REAL)) AS avg_latency_ms \
                   FROM publish_history WHERE at >= $1 GROUP BY target, status \
                   ORDER BY target, status";
        match &self.pools {
            super::Pools::Sqlite { read, .. } => {
                sqlx::query_as(sqlite).bind(since).fetch_all(read).await
            }
            super::Pools::Postgres { pool, .. } => {
                sqlx::query_as(sql).bind(since).fetch_all(pool).await
            }
        }
    }

    /// The publishing history of one alert (every event of the
    /// fingerprint), oldest first, at most `limit` rows.
    ///
    /// # Errors
    /// The database's.
    pub async fn publish_history_of(
        &self,
        fingerprint: &str,
        limit: i64,
    ) -> Result<Vec<HistoryRecord>, sqlx::Error> {
        let sql = "SELECT event_id, fingerprint, target, status, attempt, response_code, \
                   latency_ms, detail, at FROM publish_history WHERE fingerprint = $1 \
                   ORDER BY at, id LIMIT $2";
        on_read!(self, |pool| sqlx::query_as(sql)
            .bind(fingerprint)
            .bind(limit)
            .fetch_all(pool)
            .await)
    }

    /// The publishing history of the given events.
    ///
    /// # Errors
    /// The database's.
    pub async fn publish_history_of_events(
        &self,
        event_ids: &[i64],
    ) -> Result<Vec<HistoryRecord>, sqlx::Error> {
        const COLUMNS: &str = "event_id, fingerprint, target, status, attempt, response_code, \
                               latency_ms, detail, at";
        match &self.pools {
            super::Pools::Sqlite { read, .. } => {
                let ids = serde_json::to_string(event_ids).unwrap_or_else(|_| "[]".to_owned());
                sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM publish_history \
                     WHERE event_id IN (SELECT value FROM json_each($1)) ORDER BY id"
                ))
                .bind(ids)
                .fetch_all(read)
                .await
            }
            super::Pools::Postgres { pool, .. } => {
                sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM publish_history WHERE event_id = ANY($1) ORDER BY id"
                ))
                .bind(event_ids.to_vec())
                .fetch_all(pool)
                .await
            }
        }
    }

    /// The largest outbox row id now (0 when empty): rows written later
    /// have larger ids.
    ///
    /// # Errors
    /// The database's.
    pub async fn outbox_max_id(&self) -> Result<i64, sqlx::Error> {
        let sql = "SELECT coalesce(max(id), 0) FROM publish_outbox";
        let (n,): (i64,) = on_read!(self, |pool| sqlx::query_as(sql).fetch_one(pool).await)?;
        Ok(n)
    }

    /// Outbox rows still waiting for the given events among those written
    /// after row `after` (a primary-key range: no index on `event_id` is
    /// kept for this).
    ///
    /// # Errors
    /// The database's.
    pub async fn outbox_rows_of_events(
        &self,
        event_ids: &[i64],
        after: i64,
    ) -> Result<i64, sqlx::Error> {
        match &self.pools {
            super::Pools::Sqlite { read, .. } => {
                let ids = serde_json::to_string(event_ids).unwrap_or_else(|_| "[]".to_owned());
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT count(*) FROM publish_outbox \
                     WHERE id > $2 AND event_id IN (SELECT value FROM json_each($1))",
                )
                .bind(ids)
                .bind(after)
                .fetch_one(read)
                .await?;
                Ok(n)
            }
            super::Pools::Postgres { pool, .. } => {
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT count(*) FROM publish_outbox WHERE id > $2 AND event_id = ANY($1)",
                )
                .bind(event_ids.to_vec())
                .bind(after)
                .fetch_one(pool)
                .await?;
                Ok(n)
            }
        }
    }

    /// The ids of stored events by identity (fingerprint, status,
    /// startsAt, endsAt); unknown identities are left out.
    ///
    /// # Errors
    /// The database's.
    pub async fn event_ids(
        &self,
        keys: &[(String, crate::model::Status, i64, i64)],
    ) -> Result<Vec<i64>, sqlx::Error> {
        let mut ids = Vec::with_capacity(keys.len());
        for (fingerprint, status, starts_at, ends_at) in keys {
            let sql = "SELECT id FROM alert_events WHERE fingerprint = $1 AND status = $2 \
                       AND starts_at = $3 AND ends_at = $4";
            let id: Option<(i64,)> = on_read!(self, |pool| sqlx::query_as(sql)
                .bind(fingerprint.as_str())
                .bind(status.as_str())
                .bind(starts_at)
                .bind(ends_at)
                .fetch_optional(pool)
                .await)?;
            ids.extend(id.map(|(id,)| id));
        }
        Ok(ids)
    }

    /// The current state of an alert: its status and `startsAt`.
    ///
    /// # Errors
    /// The database's.
    pub async fn alert_state_of(
        &self,
        fingerprint: &str,
    ) -> Result<Option<(crate::model::Status, i64)>, sqlx::Error> {
        let sql = "SELECT status, starts_at FROM alert_state WHERE fingerprint = $1";
        let row: Option<(String, i64)> = on_read!(self, |pool| sqlx::query_as(sql)
            .bind(fingerprint)
            .fetch_optional(pool)
            .await)?;
        Ok(row.and_then(|(s, at)| crate::model::Status::parse(&s).map(|s| (s, at))))
    }

    /// Gives up rows written before `cutoff` (epoch ms): each is deleted and
    /// recorded as a `failure` ("expired"), whoever leases it. Returns how
    /// many.
    ///
    /// # Errors
    /// The database's.
    pub async fn expire_outbox(&self, cutoff: i64, now: i64) -> Result<u64, sqlx::Error> {
        let sql_history = "INSERT INTO publish_history (event_id, fingerprint, target, status, \
             attempt, response_code, latency_ms, detail, at) \
             SELECT o.event_id, coalesce(e.fingerprint, ''), o.target, 'failure', o.attempts, \
                    NULL, $2 - o.created_at, 'expired: not published within the outbox retention', $2 \
             FROM publish_outbox o LEFT JOIN alert_events e ON e.id = o.event_id \
             WHERE o.created_at < $1";
        let sql_delete = "DELETE FROM publish_outbox WHERE created_at < $1";
        on_write!(self, |pool| in_transaction!(pool, |tx| {
            sqlx::query(sql_history)
                .bind(cutoff)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(sql_delete)
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        }))
    }
}

//! The write path of ingest: encoding a delivery, merging the deliveries of
//! one group commit, and the multi-row upserts both databases run.
//!
//! A delivery is encoded on the caller's task ([`Delivery::encode`]: JSON
//! columns serialized once, duplicates within the delivery folded), so the
//! writers only bind and execute. Rows are written in chunks whose sizes
//! are either at most [`EXACT_CHUNK`] or a power of two up to
//! [`MAX_CHUNK`] (see [`chunks`]), so each table has at most 35 distinct
//! statements and every one stays in sqlx's per-connection statement cache
//! instead of being parsed again.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::OnceLock;

use sqlx::{Postgres, Sqlite, Transaction};

use super::outbox::{self, OutboxRouting};
use crate::config::Backend;
use crate::model::{NewEvent, Status, fnv1a64};

/// The largest number of rows in one statement (at most 16 parameters
/// each: 4,096 parameters, under both databases' limits).
pub(super) const MAX_CHUNK: usize = 256;

/// Groups of up to this many rows go in one statement of exactly their
/// size (a group commit at a steady rate is usually this small).
pub(super) const EXACT_CHUNK: usize = 32;

/// Distinct chunk sizes: 1 to [`EXACT_CHUNK`], then the powers of two up
/// to [`MAX_CHUNK`].
const SIZES: usize =
    EXACT_CHUNK + (MAX_CHUNK.trailing_zeros() - EXACT_CHUNK.trailing_zeros()) as usize;

/// Statements a connection keeps prepared: every chunk size of both
/// tables, and room for the queries.
pub(super) const STATEMENT_CACHE: usize = 256;

/// The slot of a chunk size in [`SIZES`].
fn size_slot(rows: usize) -> usize {
    if rows <= EXACT_CHUNK {
        rows - 1
    } else {
        EXACT_CHUNK - 1 + (rows.trailing_zeros() - EXACT_CHUNK.trailing_zeros()) as usize
    }
}

/// The chunk size in slot `slot` of [`SIZES`].
fn slot_size(slot: usize) -> usize {
    if slot < EXACT_CHUNK {
        slot + 1
    } else {
        EXACT_CHUNK << (slot + 1 - EXACT_CHUNK)
    }
}

/// One alert event, ready to bind: JSON columns already serialized.
#[derive(Debug)]
pub(super) struct Encoded {
    fingerprint: String,
    alertname: String,
    namespace: Option<String>,
    severity: Option<String>,
    status: Status,
    starts_at: i64,
    ends_at: i64,
    labels: String,
    annotations: String,
    generator_url: Option<String>,
    raw: String,
    /// The delivery's `notification_reason`.
    notification_reason: Option<String>,
    /// FNV-1a 64 of `raw` as delivered (PostgreSQL: a redelivery with the
    /// same hash is the same alert, and its row is left alone).
    content_hash: i64,
}

impl Encoded {
    fn new(event: &NewEvent) -> Encoded {
        Encoded {
            fingerprint: event.fingerprint.clone(),
            alertname: event.alertname.clone(),
            namespace: event.namespace.clone(),
            severity: event.severity.clone(),
            status: event.status,
            starts_at: event.starts_at,
            ends_at: event.ends_at,
            labels: json_text(&event.labels),
            annotations: json_text(&event.annotations),
            generator_url: event.generator_url.clone(),
            raw: event.raw.clone(),
            notification_reason: event.notification_reason.clone(),
            content_hash: fnv1a64([event.raw.as_bytes()]) as i64,
        }
    }

    fn key(&self) -> (&str, Status, i64, i64) {
        (&self.fingerprint, self.status, self.starts_at, self.ends_at)
    }

    /// [`key`](Self::key) as the database returns it (status as text).
    fn row_key(&self) -> (&str, &str, i64, i64) {
        (
            &self.fingerprint,
            self.status.as_str(),
            self.starts_at,
            self.ends_at,
        )
    }

    fn event_at(&self) -> i64 {
        match self.status {
            Status::Firing => self.starts_at,
            Status::Resolved => self.ends_at,
        }
    }

    /// The order of states of one fingerprint: a later `startsAt` is newer;
    /// at the same `startsAt`, resolved is newer than firing.
    fn state_order(&self) -> (i64, Status) {
        (self.starts_at, self.status)
    }

    /// Whether this event replaces `old` as its fingerprint's state: a
    /// later `startsAt`, or at the same `startsAt` a resolution over
    /// firing or over a resolution with another `endsAt` (the state
    /// statements' condition).
    fn moves_state_forward(&self, old: &Encoded) -> bool {
        self.starts_at > old.starts_at
            || (self.starts_at == old.starts_at
                && self.status == Status::Resolved
                && (old.status == Status::Firing || self.ends_at != old.ends_at))
    }
}

impl Encoded {
    /// What a route sees of this event: its identity, the label-derived
    /// columns and its labels (annotations are left out: routes filter on
    /// labels).
    pub(super) fn view(&self, event_id: i64) -> crate::routing::AlertView {
        let labels: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&self.labels).unwrap_or_default();
        crate::routing::AlertView {
            event_id,
            fingerprint: self.fingerprint.clone(),
            alertname: self.alertname.clone(),
            namespace: self.namespace.clone(),
            severity: self.severity.clone(),
            status: self.status,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            labels,
            annotations: serde_json::Map::new(),
            generator_url: self.generator_url.clone(),
        }
    }
}

fn json_text<T: serde::Serialize + ?Sized>(value: &T) -> String {
    // Maps of strings and `serde_json::Value`s always serialize.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

/// One delivery, encoded: its distinct events in key order, and for each
/// fingerprint the index of its newest event (the state-table row).
#[derive(Debug)]
pub(super) struct Delivery {
    events: Vec<Encoded>,
    latest: Vec<usize>,
    now_ms: i64,
}

impl Delivery {
    /// Folds repeated events (PostgreSQL refuses to update one row twice in
    /// a statement; the last copy wins, as if delivered one after the
    /// other) in key order (so concurrent PostgreSQL transactions lock rows
    /// in the same order and cannot deadlock), and picks each fingerprint's
    /// newest event for the state table.
    pub(super) fn encode(events: &[NewEvent], now_ms: i64) -> Delivery {
        let mut unique: std::collections::BTreeMap<_, &NewEvent> = Default::default();
        for event in events {
            unique.insert(event.key(), event);
        }
        let events: Vec<Encoded> = unique.into_values().map(Encoded::new).collect();
        let mut newest: HashMap<&str, usize> = HashMap::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            match newest.entry(&event.fingerprint) {
                Entry::Vacant(v) => {
                    v.insert(i);
                }
                Entry::Occupied(mut o) => {
                    if event.state_order() > events[*o.get()].state_order() {
                        o.insert(i);
                    }
                }
            }
        }
        let mut latest: Vec<usize> = newest.into_values().collect();
        latest.sort_unstable();
        Delivery {
            events,
            latest,
            now_ms,
        }
    }
}

/// An `alert_events` row of one statement: the event as first delivered,
/// annotations and raw JSON as last delivered, and how many deliveries
/// carried it.
#[derive(Debug, Clone, Copy)]
struct EventWrite<'a> {
    first: &'a Encoded,
    last: &'a Encoded,
    received_at: i64,
    last_seen: i64,
    occurrences: i64,
    /// The delivery (index in the group) that saved it if it is new.
    delivery: usize,
}

/// An `alert_state` row of one statement.
#[derive(Debug, Clone, Copy)]
struct StateWrite<'a> {
    event: &'a Encoded,
    updated_at: i64,
}

/// The rows that a group of deliveries writes, as if the deliveries were
/// written one after the other in order.
#[derive(Debug)]
struct Merged<'a> {
    events: Vec<EventWrite<'a>>,
    states: Vec<StateWrite<'a>>,
}

fn merge<'a>(deliveries: &[&'a Delivery]) -> Merged<'a> {
    let capacity = deliveries.iter().map(|d| d.events.len()).sum();
    let mut index: HashMap<(&str, Status, i64, i64), usize> = HashMap::with_capacity(capacity);
    let mut events: Vec<EventWrite<'_>> = Vec::with_capacity(capacity);
    let mut state_index: HashMap<&str, usize> = HashMap::with_capacity(capacity);
    let mut states: Vec<StateWrite<'_>> = Vec::with_capacity(capacity);
    for (d, delivery) in deliveries.iter().enumerate() {
        for event in &delivery.events {
            match index.entry(event.key()) {
                Entry::Vacant(v) => {
                    v.insert(events.len());
                    events.push(EventWrite {
                        first: event,
                        last: event,
                        received_at: delivery.now_ms,
                        last_seen: delivery.now_ms,
                        occurrences: 1,
                        delivery: d,
                    });
                }
                Entry::Occupied(o) => {
                    let w = &mut events[*o.get()];
                    w.last = event;
                    w.last_seen = w.last_seen.max(delivery.now_ms);
                    w.occurrences += 1;
                }
            }
        }
        for &i in &delivery.latest {
            let event = &delivery.events[i];
            let write = StateWrite {
                event,
                updated_at: delivery.now_ms,
            };
            match state_index.entry(&event.fingerprint) {
                Entry::Vacant(v) => {
                    v.insert(states.len());
                    states.push(write);
                }
                Entry::Occupied(o) => {
                    // A later delivery's state replaces an earlier one only
                    // if it moves the state forward (the statement's WHERE,
                    // applied in order).
                    let cur = &mut states[*o.get()];
                    if event.moves_state_forward(cur.event) {
                        *cur = write;
                    }
                }
            }
        }
    }
    Merged { events, states }
}

/// Chunk sizes for `n` rows, largest first: powers of two of at most
/// [`MAX_CHUNK`] while more than [`EXACT_CHUNK`] rows are left, then one
/// chunk of exactly the rest. A group commit of up to 32 rows (the usual
/// size at a steady rate) is one statement per table, so one round trip to
/// the database; larger ones take a few, and at most 35 statements per
/// table ever exist, so all stay prepared (PostgreSQL plans a statement of
/// thousands of parameters slowly; re-preparing one for every distinct
/// group size cost more than the extra statements).
fn chunks(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if n == 0 {
            return None;
        }
        let size = if n >= MAX_CHUNK {
            MAX_CHUNK
        } else if n <= EXACT_CHUNK {
            n
        } else {
            1 << (usize::BITS - 1 - n.leading_zeros())
        };
        n -= size;
        Some(size)
    })
}

/// `rows` cut into the chunks of [`chunks`].
fn chunked<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut at = 0;
    chunks(rows.len()).map(move |size| {
        let chunk = &rows[at..at + size];
        at += size;
        chunk
    })
}

const EVENT_PARAMS: usize = 16;
const STATE_PARAMS: usize = 8;

/// The `VALUES` tuples for `rows` rows of `params` parameters each.
///
/// PostgreSQL gets `$1, $2, ...` (JSON is bound as text and cast where it
/// is used, so rows that are dropped are never parsed). SQLite gets
/// anonymous `?`: sqlx looks up each named parameter's name, which SQLite
/// finds by a linear scan, so `$N` names cost O(n²) in a statement of
/// thousands of parameters.
fn values(backend: Backend, rows: usize, params: usize) -> String {
    let mut sql = String::with_capacity(rows * params * 8);
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for p in 0..params {
            if p > 0 {
                sql.push(',');
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    sql.push('$');
                    sql.push_str(&(r * params + p + 1).to_string());
                }
            }
        }
        sql.push(')');
    }
    sql
}

fn build_event_sql(backend: Backend, rows: usize) -> String {
    const COLUMNS: &str = "fingerprint, alertname, namespace, severity, status, starts_at, \
                           ends_at, event_at, labels, annotations, generator_url, raw, \
                           received_at, last_seen, occurrences, notification_reason";
    match backend {
        // SQLite keeps the alert's JSON text exactly as delivered, updates
        // a redelivered event's row in place, and finds its new rows after
        // the statements (see `write_sqlite`): one row back, not one per
        // event.
        Backend::Sqlite => format!(
            "INSERT INTO alert_events ({COLUMNS}) VALUES {} \
             ON CONFLICT (fingerprint, status, starts_at, ends_at) DO UPDATE SET \
             last_seen = CASE WHEN excluded.last_seen > alert_events.last_seen \
                 THEN excluded.last_seen ELSE alert_events.last_seen END, \
             occurrences = alert_events.occurrences + excluded.occurrences, \
             annotations = excluded.annotations, generator_url = excluded.generator_url, \
             raw = excluded.raw",
            values(backend, rows, EVENT_PARAMS)
        ),
        // PostgreSQL inserts new events only: rows already stored are
        // dropped by a primary-key lookup before their JSON is parsed, and
        // `DO NOTHING` (which takes no lock) covers a concurrent insert of
        // the same event. Redeliveries go through `redelivery_sql`. `raw`
        // is stored without what the row's own columns hold
        // (`stripped_raw`); the subquery (`OFFSET 0` keeps it one) parses
        // each JSON parameter once.
        Backend::Postgres => format!(
            "INSERT INTO alert_events ({COLUMNS}, content_hash) \
             SELECT fingerprint, alertname, namespace, severity, status, starts_at, ends_at, \
                 event_at, l, a, generator_url, {}, received_at, last_seen, occurrences, \
                 notification_reason, content_hash \
             FROM (SELECT v.*, v.labels::jsonb AS l, v.annotations::jsonb AS a, \
                       v.raw::jsonb AS r \
                   FROM (VALUES {}) AS v ({COLUMNS}, content_hash) \
                   WHERE (SELECT 1 FROM alert_events x \
                          WHERE x.fingerprint = v.fingerprint AND x.status = v.status \
                            AND x.starts_at = v.starts_at AND x.ends_at = v.ends_at \
                          LIMIT 1) IS NULL \
                   OFFSET 0) w \
             ON CONFLICT (fingerprint, status, starts_at, ends_at) DO NOTHING \
             RETURNING id, fingerprint, status, starts_at, ends_at",
            stripped_raw("r", "l", "a", "status", "generator_url"),
            values(backend, rows, EVENT_PARAMS + 1)
        ),
    }
}

/// PostgreSQL stores `raw` without what its row's own columns already hold
/// (`labels`, `annotations`, `status` and `generatorURL`: about half of a
/// row, and of its WAL); [`RAW_POSTGRES`] puts them back when it is read. A
/// key is left out only where it equals its column (`annotations` only
/// when not empty, `generatorURL` only when there is one), so what comes
/// back is what was delivered. The arguments are SQL expressions: the
/// delivered alert (JSONB) and the row's columns.
fn stripped_raw(raw: &str, labels: &str, annotations: &str, status: &str, url: &str) -> String {
    format!(
        "({raw} - (CASE WHEN {raw} -> 'labels' = {labels} \
                       THEN ARRAY['labels'] ELSE ARRAY[]::text[] END \
                  || CASE WHEN {annotations} <> '{{}}' AND {raw} -> 'annotations' = {annotations} \
                       THEN ARRAY['annotations'] ELSE ARRAY[]::text[] END \
                  || CASE WHEN {raw} -> 'status' = to_jsonb({status}) \
                       THEN ARRAY['status'] ELSE ARRAY[]::text[] END \
                  || CASE WHEN {raw} -> 'generatorURL' = to_jsonb({url}) \
                       THEN ARRAY['generatorURL'] ELSE ARRAY[]::text[] END))"
    )
}

/// The stored event's alert as delivered, on PostgreSQL: `raw` with what
/// [`stripped_raw`] left out put back (a key still in `raw` wins). `status`
/// is always delivered; `annotations` come back only when not empty and
/// `generatorURL` when there is one, as only then were they left out.
pub(super) const RAW_POSTGRES: &str = "jsonb_build_object('labels', labels, 'status', status) \
    || CASE WHEN annotations <> '{}' THEN jsonb_build_object('annotations', annotations) \
            ELSE '{}' END \
    || CASE WHEN generator_url IS NOT NULL \
            THEN jsonb_build_object('generatorURL', generator_url) ELSE '{}' END \
    || raw";

const REDELIVERY_PARAMS: usize = 10;

/// PostgreSQL: counts redeliveries of stored events (rows the insert did
/// not write) into `alert_event_redeliveries`, and returns those whose
/// delivered alert differs from the stored one (another `content_hash`:
/// annotations, generatorURL or unknown fields changed) with their new
/// columns, for [`CONTENT_UPDATE`]. The event row itself is only read: it
/// is usually on a page written long ago, and changing that page would
/// also log all of it once per checkpoint. JSON is parsed only for the
/// changed rows.
///
/// Each event is found by a lateral lookup on the unique identity index,
/// never a join, whose plan (cached per connection) could have been chosen
/// while the table was small. Rows keep the order bound (identity order),
/// so concurrent transactions lock counter rows in the same order.
fn build_redelivery_sql(rows: usize) -> String {
    format!(
        "WITH v (fingerprint, status, starts_at, ends_at, last_seen, occurrences, content_hash, \
                 annotations, generator_url, raw) AS (VALUES {}), \
         f AS MATERIALIZED ( \
             SELECT v.*, e.id, e.stored_labels, \
                 e.stored_hash IS DISTINCT FROM v.content_hash AS changed \
             FROM v, LATERAL ( \
                 SELECT id, labels AS stored_labels, content_hash AS stored_hash \
                 FROM alert_events x \
                 WHERE x.fingerprint = v.fingerprint AND x.status = v.status \
                   AND x.starts_at = v.starts_at AND x.ends_at = v.ends_at \
                 LIMIT 1) e), \
         counted AS ( \
             INSERT INTO alert_event_redeliveries (id, last_seen, occurrences) \
             SELECT id, last_seen, occurrences FROM f \
             ON CONFLICT (id) DO UPDATE SET \
                 last_seen = GREATEST(alert_event_redeliveries.last_seen, excluded.last_seen), \
                 occurrences = alert_event_redeliveries.occurrences + excluded.occurrences) \
         SELECT id, annotations, generator_url, {}::text, content_hash \
         FROM (SELECT f.*, f.annotations::jsonb AS a, f.raw::jsonb AS r \
               FROM f WHERE changed OFFSET 0) c",
        values(Backend::Postgres, rows, REDELIVERY_PARAMS),
        stripped_raw("r", "stored_labels", "a", "status", "generator_url"),
    )
}

/// PostgreSQL: the new annotations, generatorURL, raw alert and content
/// hash of stored events whose redelivery changed them, by id (sorted).
/// Run unprepared: planned each time with the table's real size (see
/// [`build_redelivery_sql`]), and only when something changed.
const CONTENT_UPDATE: &str = "UPDATE alert_events e \
    SET annotations = c.annotations::jsonb, generator_url = c.generator_url, \
        raw = c.raw::jsonb, content_hash = c.content_hash \
    FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[]) \
        AS c (id, annotations, generator_url, raw, content_hash) \
    WHERE e.id = c.id";

fn build_state_sql(backend: Backend, rows: usize) -> String {
    // A state moves forward only: a newer startsAt wins; at the same
    // startsAt a resolution wins over firing (and over an earlier
    // resolution with another endsAt), and firing never undoes a
    // resolution. A delivery of the state already stored (every
    // redelivery) changes nothing, so it writes nothing: `updated_at` is
    // when the state last changed, and reads take its latest delivery from
    // the event (`STATE_COLUMNS`). No labels or annotations either: the
    // row's event (same identity, written in the same transaction) holds
    // them, and reads join to it.
    const COLUMNS: &str =
        "fingerprint, alertname, namespace, severity, status, starts_at, ends_at, updated_at";
    const SET: &str = "alertname = excluded.alertname, namespace = excluded.namespace, \
         severity = excluded.severity, status = excluded.status, \
         starts_at = excluded.starts_at, ends_at = excluded.ends_at, \
         updated_at = excluded.updated_at";
    let forward = |new: &str, old: &str| {
        format!(
            "({new}.starts_at > {old}.starts_at \
              OR ({new}.starts_at = {old}.starts_at AND {new}.status = 'resolved' \
                  AND ({old}.status = 'firing' OR {new}.ends_at <> {old}.ends_at)))"
        )
    };
    let values = values(backend, rows, STATE_PARAMS);
    match backend {
        Backend::Sqlite => format!(
            "INSERT INTO alert_state ({COLUMNS}) VALUES {values} \
             ON CONFLICT (fingerprint) DO UPDATE SET {SET} WHERE {}",
            forward("excluded", "alert_state")
        ),
        // `ON CONFLICT ... DO UPDATE ... WHERE` locks the row even when the
        // condition fails, which writes the row's page (and a full-page
        // image after each checkpoint) for nothing; so rows that would not
        // move the state forward are dropped first, by a plain read. A
        // state changed by another transaction since that read only moved
        // forward, so a row dropped is still not newer; one that is kept
        // still meets the condition below.
        //
        // The read is a correlated subquery, not a join: a join's plan is
        // cached per connection, and one chosen while the table was small
        // (a hash join over all of it) stays when it is large. A subquery
        // is always one primary-key lookup per row. Rows stay in the order
        // bound (fingerprint order), so concurrent transactions lock them
        // in the same order.
        Backend::Postgres => format!(
            "INSERT INTO alert_state ({COLUMNS}) \
             SELECT * FROM (VALUES {values}) AS v ({COLUMNS}) \
             WHERE COALESCE((SELECT {} FROM alert_state s \
                             WHERE s.fingerprint = v.fingerprint), true) \
             ON CONFLICT (fingerprint) DO UPDATE SET {SET} WHERE {}",
            forward("v", "s"),
            forward("excluded", "alert_state")
        ),
    }
}

/// The statements for every chunk size ([`SIZES`]), built once per
/// backend.
fn cached_sql(
    cache: &'static [OnceLock<Vec<String>>; 2],
    build: fn(Backend, usize) -> String,
    backend: Backend,
    rows: usize,
) -> &'static str {
    debug_assert!(rows <= EXACT_CHUNK || (rows.is_power_of_two() && rows <= MAX_CHUNK));
    let slot = match backend {
        Backend::Sqlite => &cache[0],
        Backend::Postgres => &cache[1],
    };
    let all = slot.get_or_init(|| (0..SIZES).map(|i| build(backend, slot_size(i))).collect());
    &all[size_slot(rows)]
}

fn event_sql(backend: Backend, rows: usize) -> &'static str {
    static SQL: [OnceLock<Vec<String>>; 2] = [OnceLock::new(), OnceLock::new()];
    cached_sql(&SQL, build_event_sql, backend, rows)
}

fn redelivery_sql(rows: usize) -> &'static str {
    static SQL: [OnceLock<Vec<String>>; 2] = [OnceLock::new(), OnceLock::new()];
    cached_sql(
        &SQL,
        |_, rows| build_redelivery_sql(rows),
        Backend::Postgres,
        rows,
    )
}

fn state_sql(backend: Backend, rows: usize) -> &'static str {
    static SQL: [OnceLock<Vec<String>>; 2] = [OnceLock::new(), OnceLock::new()];
    cached_sql(&SQL, build_state_sql, backend, rows)
}

/// Binds the `alert_events` parameters of `rows`.
macro_rules! bind_events {
    ($query:expr, $rows:expr $(, last.$extra:ident)?) => {{
        let mut query = $query;
        for w in $rows {
            let (e, last) = (w.first, w.last);
            query = query
                .bind(e.fingerprint.as_str())
                .bind(e.alertname.as_str())
                .bind(e.namespace.as_deref())
                .bind(e.severity.as_deref())
                .bind(e.status.as_str())
                .bind(e.starts_at)
                .bind(e.ends_at)
                .bind(e.event_at())
                .bind(e.labels.as_str())
                .bind(last.annotations.as_str())
                .bind(last.generator_url.as_deref())
                .bind(last.raw.as_str())
                .bind(w.received_at)
                .bind(w.last_seen)
                .bind(w.occurrences)
                .bind(e.notification_reason.as_deref());
            $(query = query.bind(last.$extra);)?
        }
        query
    }};
}

/// Binds the `alert_state` parameters of `rows`.
macro_rules! bind_states {
    ($query:expr, $rows:expr) => {{
        let mut query = $query;
        for w in $rows {
            let e = w.event;
            query = query
                .bind(e.fingerprint.as_str())
                .bind(e.alertname.as_str())
                .bind(e.namespace.as_deref())
                .bind(e.severity.as_deref())
                .bind(e.status.as_str())
                .bind(e.starts_at)
                .bind(e.ends_at)
                .bind(w.updated_at);
        }
        query
    }};
}

/// Writes the state rows of `$merged` in the open transaction `$tx`.
macro_rules! write_states {
    ($tx:expr, $backend:expr, $merged:expr) => {
        for rows in chunked(&$merged.states) {
            bind_states!(sqlx::query(state_sql($backend, rows.len())), rows)
                .execute(&mut **$tx)
                .await?;
        }
    };
}

/// Writes the deliveries of one SQLite group commit in the open
/// transaction, as if one after the other; returns each one's new events.
///
/// The upserts return nothing: sqlx hands each returned row from its
/// SQLite thread to the async side one at a time, which cost more than the
/// upsert itself. The transaction is the database's only writer and ids
/// only grow (`AUTOINCREMENT`), so the new events are exactly those with an
/// id above the largest before the statements; one query returns their keys
/// as a single JSON array.
pub(super) async fn write_sqlite(
    tx: &mut Transaction<'_, Sqlite>,
    deliveries: &[&Delivery],
    outbox: &OutboxRouting,
) -> Result<Vec<u64>, sqlx::Error> {
    let merged = merge(deliveries);
    let (before,): (i64,) = sqlx::query_as("SELECT coalesce(max(id), 0) FROM alert_events")
        .fetch_one(&mut **tx)
        .await?;
    for rows in chunked(&merged.events) {
        bind_events!(sqlx::query(event_sql(Backend::Sqlite, rows.len())), rows)
            .execute(&mut **tx)
            .await?;
    }
    let (new,): (String,) = sqlx::query_as(
        "SELECT coalesce(json_group_array(json_array(id, fingerprint, status, starts_at, \
         ends_at)), '[]') FROM alert_events WHERE id > $1",
    )
    .bind(before)
    .fetch_one(&mut **tx)
    .await?;
    let new: Vec<(i64, String, String, i64, i64)> = serde_json::from_str(&new)
        .map_err(|e| sqlx::Error::Decode(format!("new event keys: {e}").into()))?;
    let index: HashMap<(&str, &str, i64, i64), usize> = merged
        .events
        .iter()
        .enumerate()
        .map(|(i, w)| (w.first.row_key(), i))
        .collect();
    let mut saved = vec![0u64; deliveries.len()];
    let mut new_events: Vec<(i64, &Encoded)> = Vec::new();
    for (id, fingerprint, status, starts_at, ends_at) in &new {
        if let Some(&i) = index.get(&(fingerprint.as_str(), status.as_str(), *starts_at, *ends_at))
        {
            let w = &merged.events[i];
            saved[w.delivery] += 1;
            new_events.push((*id, w.last));
        }
    }
    let now = deliveries.last().map_or(0, |d| d.now_ms);
    outbox::write_sqlite(tx, outbox, new_events.into_iter(), now).await?;
    write_states!(tx, Backend::Sqlite, merged);
    Ok(saved)
}

/// PostgreSQL arguments with room for `rows` of `params` parameters each
/// and all their text: bound one by one into an empty buffer, the
/// arguments of a chunk (hundreds of kB) were grown and copied about ten
/// times.
fn pg_arguments(rows: &[EventWrite<'_>], params: usize) -> sqlx::postgres::PgArguments {
    use sqlx::Arguments;
    let text: usize = rows
        .iter()
        .map(|w| {
            let (e, last) = (w.first, w.last);
            e.fingerprint.len()
                + e.alertname.len()
                + e.namespace.as_ref().map_or(0, String::len)
                + e.severity.as_ref().map_or(0, String::len)
                + e.labels.len()
                + last.annotations.len()
                + last.generator_url.as_ref().map_or(0, String::len)
                + last.raw.len()
                + e.notification_reason.as_ref().map_or(0, String::len)
        })
        .sum();
    let mut arguments = sqlx::postgres::PgArguments::default();
    // Each value: a 4-byte length, then at most 8 bytes or its text.
    arguments.reserve(rows.len() * params, text + rows.len() * params * 12);
    arguments
}

/// Writes the deliveries of one PostgreSQL group commit in the open
/// transaction, as if one after the other; returns each one's new events.
///
/// In phases, each over all rows in key order (events by identity, states
/// by fingerprint), so concurrent transactions take each kind of lock in
/// the same order and cannot deadlock: insert the new events; count the
/// redeliveries of stored ones (and collect those whose alert changed);
/// update the changed ones, by id; move the states forward.
pub(super) async fn write_postgres(
    tx: &mut Transaction<'_, Postgres>,
    deliveries: &[&Delivery],
    outbox: &OutboxRouting,
) -> Result<Vec<u64>, sqlx::Error> {
    let mut merged = merge(deliveries);
    merged
        .events
        .sort_unstable_by(|a, b| a.first.key().cmp(&b.first.key()));
    merged
        .states
        .sort_unstable_by(|a, b| a.event.fingerprint.cmp(&b.event.fingerprint));
    let mut saved = vec![0u64; deliveries.len()];
    let mut stored: Vec<EventWrite<'_>> = Vec::new();
    let mut new_events: Vec<(i64, &Encoded)> = Vec::new();
    for rows in chunked(&merged.events) {
        let returned: Vec<(i64, String, String, i64, i64)> = bind_events!(
            sqlx::query_as_with(
                event_sql(Backend::Postgres, rows.len()),
                pg_arguments(rows, EVENT_PARAMS + 1)
            ),
            rows,
            last.content_hash
        )
        .fetch_all(&mut **tx)
        .await?;
        // RETURNING order is unspecified: match rows by key.
        let new: HashMap<(&str, &str, i64, i64), i64> = returned
            .iter()
            .map(|(id, f, s, start, end)| ((f.as_str(), s.as_str(), *start, *end), *id))
            .collect();
        for w in rows {
            if let Some(&id) = new.get(&w.first.row_key()) {
                saved[w.delivery] += 1;
                new_events.push((id, w.last));
            } else {
                stored.push(*w);
            }
        }
    }
    let mut changed: Vec<(i64, String, Option<String>, String, i64)> = Vec::new();
    for rows in chunked(&stored) {
        let mut query = sqlx::query_as_with(redelivery_sql(rows.len()), pg_arguments(rows, 10));
        for w in rows {
            let (e, last) = (w.first, w.last);
            query = query
                .bind(e.fingerprint.as_str())
                .bind(e.status.as_str())
                .bind(e.starts_at)
                .bind(e.ends_at)
                .bind(w.last_seen)
                .bind(w.occurrences)
                .bind(last.content_hash)
                .bind(last.annotations.as_str())
                .bind(last.generator_url.as_deref())
                .bind(last.raw.as_str());
        }
        changed.extend(query.fetch_all(&mut **tx).await?);
    }
    if !changed.is_empty() {
        changed.sort_unstable_by_key(|c| c.0);
        let (mut ids, mut annotations, mut urls, mut raws, mut hashes) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (id, a, url, raw, hash) in changed {
            ids.push(id);
            annotations.push(a);
            urls.push(url);
            raws.push(raw);
            hashes.push(hash);
        }
        sqlx::query(CONTENT_UPDATE)
            .bind(ids)
            .bind(annotations)
            .bind(urls)
            .bind(raws)
            .bind(hashes)
            .persistent(false)
            .execute(&mut **tx)
            .await?;
    }
    let now = deliveries.last().map_or(0, |d| d.now_ms);
    new_events.sort_unstable_by_key(|e| e.0);
    outbox::write_postgres(tx, outbox, new_events.into_iter(), now).await?;
    write_states!(tx, Backend::Postgres, merged);
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_webhook;

    #[test]
    fn chunks_sum_to_n_with_few_distinct_sizes() {
        let mut distinct = std::collections::BTreeSet::new();
        for n in 0..2000 {
            let sizes: Vec<usize> = chunks(n).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(
                sizes
                    .iter()
                    .all(|&s| s <= EXACT_CHUNK || (s.is_power_of_two() && s <= MAX_CHUNK)),
                "{sizes:?}"
            );
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
            if (1..=EXACT_CHUNK).contains(&n) {
                assert_eq!(sizes, [n]);
            }
            distinct.extend(sizes);
        }
        assert_eq!(distinct.len(), SIZES);
        for (slot, &size) in distinct.iter().enumerate() {
            assert_eq!((slot_size(slot), size_slot(size)), (size, slot));
        }
        assert_eq!(chunks(100).collect::<Vec<_>>(), [64, 32, 4]);
        assert_eq!(chunks(600).collect::<Vec<_>>(), [256, 256, 64, 24]);
        assert_eq!(chunks(20).collect::<Vec<_>>(), [20]);
    }

    #[test]
    fn statements_have_the_right_parameter_count() {
        for size in [1, 2, 7, 32, 64, MAX_CHUNK] {
            // PostgreSQL binds each event's content hash too.
            let sql = event_sql(Backend::Postgres, size);
            assert!(sql.contains(&format!("${})", size * (EVENT_PARAMS + 1))));
            assert!(!sql.contains(&format!("${}", size * (EVENT_PARAMS + 1) + 1)));
            let sql = redelivery_sql(size);
            assert!(sql.contains(&format!("${})", size * REDELIVERY_PARAMS)));
            assert!(!sql.contains(&format!("${}", size * REDELIVERY_PARAMS + 1)));
            let sql = state_sql(Backend::Postgres, size);
            assert!(sql.contains(&format!("${})", size * STATE_PARAMS)));
            assert!(!sql.contains(&format!("${}", size * STATE_PARAMS + 1)));
            let sql = event_sql(Backend::Sqlite, size);
            assert_eq!(sql.matches('?').count(), size * EVENT_PARAMS);
            assert!(!sql.contains('$'));
            let sql = state_sql(Backend::Sqlite, size);
            assert_eq!(sql.matches('?').count(), size * STATE_PARAMS);
        }
        assert!(
            event_sql(Backend::Postgres, 1)
                .contains("($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17)")
        );
        assert!(state_sql(Backend::Postgres, 1).contains("($1,$2,$3,$4,$5,$6,$7,$8)"));
    }

    fn alert(fingerprint: &str, status: &str, starts: &str, ends: &str, summary: &str) -> String {
        format!(
            r#"{{"status":"{status}","labels":{{"alertname":"A"}},"annotations":{{"summary":"{summary}"}},"startsAt":"{starts}","endsAt":"{ends}","fingerprint":"{fingerprint}"}}"#
        )
    }

    fn delivery(alerts: &[String], now_ms: i64) -> Delivery {
        let body = format!(r#"{{"alerts":[{}]}}"#, alerts.join(","));
        Delivery::encode(&parse_webhook(body.as_bytes()).unwrap(), now_ms)
    }

    const T0: &str = "2026-01-01T00:00:00Z";
    const T1: &str = "2026-01-01T01:00:00Z";
    const ZERO: &str = "0001-01-01T00:00:00Z";

    #[test]
    fn a_delivery_folds_repeats_and_keeps_the_newest_state() {
        let d = delivery(
            &[
                alert("f1", "firing", T0, ZERO, "old"),
                alert("f1", "firing", T0, ZERO, "new"),
                alert("f1", "resolved", T0, T1, "done"),
                alert("f2", "firing", T0, ZERO, "x"),
            ],
            5,
        );
        assert_eq!(d.events.len(), 3);
        let latest: Vec<_> = d
            .latest
            .iter()
            .map(|&i| (d.events[i].fingerprint.as_str(), d.events[i].status))
            .collect();
        assert_eq!(latest, [("f1", Status::Resolved), ("f2", Status::Firing)]);
        assert!(d.events[0].annotations.contains("new"), "last copy wins");
    }

    #[test]
    fn merging_deliveries_counts_occurrences_and_keeps_first_and_last() {
        let a = delivery(&[alert("f1", "firing", T0, ZERO, "one")], 10);
        let b = delivery(
            &[
                alert("f1", "firing", T0, ZERO, "two"),
                alert("f2", "firing", T1, ZERO, "x"),
            ],
            20,
        );
        let c = delivery(&[alert("f1", "resolved", T0, T1, "three")], 30);
        let m = merge(&[&a, &b, &c]);
        assert_eq!(m.events.len(), 3);
        let f1 = m
            .events
            .iter()
            .find(|w| w.first.fingerprint == "f1" && w.first.status == Status::Firing)
            .unwrap();
        assert_eq!((f1.occurrences, f1.received_at, f1.last_seen), (2, 10, 20));
        assert_eq!(f1.delivery, 0);
        assert!(f1.first.annotations.contains("one"));
        assert!(f1.last.annotations.contains("two"));
        let f2 = m
            .events
            .iter()
            .find(|w| w.first.fingerprint == "f2")
            .unwrap();
        assert_eq!((f2.delivery, f2.occurrences), (1, 1));
        // f1's state: the resolution of the third delivery.
        let s1 = m
            .states
            .iter()
            .find(|s| s.event.fingerprint == "f1")
            .unwrap();
        assert_eq!((s1.event.status, s1.updated_at), (Status::Resolved, 30));
    }

    #[test]
    fn an_older_state_in_a_later_delivery_does_not_win() {
        let a = delivery(&[alert("f1", "firing", T1, ZERO, "new")], 10);
        let b = delivery(&[alert("f1", "firing", T0, ZERO, "old")], 20);
        let m = merge(&[&a, &b]);
        assert_eq!(m.states.len(), 1);
        assert_eq!(m.states[0].event.starts_at, a.events[0].starts_at);
        // Same state again later: nothing changes (updated_at is when the
        // state changed).
        let c = delivery(&[alert("f1", "firing", T1, ZERO, "again")], 30);
        let m = merge(&[&a, &c]);
        assert_eq!(m.states[0].updated_at, 10);
        // A firing never undoes a resolution at the same startsAt.
        let r = delivery(&[alert("f1", "resolved", T1, T1, "r")], 40);
        let m = merge(&[&r, &c]);
        assert_eq!(m.states[0].event.status, Status::Resolved);
    }
}

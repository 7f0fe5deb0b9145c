//! The tables of filter rules and acknowledgements (migration 0008), on
//! whichever database the store uses. Every change bumps its counter in
//! `filter_versions` in the same transaction, which is what other replicas
//! poll.

use std::sync::Arc;

use super::Ack;
use super::rule::{Action, Conditions, Rule, RuleSpec};
use crate::store::{PoolRef, Store};

/// Runs `$body` with `$p` bound to the SQLite or the PostgreSQL pool.
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            PoolRef::Sqlite($p) => $body,
            PoolRef::Postgres($p) => $body,
        }
    };
}

/// Runs `$body` (using the open transaction `$tx`, with `?`) in a
/// transaction on the store's write pool and commits. A connection whose
/// statement or commit failed is closed rather than returned to the pool
/// (a failed SQLite commit can leave its transaction open: see the store's
/// `in_transaction!`).
macro_rules! write_tx {
    ($store:expr, |$tx:ident| $body:expr) => {
        on_pool!($store.write_pool(), |pool| {
            let mut conn = pool.acquire().await?;
            let result: Result<_, sqlx::Error> = async {
                let mut $tx = sqlx::Connection::begin(&mut *conn).await?;
                let value = $body;
                $tx.commit().await?;
                Ok(value)
            }
            .await;
            if result.is_err()
                && let Err(e) = conn.close().await
            {
                tracing::debug!(error = %e, "closing a failed connection failed");
            }
            result
        })
    };
}

/// A stored rule's row.
#[derive(Debug, sqlx::FromRow)]
struct RuleRow {
    name: String,
    target: String,
    action: String,
    delay_seconds: Option<i64>,
    priority: i64,
    enabled: bool,
    conditions: String,
    created_at: i64,
    updated_at: i64,
}

const RULE_COLUMNS: &str =
    "name, target, action, delay_seconds, priority, enabled, conditions, created_at, updated_at";

impl RuleRow {
    fn into_rule(self) -> Option<Rule> {
        let name = self.name.clone();
        let conditions: Conditions = match serde_json::from_str(&self.conditions) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(rule = %name, error = %e, "stored filter rule unreadable: skipped");
                return None;
            }
        };
        let spec = RuleSpec {
            name: self.name,
            target: self.target,
            action: Action::parse(&self.action)?,
            delay_seconds: self.delay_seconds.and_then(|d| u32::try_from(d).ok()),
            priority: self.priority,
            enabled: self.enabled,
            conditions,
        };
        match spec.compile(self.created_at, self.updated_at) {
            Ok(rule) => Some(rule),
            Err(e) => {
                tracing::error!(rule = %name, field = %e.field, reason = %e.reason,
                    "stored filter rule invalid: skipped");
                None
            }
        }
    }
}

/// The counters of `filter_versions`: (rules, acks).
pub(super) async fn versions(store: &Store) -> Result<(i64, i64), sqlx::Error> {
    let sql = "SELECT rules, acks FROM filter_versions WHERE id = 1";
    on_pool!(store.read_pool(), |pool| sqlx::query_as::<_, (i64, i64)>(
        sql
    )
    .fetch_one(pool)
    .await)
}

/// Every stored rule (unreadable rows logged and skipped) and the rules
/// counter read before them.
pub(super) async fn load_rules(store: &Store) -> Result<(i64, Vec<Arc<Rule>>), sqlx::Error> {
    let (version, _) = versions(store).await?;
    let sql = format!("SELECT {RULE_COLUMNS} FROM filter_rules");
    let rows: Vec<RuleRow> = on_pool!(store.read_pool(), |pool| sqlx::query_as(&sql)
        .fetch_all(pool)
        .await)?;
    Ok((
        version,
        rows.into_iter()
            .filter_map(RuleRow::into_rule)
            .map(Arc::new)
            .collect(),
    ))
}

/// What storing a rule did.
#[derive(Debug)]
pub(super) enum Put {
    /// Stored; `created`: it did not exist before.
    Stored { created: bool },
    /// Refused: [`super::rule::MAX_RULES`] others exist.
    TooMany,
}

/// Creates or replaces `spec` (its `created_at` kept on replace).
pub(super) async fn put_rule(store: &Store, spec: &RuleSpec, now: i64) -> Result<Put, sqlx::Error> {
    let conditions = serde_json::to_string(&spec.conditions).unwrap_or_else(|_| "{}".into());
    let max = super::rule::MAX_RULES as i64;
    write_tx!(store, |tx| {
        let others: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM filter_rules WHERE name <> $1")
            .bind(&spec.name)
            .fetch_one(&mut *tx)
            .await?;
        if others >= max {
            Put::TooMany
        } else {
            let created_at: i64 = sqlx::query_scalar(
                "INSERT INTO filter_rules (name, target, action, delay_seconds, priority, \
                 enabled, conditions, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
                 ON CONFLICT (name) DO UPDATE SET target = excluded.target, \
                 action = excluded.action, delay_seconds = excluded.delay_seconds, \
                 priority = excluded.priority, enabled = excluded.enabled, \
                 conditions = excluded.conditions, updated_at = excluded.updated_at \
                 RETURNING created_at",
            )
            .bind(&spec.name)
            .bind(&spec.target)
            .bind(spec.action.as_str())
            .bind(spec.delay_seconds.map(i64::from))
            .bind(spec.priority)
            .bind(spec.enabled)
            .bind(&conditions)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query("UPDATE filter_versions SET rules = rules + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            Put::Stored {
                created: created_at == now,
            }
        }
    })
}

/// Deletes the rule `name`; whether it existed.
pub(super) async fn delete_rule(store: &Store, name: &str) -> Result<bool, sqlx::Error> {
    write_tx!(store, |tx| {
        let deleted = sqlx::query("DELETE FROM filter_rules WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted > 0 {
            sqlx::query("UPDATE filter_versions SET rules = rules + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
        }
        deleted > 0
    })
}

/// The acknowledgement of `fingerprint`, if any.
pub(super) async fn get_ack(store: &Store, fingerprint: &str) -> Result<Option<Ack>, sqlx::Error> {
    let sql = "SELECT fingerprint, acked_by, reason, acked_at, starts_at FROM alert_acks \
               WHERE fingerprint = $1";
    let row: Option<(String, String, String, i64, i64)> =
        on_pool!(store.read_pool(), |pool| sqlx::query_as(sql)
            .bind(fingerprint)
            .fetch_optional(pool)
            .await)?;
    Ok(
        row.map(|(fingerprint, by, reason, acked_at_ms, starts_at)| Ack {
            fingerprint,
            by,
            reason,
            acked_at_ms,
            starts_at,
        }),
    )
}

/// The current state of an alert: (status, starts_at).
pub(super) async fn alert_state(
    store: &Store,
    fingerprint: &str,
) -> Result<Option<(String, i64)>, sqlx::Error> {
    let sql = "SELECT status, starts_at FROM alert_state WHERE fingerprint = $1";
    on_pool!(store.read_pool(), |pool| sqlx::query_as(sql)
        .bind(fingerprint)
        .fetch_optional(pool)
        .await)
}

/// Stores (or replaces) an acknowledgement.
pub(super) async fn put_ack(store: &Store, ack: &Ack) -> Result<(), sqlx::Error> {
    write_tx!(store, |tx| {
        sqlx::query(
            "INSERT INTO alert_acks (fingerprint, acked_by, reason, acked_at, starts_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (fingerprint) DO UPDATE \
             SET acked_by = excluded.acked_by, reason = excluded.reason, \
             acked_at = excluded.acked_at, starts_at = excluded.starts_at",
        )
        .bind(&ack.fingerprint)
        .bind(&ack.by)
        .bind(&ack.reason)
        .bind(ack.acked_at_ms)
        .bind(ack.starts_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE filter_versions SET acks = acks + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
    })
}

/// Deletes the acknowledgement of `fingerprint` if it covers an episode
/// that started at or before `started_by` (`None`: whatever it covers);
/// whether one was deleted.
pub(super) async fn delete_ack(
    store: &Store,
    fingerprint: &str,
    started_by: Option<i64>,
) -> Result<bool, sqlx::Error> {
    write_tx!(store, |tx| {
        let deleted =
            sqlx::query("DELETE FROM alert_acks WHERE fingerprint = $1 AND starts_at <= $2")
                .bind(fingerprint)
                .bind(started_by.unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if deleted > 0 {
            sqlx::query("UPDATE filter_versions SET acks = acks + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
        }
        deleted > 0
    })
}

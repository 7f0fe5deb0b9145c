//! Deleting old events in small batches (the retention task calls it).

use super::{Pools, Store};

impl Store {
    /// Deletes at most `batch` events whose last delivery is before
    /// `cutoff_ms` (oldest event times first), in its own short transaction, and
    /// returns how many went. Call it repeatedly until it returns less than
    /// `batch`, so a large purge never holds the write lock for long.
    /// Resolved current-state rows older than the cutoff go too.
    ///
    /// # Errors
    /// The database error.
    pub async fn delete_batch(&self, cutoff_ms: i64, batch: u32) -> Result<u64, sqlx::Error> {
        // Walks the (event_at, id) index: an event last delivered before
        // the cutoff happened before it too (event time <= delivery time), so
        // no separate index on last_seen is kept up to date on every
        // redelivery. An event still redelivered stays, however old.
        //
        // On PostgreSQL the redeliveries counted beside an event
        // (`alert_event_redeliveries`) go with it. (A redelivery committed
        // while its event is being deleted can leave a counter row behind;
        // nothing reads one without its event.)
        let deleted = match &self.pools {
            Pools::Sqlite { write, .. } => sqlx::query(
                "DELETE FROM alert_events WHERE id IN \
                 (SELECT id FROM alert_events WHERE event_at < $1 AND last_seen < $1 \
                  ORDER BY event_at, id LIMIT $2)",
            )
            .bind(cutoff_ms)
            .bind(i64::from(batch))
            .execute(write)
            .await?
            .rows_affected(),
            Pools::Postgres { pool, .. } => {
                let (n,): (i64,) = sqlx::query_as(
                    "WITH gone AS (DELETE FROM alert_events WHERE id IN \
                         (SELECT id FROM alert_events_seen WHERE event_at < $1 AND last_seen < $1 \
                          ORDER BY event_at, id LIMIT $2) RETURNING id), \
                     counted AS (DELETE FROM alert_event_redeliveries r USING gone \
                         WHERE r.id = gone.id) \
                     SELECT count(*) FROM gone",
                )
                .bind(cutoff_ms)
                .bind(i64::from(batch))
                .fetch_one(pool)
                .await?;
                n as u64
            }
        };
        let state_sql = "DELETE FROM alert_state WHERE fingerprint IN \
                   (SELECT fingerprint FROM alert_state WHERE status = 'resolved' AND updated_at < $1 \
                    ORDER BY fingerprint LIMIT $2)";
        on_write!(self, |pool| {
            sqlx::query(state_sql)
                .bind(cutoff_ms)
                .bind(i64::from(batch))
                .execute(pool)
                .await?;
            Ok(deleted)
        })
    }
}

//! `GET /report` and the dashboard's events-over-time chart.

use std::collections::BTreeMap;

use super::Store;
use super::query::{Filter, Param};
use crate::model::Status;

/// Filters of `GET /report`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportQuery {
    /// `alertname` equals.
    pub alertname: Option<String>,
    /// `namespace` equals.
    pub namespace: Option<String>,
    /// Events at or after (epoch ms).
    pub since: Option<i64>,
    /// Events at or before (epoch ms).
    pub until: Option<i64>,
    /// Smallest flap count listed.
    pub min_flap: u32,
    /// Rows in each top list.
    pub top: u32,
}

impl Default for ReportQuery {
    fn default() -> Self {
        ReportQuery {
            alertname: None,
            namespace: None,
            since: None,
            until: None,
            min_flap: 2,
            top: 10,
        }
    }
}

/// One `(alertname, namespace)` group and a count.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GroupCount {
    /// `alertname`.
    pub alertname: String,
    /// `namespace` (none: `null`).
    pub namespace: Option<String>,
    /// Events, or status changes for the flapping list.
    pub n: i64,
}

/// The numbers behind `GET /report`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// Events matching the filters.
    pub total_events: i64,
    /// Distinct fingerprints among them.
    pub unique_alerts: i64,
    /// Groups with the most events.
    pub top_alerts: Vec<GroupCount>,
    /// Groups whose status changed at least `min_flap` times, in time order.
    pub flapping_alerts: Vec<GroupCount>,
    /// Alerts firing now (current state, same `alertname`/`namespace` filter).
    pub firing_now: i64,
    /// Alerts resolved now.
    pub resolved_now: i64,
    /// Firing-now alerts by severity (`none` when unlabelled).
    pub firing_by_severity: BTreeMap<String, i64>,
    /// Matching events by severity.
    pub events_by_severity: BTreeMap<String, i64>,
    /// Matching events by namespace (`none` when unlabelled).
    pub events_by_namespace: BTreeMap<String, i64>,
}

/// One bucket of the events-over-time chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Bucket {
    /// Bucket start, epoch ms.
    pub start: i64,
    /// Firing events in it.
    pub firing: i64,
    /// Resolved events in it.
    pub resolved: i64,
}

impl Store {
    /// The report: totals, top and flapping `(alertname, namespace)` groups
    /// and a summary of current state.
    ///
    /// Flaps of a group = status changes between consecutive events of that
    /// group in time order (the predecessor's definition), computed in SQL
    /// with a window function.
    ///
    /// # Errors
    /// The database error.
    pub async fn report(&self, q: &ReportQuery) -> Result<Report, sqlx::Error> {
        let mut f = Filter::default();
        f.eq("alertname", &q.alertname);
        f.eq("namespace", &q.namespace);
        f.cmp("event_at", ">=", q.since);
        f.cmp("event_at", "<=", q.until);
        let filter = f.sql();
        let mut top_params = f.params.clone();
        top_params.push(Param::I64(i64::from(q.top)));
        let top_sql = format!(
            "SELECT alertname, namespace, COUNT(*) AS n FROM alert_events{filter} \
             GROUP BY alertname, namespace ORDER BY n DESC, alertname, namespace LIMIT ${}",
            top_params.len()
        );
        let mut flap_params = f.params.clone();
        flap_params.push(Param::I64(i64::from(q.min_flap)));
        flap_params.push(Param::I64(i64::from(q.top)));
        let flap_sql = format!(
            "SELECT alertname, namespace, SUM(changed) AS n FROM (\
                SELECT alertname, namespace, CASE WHEN LAG(status) OVER w IS NOT NULL \
                    AND LAG(status) OVER w <> status THEN 1 ELSE 0 END AS changed \
                FROM alert_events{filter} \
                WINDOW w AS (PARTITION BY alertname, namespace ORDER BY event_at, id)\
             ) AS t GROUP BY alertname, namespace HAVING SUM(changed) >= ${} \
             ORDER BY n DESC, alertname, namespace LIMIT ${}",
            flap_params.len() - 1,
            flap_params.len()
        );
        let totals_sql =
            format!("SELECT COUNT(*), COUNT(DISTINCT fingerprint) FROM alert_events{filter}");
        let severity_sql = format!(
            "SELECT COALESCE(severity, 'none') AS k, COUNT(*) FROM alert_events{filter} GROUP BY COALESCE(severity, 'none')"
        );
        let namespace_sql = format!(
            "SELECT COALESCE(namespace, 'none') AS k, COUNT(*) FROM alert_events{filter} GROUP BY COALESCE(namespace, 'none')"
        );
        // The current states whose event (the start of a firing alert, the
        // end of a resolved one) is in the window, like the events above.
        let mut sf = Filter::default();
        sf.eq("alertname", &q.alertname);
        sf.eq("namespace", &q.namespace);
        const STATE_AT: &str = "CASE WHEN status = 'firing' THEN starts_at ELSE ends_at END";
        sf.cmp(STATE_AT, ">=", q.since);
        sf.cmp(STATE_AT, "<=", q.until);
        let state_filter = sf.sql();
        let status_sql =
            format!("SELECT status, COUNT(*) FROM alert_state{state_filter} GROUP BY status");
        let firing_sev_sql = format!(
            "SELECT COALESCE(severity, 'none') AS k, COUNT(*) FROM alert_state{} GROUP BY COALESCE(severity, 'none')",
            if state_filter.is_empty() {
                " WHERE status = 'firing'".to_owned()
            } else {
                format!("{state_filter} AND status = 'firing'")
            }
        );
        on_read!(self, |pool| {
            let (total_events, unique_alerts): (i64, i64) =
                bind_all!(sqlx::query_as(&totals_sql), f.params)
                    .fetch_one(pool)
                    .await?;
            let top_alerts = bind_all!(sqlx::query_as::<_, GroupCount>(&top_sql), top_params)
                .fetch_all(pool)
                .await?;
            let flapping_alerts =
                bind_all!(sqlx::query_as::<_, GroupCount>(&flap_sql), flap_params)
                    .fetch_all(pool)
                    .await?;
            let by_sev: Vec<(String, i64)> = bind_all!(sqlx::query_as(&severity_sql), f.params)
                .fetch_all(pool)
                .await?;
            let by_ns: Vec<(String, i64)> = bind_all!(sqlx::query_as(&namespace_sql), f.params)
                .fetch_all(pool)
                .await?;
            let statuses: Vec<(String, i64)> = bind_all!(sqlx::query_as(&status_sql), sf.params)
                .fetch_all(pool)
                .await?;
            let firing_sev: Vec<(String, i64)> =
                bind_all!(sqlx::query_as(&firing_sev_sql), sf.params)
                    .fetch_all(pool)
                    .await?;
            let count = |s: &str| statuses.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
            Ok(Report {
                total_events,
                unique_alerts,
                top_alerts,
                flapping_alerts,
                firing_now: count("firing"),
                resolved_now: count("resolved"),
                firing_by_severity: firing_sev.into_iter().collect(),
                events_by_severity: by_sev.into_iter().collect(),
                events_by_namespace: by_ns.into_iter().collect(),
            })
        })
    }

    /// Events per bucket of `bucket_ms` in `[since, until)`, every bucket
    /// present (zeros included).
    ///
    /// # Errors
    /// The database error.
    pub async fn chart(
        &self,
        since: i64,
        until: i64,
        bucket_ms: i64,
    ) -> Result<Vec<Bucket>, sqlx::Error> {
        let bucket_ms = bucket_ms.max(1);
        let sql = "SELECT (event_at - $1) / $3 AS b, status, COUNT(*) FROM alert_events \
                   WHERE event_at >= $1 AND event_at < $2 GROUP BY (event_at - $1) / $3, status";
        let rows: Vec<(i64, String, i64)> = on_read!(self, |pool| sqlx::query_as(sql)
            .bind(since)
            .bind(until)
            .bind(bucket_ms)
            .fetch_all(pool)
            .await)?;
        let count = ((until - since).max(0) + bucket_ms - 1) / bucket_ms;
        let mut buckets: Vec<Bucket> = (0..count)
            .map(|i| Bucket {
                start: since + i * bucket_ms,
                ..Bucket::default()
            })
            .collect();
        for (b, status, n) in rows {
            if let Some(bucket) = usize::try_from(b).ok().and_then(|b| buckets.get_mut(b)) {
                match Status::parse(&status) {
                    Some(Status::Firing) => bucket.firing += n,
                    Some(Status::Resolved) => bucket.resolved += n,
                    None => {}
                }
            }
        }
        Ok(buckets)
    }
}

//! The `alert_classifications` table (migration 0007): the latest validated
//! classification per fingerprint, on both databases.

use std::collections::{BTreeMap, HashMap};

use sqlx::types::Json;

use crate::routing::{Classification, LlmSeverity};
use crate::store::{PoolRef, Store};

type Row = (String, String, f64, String, Json<Vec<String>>, String, i64);

const COLUMNS: &str =
    "fingerprint, severity, confidence, reasoning, recommendations, model, classified_at";

fn from_row(row: Row) -> Option<(String, Classification)> {
    let (fingerprint, severity, confidence, reasoning, Json(recommendations), model, at) = row;
    let severity = match severity.as_str() {
        "critical" => LlmSeverity::Critical,
        "warning" => LlmSeverity::Warning,
        "info" => LlmSeverity::Info,
        "noise" => LlmSeverity::Noise,
        _ => return None,
    };
    Some((
        fingerprint,
        Classification {
            severity,
            confidence,
            reasoning,
            recommendations,
            model,
            classified_at_ms: at,
        },
    ))
}

macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            PoolRef::Sqlite($p) => $body,
            PoolRef::Postgres($p) => $body,
        }
    };
}

/// Inserts or replaces the classification of `fingerprint`.
pub(crate) async fn upsert(
    store: &Store,
    fingerprint: &str,
    c: &Classification,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO alert_classifications ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (fingerprint) DO UPDATE SET severity = excluded.severity, \
         confidence = excluded.confidence, reasoning = excluded.reasoning, \
         recommendations = excluded.recommendations, model = excluded.model, \
         classified_at = excluded.classified_at"
    );
    on_pool!(store.write_pool(), |pool| {
        sqlx::query(&sql)
            .bind(fingerprint)
            .bind(c.severity.as_str())
            .bind(c.confidence)
            .bind(&c.reasoning)
            .bind(Json(&c.recommendations))
            .bind(&c.model)
            .bind(c.classified_at_ms)
            .execute(pool)
            .await
            .map(|_| ())
    })
}

/// The stored classification of `fingerprint`.
pub(crate) async fn get(
    store: &Store,
    fingerprint: &str,
) -> Result<Option<Classification>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM alert_classifications WHERE fingerprint = $1");
    let row: Option<Row> = on_pool!(store.read_pool(), |pool| {
        sqlx::query_as(&sql)
            .bind(fingerprint)
            .fetch_optional(pool)
            .await
    })?;
    Ok(row.and_then(from_row).map(|(_, c)| c))
}

/// The stored classifications of `fingerprints` (at most a few hundred:
/// one `IN` list).
pub(crate) async fn get_many(
    store: &Store,
    fingerprints: &[String],
) -> Result<HashMap<String, Classification>, sqlx::Error> {
    if fingerprints.is_empty() {
        return Ok(HashMap::new());
    }
    let placeholders = (1..=fingerprints.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {COLUMNS} FROM alert_classifications WHERE fingerprint IN ({placeholders})"
    );
    let rows: Vec<Row> = on_pool!(store.read_pool(), |pool| {
        let mut query = sqlx::query_as(&sql);
        for f in fingerprints {
            query = query.bind(f);
        }
        query.fetch_all(pool).await
    })?;
    Ok(rows.into_iter().filter_map(from_row).collect())
}

/// A stored classification with its alert's current state (absent once
/// retention deleted the alert).
#[derive(Debug, Clone)]
pub(crate) struct WithAlert {
    /// The fingerprint.
    pub(crate) fingerprint: String,
    /// The classification.
    pub(crate) classification: Classification,
    /// `alertname`, `namespace`, `status` of the alert's state row.
    pub(crate) alert: Option<(String, Option<String>, String)>,
}

/// The newest classifications that have recommendations, at most `limit`,
/// each with its alert's state.
pub(crate) async fn recent_with_recommendations(
    store: &Store,
    limit: u32,
) -> Result<Vec<WithAlert>, sqlx::Error> {
    type Joined = (
        String,
        String,
        f64,
        String,
        Json<Vec<String>>,
        String,
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    // Recommendations are filtered here rather than in SQL (JSON array
    // length is spelled differently by each database); the scan is bounded.
    let sql = "SELECT c.fingerprint, c.severity, c.confidence, c.reasoning, c.recommendations, \
         c.model, c.classified_at, s.alertname, s.namespace, s.status \
         FROM alert_classifications c LEFT JOIN alert_state s ON s.fingerprint = c.fingerprint \
         ORDER BY c.classified_at DESC, c.fingerprint LIMIT $1";
    let rows: Vec<Joined> = on_pool!(store.read_pool(), |pool| {
        sqlx::query_as(sql)
            .bind(i64::from(limit.saturating_mul(4).max(100)))
            .fetch_all(pool)
            .await
    })?;
    Ok(rows
        .into_iter()
        .filter_map(|(f, sev, conf, why, recs, model, at, name, ns, status)| {
            let (fingerprint, classification) = from_row((f, sev, conf, why, recs, model, at))?;
            let alert = name.zip(status).map(|(name, status)| (name, ns, status));
            (!classification.recommendations.is_empty()).then_some(WithAlert {
                fingerprint,
                classification,
                alert,
            })
        })
        .take(limit as usize)
        .collect())
}

/// How many stored classifications have each severity.
pub(crate) async fn counts(store: &Store) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let sql = "SELECT severity, COUNT(*) FROM alert_classifications GROUP BY severity";
    let rows: Vec<(String, i64)> = on_pool!(store.read_pool(), |pool| {
        sqlx::query_as(sql).fetch_all(pool).await
    })?;
    Ok(rows.into_iter().collect())
}

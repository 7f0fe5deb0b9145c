//! Prometheus: instant PromQL queries through a `keel::Pipeline` (deadline,
//! retry, breaker), the four metrics fetched in parallel with keel-exec.

use std::collections::HashMap;
use std::time::Duration;

use keel::breaker::{BreakerConfig, CircuitBreaker};
use keel::exec::{ParallelExecutor, through};
use keel::retry::{Backoff, RetryPolicy};
use keel::{Pipeline, PipelineError};
use serde_json::Value;

use crate::config::Queries;

/// Why a query failed (after the pipeline's retries).
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    /// Connection refused, reset, timed out.
    #[error("request failed: {0}")]
    Http(String),
    /// A non-2xx answer.
    #[error("HTTP {status}: {body}")]
    Status {
        /// Status code.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// An answer that is not a vector result.
    #[error("unexpected answer: {0}")]
    Body(String),
    /// The pipeline stopped the call (breaker open, deadline).
    #[error("{0}")]
    Pipeline(String),
}

/// One metric per pod; a pod absent from the map has no series.
pub type PerPod = HashMap<String, f64>;

/// The four metrics.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// CPU cores.
    pub cpu: PerPod,
    /// Kafka lag.
    pub lag: PerPod,
    /// Memory bytes.
    pub memory: PerPod,
    /// Kafka records consumed per second.
    pub consumption_rate: PerPod,
}

/// The metrics in the order they are queried, with their names in logs.
const METRICS: [&str; 4] = ["cpu", "lag", "memory", "consumption_rate"];

/// A Prometheus HTTP API client.
#[derive(Debug, Clone)]
pub struct Prometheus {
    http: reqwest::Client,
    base: String,
    pipeline: std::sync::Arc<Pipeline>,
}

/// Escapes pod names into a PromQL regex alternation (inside a double-quoted
/// string literal: a regex `\.` is written `\\.`).
pub fn pods_regex(names: &[String]) -> String {
    names
        .iter()
        .map(|n| {
            n.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c.to_string()
                    } else {
                        format!("\\\\{c}")
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// Fills a query template.
pub fn render(template: &str, namespace: &str, pods: &str) -> String {
    template
        .replace("{namespace}", namespace)
        .replace("{pods}", pods)
}

impl Prometheus {
    /// A client of `base` whose calls retry twice and stop at `deadline`.
    ///
    /// # Errors
    /// When the pipeline cannot be built (not with these constants).
    pub fn new(base: &str, deadline: Duration) -> Result<Self, keel::ConfigError> {
        let pipeline = Pipeline::builder()
            .retry(
                RetryPolicy::builder()
                    .max_retries(2)
                    .backoff(Backoff::exponential(Duration::from_millis(200), 2.0))
                    .build()?,
            )
            .breaker(CircuitBreaker::new("prometheus", BreakerConfig::default()))
            .deadline(deadline)
            .build()?;
        Ok(Prometheus {
            http: reqwest::Client::builder()
                .build()
                .map_err(|e| keel::ConfigError::new("PROMETHEUS_ENDPOINT", e.to_string()))?,
            base: base.trim_end_matches('/').to_owned(),
            pipeline: std::sync::Arc::new(pipeline),
        })
    }

    /// One instant query (POSTed, so a long pod regex fits): pod → value.
    /// `NaN` values are kept (the decision skips them).
    async fn query_once(
        http: &reqwest::Client,
        base: &str,
        promql: &str,
        timeout: Option<Duration>,
    ) -> Result<PerPod, PromError> {
        let mut request = http
            .post(format!("{base}/api/v1/query"))
            .form(&[("query", promql)]);
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        let response = request.send().await.map_err(http_error)?;
        let status = response.status();
        let body = response.text().await.map_err(http_error)?;
        if !status.is_success() {
            return Err(PromError::Status {
                status: status.as_u16(),
                body: body.chars().take(200).collect(),
            });
        }
        parse_vector(&body)
    }

    /// Fetches CPU, lag, memory and consumption rate of `pods` in parallel.
    ///
    /// # Errors
    /// The first failed query's error.
    pub async fn fetch(
        &self,
        queries: &Queries,
        namespace: &str,
        pods: &[String],
    ) -> Result<Metrics, PromError> {
        let regex = pods_regex(pods);
        let items = vec![
            (0usize, render(&queries.cpu, namespace, &regex)),
            (1, render(&queries.lag, namespace, &regex)),
            (2, render(&queries.memory, namespace, &regex)),
            (3, render(&queries.consumption_rate, namespace, &regex)),
        ];
        let exec = ParallelExecutor::builder()
            .concurrency(METRICS.len())
            .build()
            .map_err(|e| PromError::Pipeline(e.to_string()))?;
        let http = &self.http;
        let base = self.base.as_str();
        let report = exec
            .run(
                items,
                through(
                    &self.pipeline,
                    |(_, q): (usize, String), attempt| async move {
                        Self::query_once(http, base, &q, attempt.timeout).await
                    },
                ),
            )
            .await;
        let mut out = Metrics::default();
        for (i, result) in report.into_results().into_iter().enumerate() {
            let map = result.map_err(|e| match e {
                keel::exec::ExecError::Failed(PipelineError::Inner(inner)) => inner,
                other => PromError::Pipeline(other.to_string()),
            })?;
            tracing::debug!(metric = METRICS[i], pods = map.len(), "Prometheus answered");
            match i {
                0 => out.cpu = map,
                1 => out.lag = map,
                2 => out.memory = map,
                _ => out.consumption_rate = map,
            }
        }
        Ok(out)
    }
}

/// The error with its sources (reqwest's own Display omits the cause).
fn http_error(e: reqwest::Error) -> PromError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    PromError::Http(text)
}

/// Parses a `/api/v1/query` answer whose result is a vector labelled `pod`.
///
/// # Errors
/// When the body is not a successful vector result.
pub fn parse_vector(body: &str) -> Result<PerPod, PromError> {
    let v: Value = serde_json::from_str(body).map_err(|e| PromError::Body(e.to_string()))?;
    if v["status"] != "success" {
        return Err(PromError::Body(format!("status {}", v["status"])));
    }
    if v["data"]["resultType"] != "vector" {
        return Err(PromError::Body(format!(
            "resultType {} (the query must return an instant vector)",
            v["data"]["resultType"]
        )));
    }
    let mut out = PerPod::new();
    for sample in v["data"]["result"].as_array().into_iter().flatten() {
        let Some(pod) = sample["metric"]["pod"].as_str() else {
            continue;
        };
        let value = sample["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        // Two series for one pod (the query did not aggregate): add them.
        *out.entry(pod.to_owned()).or_insert(0.0) += value;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vectors_with_nan() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"pod":"a"},"value":[1,"1.5"]},
            {"metric":{"pod":"b"},"value":[1,"NaN"]},
            {"metric":{"instance":"x"},"value":[1,"3"]}]}}"#;
        let m = parse_vector(body).expect("parses");
        assert_eq!(m["a"], 1.5);
        assert!(m["b"].is_nan());
        assert_eq!(m.len(), 2);
        assert!(
            parse_vector(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#)
                .is_err()
        );
    }

    #[test]
    fn regex_escapes_dots() {
        assert_eq!(pods_regex(&["a-1".into(), "b.2".into()]), "a-1|b\\\\.2");
        assert_eq!(
            render("x{pod=~\"{pods}\",ns=\"{namespace}\"}", "n", "a|b"),
            "x{pod=~\"a|b\",ns=\"n\"}"
        );
    }
}

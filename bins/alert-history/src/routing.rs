//! What part 2 (classification, filter rules, targets, publishing) shares:
//! the view of an alert event that every decision reads, the LLM's
//! classification, and a filter rule's decision.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Status;

/// One stored alert event as classification, filter rules, target filters
/// and senders see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertView {
    /// `alert_events.id`.
    pub event_id: i64,
    /// Alertmanager's fingerprint.
    pub fingerprint: String,
    /// The `alertname` label (may be empty).
    pub alertname: String,
    /// The `namespace` label.
    pub namespace: Option<String>,
    /// The `severity` label.
    pub severity: Option<String>,
    /// Firing or resolved.
    pub status: Status,
    /// `startsAt`, epoch ms.
    pub starts_at: i64,
    /// `endsAt`, epoch ms (zero time for a firing event).
    pub ends_at: i64,
    /// Every label.
    pub labels: BTreeMap<String, String>,
    /// Every annotation.
    pub annotations: serde_json::Map<String, serde_json::Value>,
    /// `generatorURL`.
    pub generator_url: Option<String>,
}

impl AlertView {
    /// The view of an event about to be stored (its id not yet known: 0).
    pub fn of_new(event: &crate::model::NewEvent) -> AlertView {
        AlertView {
            event_id: 0,
            fingerprint: event.fingerprint.clone(),
            alertname: event.alertname.clone(),
            namespace: event.namespace.clone(),
            severity: event.severity.clone(),
            status: event.status,
            starts_at: event.starts_at,
            ends_at: event.ends_at,
            labels: event.labels.clone(),
            annotations: event.annotations.clone(),
            generator_url: event.generator_url.clone(),
        }
    }
}

/// The LLM's severity of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmSeverity {
    /// Wake someone.
    Critical,
    /// Look at it today.
    Warning,
    /// For the record.
    Info,
    /// Not worth anyone's attention.
    Noise,
}

impl LlmSeverity {
    /// The lowercase name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            LlmSeverity::Critical => "critical",
            LlmSeverity::Warning => "warning",
            LlmSeverity::Info => "info",
            LlmSeverity::Noise => "noise",
        }
    }
}

/// A validated classification of one alert (by fingerprint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// The LLM's severity.
    pub severity: LlmSeverity,
    /// 0.0 ..= 1.0.
    pub confidence: f64,
    /// Why, in the LLM's words.
    pub reasoning: String,
    /// What to do.
    pub recommendations: Vec<String>,
    /// The model that answered.
    pub model: String,
    /// When, epoch ms.
    pub classified_at_ms: i64,
}

/// What a filter rule decides for one event and one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Publish it.
    Allow,
    /// Do not publish it to this target (recorded as `filtered`).
    Deny {
        /// The rule's name.
        rule: String,
    },
    /// Hold it this long; drop it if the alert resolves meanwhile.
    Delay {
        /// The rule's name.
        rule: String,
        /// How long.
        delay: Duration,
    },
}

//! The Alertmanager webhook payload (version 4) and the events it becomes.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::error::PayloadError;

/// `endsAt` of an alert that is still firing, as Alertmanager sends it.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
/// [`ZERO_TIME`] in Unix epoch milliseconds.
pub const ZERO_TIME_MS: i64 = -62_135_596_800_000;

/// Whether an alert is firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// The alert is active.
    Firing,
    /// The alert has ended.
    Resolved,
}

impl Status {
    /// `"firing"` or `"resolved"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }

    /// Parses `"firing"` / `"resolved"`.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "firing" => Some(Status::Firing),
            "resolved" => Some(Status::Resolved),
            _ => None,
        }
    }
}

/// The parts of the webhook payload the service reads; everything else in
/// an alert is kept verbatim in [`NewEvent::raw`].
#[derive(Debug, Deserialize)]
struct Payload {
    alerts: Vec<AlertIn>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AlertIn {
    status: String,
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: Option<serde_json::Map<String, Value>>,
    starts_at: String,
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(default, rename = "generatorURL")]
    generator_url: Option<String>,
    #[serde(default)]
    fingerprint: Option<String>,
}

/// One alert of a delivery, validated and normalised, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Alertmanager's fingerprint (computed like Alertmanager's when the
    /// sender left it out).
    pub fingerprint: String,
    /// The `alertname` label.
    pub alertname: String,
    /// The `namespace` label, if any.
    pub namespace: Option<String>,
    /// The `severity` label, if any.
    pub severity: Option<String>,
    /// Firing or resolved.
    pub status: Status,
    /// `startsAt`, epoch milliseconds.
    pub starts_at: i64,
    /// `endsAt`, epoch milliseconds; always [`ZERO_TIME_MS`] for a firing
    /// event (see [`parse_webhook`]).
    pub ends_at: i64,
    /// Every label.
    pub labels: BTreeMap<String, String>,
    /// Every annotation.
    pub annotations: serde_json::Map<String, Value>,
    /// `generatorURL`.
    pub generator_url: Option<String>,
    /// The alert object exactly as delivered, unknown fields included.
    pub raw: Value,
}

impl NewEvent {
    /// When the state change happened: `startsAt` for a firing event,
    /// `endsAt` for a resolved one. History is ordered by it.
    pub fn event_at(&self) -> i64 {
        match self.status {
            Status::Firing => self.starts_at,
            Status::Resolved => self.ends_at,
        }
    }

    /// The identity of the event: two deliveries with the same key are one
    /// event.
    pub fn key(&self) -> (&str, Status, i64, i64) {
        (&self.fingerprint, self.status, self.starts_at, self.ends_at)
    }
}

/// Parses a webhook body.
///
/// * Not JSON at all → [`PayloadError::Malformed`] (HTTP 400).
/// * JSON of the wrong shape → [`PayloadError::Invalid`] naming the field
///   path, e.g. `alerts[2].startsAt` (HTTP 422).
///
/// A firing alert's `endsAt` is an estimate that Prometheus moves forward on
/// every evaluation, so it is not part of a firing event's identity: the
/// stored `ends_at` of a firing event is always [`ZERO_TIME_MS`] (the value
/// delivered stays in `raw`). Otherwise every redelivery would be a new event.
///
/// # Errors
/// As above.
pub fn parse_webhook(body: &[u8]) -> Result<Vec<NewEvent>, PayloadError> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| PayloadError::Malformed {
        reason: e.to_string(),
    })?;
    let payload: Payload = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let reason = e.into_inner().to_string();
        // serde reports a missing field at its parent: name the field itself.
        let field = match reason
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            Some(name) if path == "." => name.to_owned(),
            Some(name) => format!("{path}.{name}"),
            None => path,
        };
        PayloadError::Invalid { field, reason }
    })?;
    // The typed view is taken; the alerts themselves are kept as delivered.
    let raw_alerts: Vec<Value> = match value.get_mut("alerts").map(Value::take) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    payload
        .alerts
        .into_iter()
        .zip(raw_alerts)
        .enumerate()
        .map(|(i, (alert, raw))| convert(i, alert, raw))
        .collect()
}

fn convert(i: usize, alert: AlertIn, raw: Value) -> Result<NewEvent, PayloadError> {
    let field = |name: &str| format!("alerts[{i}].{name}");
    let status = Status::parse(&alert.status).ok_or_else(|| PayloadError::Invalid {
        field: field("status"),
        reason: format!(
            "expected \"firing\" or \"resolved\", got {:?}",
            alert.status
        ),
    })?;
    let alertname = alert
        .labels
        .get("alertname")
        .filter(|s| !s.is_empty())
        .cloned()
        .ok_or_else(|| PayloadError::Invalid {
            field: field("labels.alertname"),
            reason: "missing alertname label".to_owned(),
        })?;
    let starts_at = parse_time(&alert.starts_at).ok_or_else(|| PayloadError::Invalid {
        field: field("startsAt"),
        reason: format!("not an RFC 3339 time: {:?}", alert.starts_at),
    })?;
    let delivered_end = match alert.ends_at.as_deref() {
        None | Some("") => ZERO_TIME_MS,
        Some(text) => parse_time(text).ok_or_else(|| PayloadError::Invalid {
            field: field("endsAt"),
            reason: format!("not an RFC 3339 time: {text:?}"),
        })?,
    };
    let ends_at = match status {
        Status::Firing => ZERO_TIME_MS,
        Status::Resolved => delivered_end,
    };
    let fingerprint = match alert.fingerprint {
        Some(fp) if !fp.is_empty() => fp,
        _ => alertmanager_fingerprint(&alert.labels),
    };
    Ok(NewEvent {
        fingerprint,
        namespace: alert.labels.get("namespace").cloned(),
        severity: alert.labels.get("severity").cloned(),
        alertname,
        status,
        starts_at,
        ends_at,
        labels: alert.labels,
        annotations: alert.annotations.unwrap_or_default(),
        generator_url: alert.generator_url.filter(|s| !s.is_empty()),
        raw,
    })
}

/// Parses an RFC 3339 time into epoch milliseconds.
pub fn parse_time(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp_millis())
}

/// Formats epoch milliseconds as RFC 3339 UTC (`2026-11-22T12:51:10Z`,
/// with milliseconds when they are not zero).
pub fn format_time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| ZERO_TIME.to_owned())
}

/// Alertmanager's fingerprint of a label set: FNV-1a 64 over the sorted
/// label names and values, each followed by the byte `0xff`, as 16 hex
/// digits (Prometheus `model.LabelSet.Fingerprint`).
pub fn alertmanager_fingerprint(labels: &BTreeMap<String, String>) -> String {
    const OFFSET: u64 = 14_695_981_039_346_656_037;
    const PRIME: u64 = 1_099_511_628_211;
    let mut hash = OFFSET;
    let mut add = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    for (name, value) in labels {
        add(name.as_bytes());
        add(&[0xff]);
        add(value.as_bytes());
        add(&[0xff]);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRING: &str = include_str!("../tests/data/webhook-firing.json");
    const RESOLVED: &str = include_str!("../tests/data/webhook-resolved.json");

    #[test]
    fn parses_real_payloads() {
        let firing = parse_webhook(FIRING.as_bytes()).unwrap();
        assert_eq!(firing.len(), 1);
        let e = &firing[0];
        assert_eq!(e.fingerprint, "12a9e0cfd9b7b39d");
        assert_eq!(e.alertname, "DiskFull");
        assert_eq!(e.severity.as_deref(), Some("critical"));
        assert_eq!(e.status, Status::Firing);
        assert_eq!(e.ends_at, ZERO_TIME_MS);
        assert_eq!(format_time(e.starts_at), "2026-11-22T12:51:10Z");
        let resolved = parse_webhook(RESOLVED.as_bytes()).unwrap();
        assert_eq!(resolved[0].status, Status::Resolved);
        assert_eq!(format_time(resolved[0].ends_at), "2026-11-22T12:51:16Z");
        assert_eq!(resolved[0].event_at(), resolved[0].ends_at);
    }

    #[test]
    fn fingerprint_matches_alertmanager() {
        let firing = parse_webhook(FIRING.as_bytes()).unwrap();
        assert_eq!(
            alertmanager_fingerprint(&firing[0].labels),
            "12a9e0cfd9b7b39d"
        );
    }

    #[test]
    fn unknown_fields_are_kept_in_raw() {
        let body = br#"{"alerts":[{"status":"firing","labels":{"alertname":"A"},
            "startsAt":"2026-01-01T00:00:00Z","orgId":1,"values":{"B":3}}]}"#;
        let events = parse_webhook(body).unwrap();
        assert_eq!(events[0].raw["orgId"], 1);
        assert_eq!(events[0].raw["values"]["B"], 3);
        assert_eq!(events[0].fingerprint.len(), 16);
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse_webhook(b"{not json").unwrap_err();
        assert!(matches!(err, PayloadError::Malformed { .. }));
        let err = parse_webhook(br#"{"alerts": 3}"#).unwrap_err();
        assert!(
            matches!(&err, PayloadError::Invalid { field, .. } if field == "alerts"),
            "{err:?}"
        );
        let err = parse_webhook(
            br#"{"alerts":[{"status":"firing","labels":{"alertname":"A"},"startsAt":"x"}]}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&err, PayloadError::Invalid { field, .. } if field == "alerts[0].startsAt")
        );
        let err = parse_webhook(br#"{"alerts":[{"status":"firing","labels":{"alertname":"A"}}]}"#)
            .unwrap_err();
        assert!(
            matches!(&err, PayloadError::Invalid { field, .. } if field == "alerts[0].startsAt"),
            "{err:?}"
        );
        let err = parse_webhook(br#"{"receiver":"x"}"#).unwrap_err();
        assert!(
            matches!(&err, PayloadError::Invalid { field, .. } if field == "alerts"),
            "{err:?}"
        );
        let err = parse_webhook(
            br#"{"alerts":[{"status":"gone","labels":{"alertname":"A"},"startsAt":"2026-01-01T00:00:00Z"}]}"#,
        )
        .unwrap_err();
        assert!(matches!(&err, PayloadError::Invalid { field, .. } if field == "alerts[0].status"));
        let err = parse_webhook(
            br#"{"alerts":[{"status":"firing","labels":{"alertname":7},"startsAt":"2026-01-01T00:00:00Z"}]}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&err, PayloadError::Invalid { field, .. } if field == "alerts[0].labels.alertname"),
            "{err:?}"
        );
    }

    #[test]
    fn time_round_trip() {
        assert_eq!(parse_time(ZERO_TIME), Some(ZERO_TIME_MS));
        assert_eq!(format_time(ZERO_TIME_MS), ZERO_TIME);
        let ms = parse_time("2026-11-22T12:49:51.401Z").unwrap();
        assert_eq!(format_time(ms), "2026-11-22T12:49:51.401Z");
    }

    proptest::proptest! {
        #[test]
        fn fingerprint_is_16_hex_and_order_independent(
            labels in proptest::collection::btree_map("[a-z_]{1,8}", "[ -~]{0,12}", 0..8)
        ) {
            let fp = alertmanager_fingerprint(&labels);
            proptest::prop_assert_eq!(fp.len(), 16);
            let rebuilt: BTreeMap<String, String> = labels.clone().into_iter().rev().collect();
            proptest::prop_assert_eq!(alertmanager_fingerprint(&rebuilt), fp);
        }
    }
}

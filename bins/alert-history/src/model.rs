//! The Alertmanager webhook payload (version 4) and the events it becomes.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::PayloadError;

/// `endsAt` of an alert that is still firing, as Alertmanager sends it.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
/// [`ZERO_TIME`] in Unix epoch milliseconds.
pub const ZERO_TIME_MS: i64 = -62_135_596_800_000;

/// Whether an alert is firing or resolved.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
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

/// The webhook payload: each alert is kept as its JSON text (borrowed from
/// the body) and parsed into [`AlertIn`] on its own, so the text stored as
/// [`NewEvent::raw`] is the alert exactly as delivered, never re-serialized.
#[derive(Debug, Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    alerts: Vec<&'a RawValue>,
    /// Why Alertmanager sent this notification (0.33+; see
    /// [`NewEvent::notification_reason`]).
    #[serde(default, borrow)]
    notification_reason: Option<&'a RawValue>,
}

/// Longest `notification_reason` kept (Alertmanager's are short phrases).
pub const MAX_NOTIFICATION_REASON: usize = 128;

/// The delivery's `notification_reason` when it is a non-empty string
/// (anything else is ignored: a delivery is never refused for it), cut to
/// [`MAX_NOTIFICATION_REASON`] characters.
fn notification_reason(raw: Option<&RawValue>) -> Option<String> {
    let text: String = serde_json::from_str(raw?.get()).ok()?;
    let text: String = text.chars().take(MAX_NOTIFICATION_REASON).collect();
    (!text.is_empty() && !text.contains('\0')).then_some(text)
}

/// The parts of an alert the service reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AlertIn {
    status: String,
    #[serde(default)]
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
    /// The `alertname` label (empty when the alert has none: it is stored
    /// all the same).
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
    /// The alert object exactly as delivered (its JSON text, unknown fields
    /// included).
    pub raw: String,
    /// The delivery's top-level `notification_reason` (Alertmanager 0.33+:
    /// `first notification`, `new alerts added`, `some alerts resolved`,
    /// `all alerts resolved`, `repeat interval elapsed`, ...), when sent.
    /// Stored with the event by the delivery that first stores it.
    pub notification_reason: Option<String>,
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
/// * Not JSON at all (or not UTF-8) → [`PayloadError::Malformed`] (HTTP 400).
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
    // JSON is UTF-8 (RFC 8259), and serde_json does not check the values it
    // skips: without this, a body with a stray byte in an ignored field was
    // stored, or refused with 422 for another field, instead of 400.
    if let Err(e) = std::str::from_utf8(body) {
        return Err(PayloadError::Malformed {
            reason: format!("not UTF-8: {e}"),
        });
    }
    // serde also reads a struct from an array (`[[alerts...]]`), and calls
    // an array with too many items a syntax error (400 for valid JSON): the
    // payload is an object, anything else is refused here.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(e) => PayloadError::Malformed {
                    reason: e.to_string(),
                },
                Ok(_) => PayloadError::Invalid {
                    field: ".".to_owned(),
                    reason: "expected a JSON object (the webhook payload)".to_owned(),
                },
            },
        );
    }
    // Plain serde first: tracking the path of every value costs about as
    // much as the parse itself, and is only needed to name the field of an
    // error, so a body or alert that fails is parsed again with tracking
    // (same input, same error).
    let payload: Payload<'_> = match serde_json::from_slice(body) {
        Ok(payload) => payload,
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let payload = serde_path_to_error::deserialize(&mut de)
                .map_err(|e| payload_error(body, None, e))?;
            de.end().map_err(|e| PayloadError::Malformed {
                reason: e.to_string(),
            })?;
            payload
        }
    };
    let reason = notification_reason(payload.notification_reason);
    payload
        .alerts
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let text = raw.get();
            check_storable(text).map_err(|(path, reason)| PayloadError::Invalid {
                field: format!("alerts[{i}]{path}"),
                reason,
            })?;
            let alert: AlertIn = match serde_json::from_str(text) {
                Ok(alert) => alert,
                Err(_) => {
                    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
                        .map_err(|e| payload_error(body, Some(i), e))?
                }
            };
            convert(i, alert, text).map(|mut event| {
                event.notification_reason.clone_from(&reason);
                event
            })
        })
        .collect()
}

/// Deepest nesting of objects and arrays accepted in one alert (the alert
/// object itself is level 1). Both databases and the read path handle it;
/// PostgreSQL's JSONB and serde_json's reader (128) give up far deeper
/// alerts at different depths, so one limit, well inside both, is checked
/// at ingest.
pub const MAX_JSON_DEPTH: usize = 64;

/// One definition of what both databases store and read back, checked on
/// each alert's JSON text before anything is written: no string or key
/// containing NUL (`\u0000`, which PostgreSQL's `text` and `jsonb`
/// refuse), nesting at most [`MAX_JSON_DEPTH`], every number within `f64`
/// (`1e400` is valid JSON, but neither a reader nor JSONB's round trip
/// through serde keeps it). The error is the path of the offending value
/// within the alert (`.annotations.d`) and why.
///
/// A scan of the text finds whether anything is wrong (cheap: one pass, no
/// allocation); only then is the alert parsed to name the path.
pub(crate) fn check_storable(text: &str) -> Result<(), (String, String)> {
    if scan_storable(text.as_bytes()) {
        return Ok(());
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value: Value = match serde_path_to_error::deserialize(&mut de) {
        Ok(value) => value,
        Err(e) => {
            let path = match e.path().to_string() {
                p if p == "." => String::new(),
                p => format!(".{p}"),
            };
            let inner = e.into_inner().to_string();
            let reason = if inner.contains("recursion limit") {
                format!("nested deeper than the limit of {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)")
            } else {
                inner
            };
            return Err((path, reason));
        }
    };
    find_unstorable(&value, 1, &mut String::new())
        .map_or(Ok(()), |(path, reason)| Err((path, reason.to_owned())))
}

/// Whether `text` (valid JSON) is storable as [`check_storable`] defines it.
fn scan_storable(text: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    if text[i] == b'\\' {
                        let escape = &text[i + 1..];
                        if escape.starts_with(b"u0000") {
                            return false;
                        }
                        // A UTF-16 surrogate escape must be a high one
                        // followed by a low one: serde_json skips unknown
                        // fields without checking, but no reader (nor
                        // PostgreSQL's JSONB) takes a lone one.
                        match hex_escape(escape) {
                            Some(0xD800..=0xDBFF) => {
                                let low = escape
                                    .get(5..)
                                    .and_then(|rest| rest.strip_prefix(b"\\"))
                                    .and_then(hex_escape);
                                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                                    return false;
                                }
                                // Past the first half and the second's
                                // backslash (its `u` and digits are harmless).
                                i += 6;
                            }
                            Some(0xDC00..=0xDFFF) => return false,
                            _ => {}
                        }
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < text.len()
                    && matches!(text[i + 1], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let number = &text[start..=i];
                // Only an exponent or hundreds of digits can leave f64.
                if (number.len() > 300 || number.iter().any(|b| matches!(b, b'e' | b'E')))
                    && !std::str::from_utf8(number)
                        .ok()
                        .and_then(|n| n.parse::<f64>().ok())
                        .is_some_and(f64::is_finite)
                {
                    return false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    true
}

/// The code unit of a `uXXXX` escape (the text after its backslash).
fn hex_escape(escape: &[u8]) -> Option<u16> {
    let digits = escape.strip_prefix(b"u")?.get(..4)?;
    u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// The first value of `value` (at nesting `depth`) that is not storable:
/// its path (appended to `path`) and why.
fn find_unstorable(
    value: &Value,
    depth: usize,
    path: &mut String,
) -> Option<(String, &'static str)> {
    const NUL: &str = "contains a NUL character (\\u0000), which PostgreSQL cannot store";
    const TOO_DEEP: &str = "nested deeper than the limit of 64 levels (MAX_JSON_DEPTH)";
    match value {
        Value::String(s) if s.contains('\0') => Some((path.clone(), NUL)),
        Value::Array(_) | Value::Object(_) if depth > MAX_JSON_DEPTH => {
            Some((path.clone(), TOO_DEEP))
        }
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = find_unstorable(item, depth + 1, path);
            path.truncate(len);
            found
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let len = path.len();
            path.push('.');
            path.push_str(key);
            let found = if key.contains('\0') {
                Some((path.clone(), NUL))
            } else {
                find_unstorable(item, depth + 1, path)
            };
            path.truncate(len);
            found
        }),
        _ => None,
    }
}

/// A parse error as the API reports it: 400 when the body is not JSON at
/// all, else 422 naming the field (`alerts[2].startsAt`; `at` is the alert
/// whose text was being parsed).
fn payload_error(
    body: &[u8],
    at: Option<usize>,
    e: serde_path_to_error::Error<serde_json::Error>,
) -> PayloadError {
    // A shape error can come before a syntax error further on: a body that
    // is not JSON is malformed whatever else is wrong with it.
    if !e.inner().is_data() || serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        return PayloadError::Malformed {
            reason: e.into_inner().to_string(),
        };
    }
    let path = e.path().to_string();
    let reason = e.into_inner().to_string();
    // serde reports a missing field at its parent: name the field itself.
    let path = match reason
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        Some(name) if path == "." => name.to_owned(),
        Some(name) => format!("{path}.{name}"),
        None => path,
    };
    let field = match at {
        None => path,
        Some(i) if path == "." => format!("alerts[{i}]"),
        Some(i) => format!("alerts[{i}].{path}"),
    };
    PayloadError::Invalid { field, reason }
}

fn convert(i: usize, alert: AlertIn, raw: &str) -> Result<NewEvent, PayloadError> {
    let field = |name: &str| format!("alerts[{i}].{name}");
    let status = Status::parse(&alert.status).ok_or_else(|| PayloadError::Invalid {
        field: field("status"),
        reason: format!(
            "expected \"firing\" or \"resolved\", got {:?}",
            alert.status
        ),
    })?;
    // An alert without `alertname` is unusual but still an alert: refusing
    // it would lose its whole group (Alertmanager does not retry a 4xx).
    let alertname = alert.labels.get("alertname").cloned().unwrap_or_default();
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
        raw: raw.to_owned(),
        notification_reason: None,
    })
}

/// Parses an RFC 3339 time into epoch milliseconds: only an instant whose
/// UTC year has four digits (0000 to 9999), which [`format_time`] writes
/// back as RFC 3339. An offset can carry a valid text out of that range
/// (`9999-12-31T23:59:59-01:00` is in the year 10000): stored, it would be
/// answered as `+10000-01-01T00:59:59Z`, which no RFC 3339 reader takes.
pub fn parse_time(text: &str) -> Option<i64> {
    let t = DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc);
    (0..=9999).contains(&t.year()).then(|| t.timestamp_millis())
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
    let hash = fnv1a64(
        labels
            .iter()
            .flat_map(|(name, value)| [name.as_bytes(), &[0xff], value.as_bytes(), &[0xff]]),
    );
    format!("{hash:016x}")
}

/// FNV-1a 64 over `parts`, in order, as if concatenated.
pub(crate) fn fnv1a64<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    const OFFSET: u64 = 14_695_981_039_346_656_037;
    const PRIME: u64 = 1_099_511_628_211;
    let mut hash = OFFSET;
    for part in parts {
        for b in part {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    hash
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
        let raw: Value = serde_json::from_str(&events[0].raw).unwrap();
        assert!(events[0].raw.starts_with(r#"{"status":"firing""#));
        assert!(events[0].raw.ends_with(r#""values":{"B":3}}"#));
        assert_eq!(raw["orgId"], 1);
        assert_eq!(raw["values"]["B"], 3);
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
        // Not JSON is malformed even after a shape error, or with trailing
        // text.
        for body in [
            &br#"{"alerts": 3, oops"#[..],
            br#"{"alerts":[]} x"#,
            br#"{"alerts":[{"status":1}"#,
        ] {
            let err = parse_webhook(body).unwrap_err();
            assert!(matches!(err, PayloadError::Malformed { .. }), "{err:?}");
        }
        // Not UTF-8 where serde skips it (fuzz/regressions/webhook/not-utf8-*).
        for body in [
            &b"{\"alerts\":3,\"x\":\"\xff\"}"[..],
            b"{\"alerts\":[],\"x\":\"\xff\"}",
        ] {
            let err = parse_webhook(body).unwrap_err();
            assert!(matches!(err, PayloadError::Malformed { .. }), "{err:?}");
        }
        // Only an object is a payload (fuzz/regressions/webhook/array-body*).
        for body in [&b"[[]]"[..], b" [[],[],[],3]", b"3", b"null"] {
            let err = parse_webhook(body).unwrap_err();
            assert!(
                matches!(&err, PayloadError::Invalid { field, .. } if field == "."),
                "{err:?}"
            );
        }
        let err = parse_webhook(b"[[],").unwrap_err();
        assert!(matches!(err, PayloadError::Malformed { .. }), "{err:?}");
        let err = parse_webhook(br#"{"alerts":[1]}"#).unwrap_err();
        assert!(
            matches!(&err, PayloadError::Invalid { field, .. } if field == "alerts[0]"),
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

    fn one_alert(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"alerts":[{{"status":"firing","labels":{{"alertname":"A"}},"startsAt":"2026-01-01T00:00:00Z"}},{{"status":"firing","labels":{{"alertname":"B"}},"startsAt":"2026-01-01T00:00:00Z",{extra}}}]}}"#
        )
        .into_bytes()
    }

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn unstorable_values_are_refused_naming_the_field() {
        let cases = [
            (
                r#""annotations":{"d":"a\u0000b"}"#,
                "alerts[1].annotations.d",
                "NUL",
            ),
            (
                r#""labels":{"alertname":"B","x\u0000":"v"}"#,
                "alerts[1].labels.x\0",
                "NUL",
            ),
            (r#""extra":[1,2,1e400]"#, "alerts[1].extra[2]", "number"),
            // fuzz/regressions/webhook/lone-surrogate
            (
                r#""extra":{"s":"a\udccc"}"#,
                "alerts[1].extra.s",
                "surrogate",
            ),
            (r#""extra":["\ud83d"]"#, "alerts[1].extra[0]", "escape"),
            (
                r#""extra":["\ud83d\u0041"]"#,
                "alerts[1].extra[0]",
                "surrogate",
            ),
            (r#""extra":{"n":-1E+999}"#, "alerts[1].extra.n", "number"),
        ];
        for (extra, field, why) in cases {
            let err = parse_webhook(&one_alert(extra)).unwrap_err();
            let PayloadError::Invalid { field: got, reason } = &err else {
                panic!("{err:?}")
            };
            assert_eq!(got, field, "{extra}");
            assert!(reason.contains(why), "{extra}: {reason}");
        }
        // Deeper than the limit, under serde_json's own limit and over it.
        for depth in [MAX_JSON_DEPTH, 127, 200] {
            let err =
                parse_webhook(&one_alert(&format!(r#""extra":{}"#, nested(depth)))).unwrap_err();
            let PayloadError::Invalid { field, reason } = &err else {
                panic!("{err:?}")
            };
            assert!(field.starts_with("alerts[1].extra[0]"), "{field}");
            assert!(reason.contains("deeper than the limit of 64"), "{reason}");
        }
        // At the limit, large but finite numbers, and escapes that are not
        // NUL are stored.
        let fine = format!(
            r#""extra":{},"n":[1e300,-2.5E-400,123456789012345678901234567890],"s":"\u0001\\u0000""#,
            nested(MAX_JSON_DEPTH - 1)
        );
        assert_eq!(parse_webhook(&one_alert(&fine)).unwrap().len(), 2);
        assert!(check_storable(r#"{"a":"\\u0000"}"#).is_ok());
        assert!(check_storable(r#"{"a":"\ud83d\ude00 \\udccc \u00e9"}"#).is_ok());
    }

    #[test]
    fn an_alert_without_alertname_or_labels_is_stored() {
        let events = parse_webhook(
            br#"{"alerts":[{"status":"firing","labels":{"job":"x"},"startsAt":"2026-01-01T00:00:00Z"},
                {"status":"resolved","startsAt":"2026-01-01T00:00:00Z","endsAt":"2026-01-01T00:01:00Z"}]}"#,
        )
        .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].alertname, "");
        assert!(events[1].labels.is_empty());
        assert_eq!(events[1].fingerprint.len(), 16);
    }

    proptest::proptest! {
        /// The scan agrees with the full check on every JSON value.
        #[test]
        fn the_scan_agrees_with_the_parse(
            depth in 0usize..80,
            text in "[ -~]{0,8}",
            nul in proptest::bool::ANY,
            exponent in 0i32..700,
        ) {
            let clean = text.replace(['\\', '"'], "");
            let s = if nul { format!("{clean}\\u0000") } else { clean };
            let alert = format!(
                r#"{{"a":{},"s":"{s}","n":1e{exponent}}}"#,
                nested(depth)
            );
            let bad = depth + 1 > MAX_JSON_DEPTH || nul || exponent > 308;
            proptest::prop_assert_eq!(check_storable(&alert).is_err(), bad, "{}", alert);
        }
    }

    #[test]
    fn stored_numbers_read_back_equal() {
        // What the annotations column holds is the parsed value serialized
        // again: it must parse back to the same number (serde_json's
        // float_roundtrip; found by the fuzz target `webhook`).
        for text in [
            "3333333333333333333333333333333333669333",
            "-3000000332213.3333",
            "1e300",
        ] {
            let parsed: Value = serde_json::from_str(text).unwrap();
            let back: Value = serde_json::from_str(&parsed.to_string()).unwrap();
            assert_eq!(back, parsed, "{text}");
        }
    }

    #[test]
    fn time_round_trip() {
        assert_eq!(parse_time(ZERO_TIME), Some(ZERO_TIME_MS));
        assert_eq!(format_time(ZERO_TIME_MS), ZERO_TIME);
        let ms = parse_time("2026-11-22T12:49:51.401Z").unwrap();
        assert_eq!(format_time(ms), "2026-11-22T12:49:51.401Z");
        // Every time accepted is written back as RFC 3339 (fuzz target
        // `webhook`, fuzz/regressions/webhook/year-*): an offset must not
        // carry it out of the four-digit years.
        for text in ["9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00+00:01"] {
            assert_eq!(parse_time(text), None, "{text}");
        }
        for text in [
            "9999-12-31T23:59:59.999Z",
            "0000-01-01T00:00:00Z",
            "0000-01-01T00:30:00+00:30",
        ] {
            let ms = parse_time(text).unwrap();
            assert_eq!(parse_time(&format_time(ms)), Some(ms), "{text}");
        }
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

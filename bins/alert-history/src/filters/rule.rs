//! One filter rule: what an operator posts ([`RuleSpec`]), how it is
//! validated ([`RuleSpec::compile`]), and how a compiled [`Rule`] matches
//! an alert.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::model::Status;
use crate::routing::{AlertView, Classification, Decision};

/// Most rules stored at once.
pub const MAX_RULES: usize = 1000;
/// Longest delay of a `delay` rule (one day).
pub const MAX_DELAY_SECONDS: u32 = 86_400;
/// Lowest and highest priority.
pub const PRIORITY_BOUND: i64 = 1_000_000;
/// Longest rule name (1..=128 characters of `A-Z a-z 0-9 . _ : -`).
pub const MAX_NAME_LEN: usize = 128;
/// Longest target name, label name or value, severity or namespace.
const MAX_TEXT_LEN: usize = 256;
/// Longest `alertname_pattern`.
const MAX_PATTERN_LEN: usize = 1024;
/// Most `labels` entries, and most `severity` or `namespace` values.
const MAX_ENTRIES: usize = 64;
/// Compiled size limit of `alertname_pattern` (regex's own guard against
/// patterns that explode when compiled).
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Publish.
    Allow,
    /// Do not publish to the rule's target(s).
    Deny,
    /// Hold for `delay_seconds`; dropped if the alert resolves meanwhile.
    Delay,
}

impl Action {
    /// `"allow"`, `"deny"` or `"delay"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Delay => "delay",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Action> {
        match s {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            "delay" => Some(Action::Delay),
            _ => None,
        }
    }
}

fn any_target() -> String {
    "*".to_owned()
}

fn yes() -> bool {
    true
}

/// A rule as posted to `POST /proxy/filters/rules` and stored. Unknown
/// fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique name (`A-Z a-z 0-9 . _ : -`, at most [`MAX_NAME_LEN`]).
    pub name: String,
    /// `"*"` (every target) or one target's name. Default `"*"`.
    #[serde(default = "any_target")]
    pub target: String,
    /// What the rule does when it matches.
    pub action: Action,
    /// For `delay` (required there, refused elsewhere):
    /// 1..=[`MAX_DELAY_SECONDS`].
    #[serde(default)]
    pub delay_seconds: Option<u32>,
    /// Lower is evaluated first; ties by name. Default 0, bounded by
    /// ±[`PRIORITY_BOUND`].
    #[serde(default)]
    pub priority: i64,
    /// A disabled rule is skipped. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// All of them must hold (none: the rule matches every alert).
    #[serde(default)]
    pub conditions: Conditions,
}

/// The conditions of a rule; every one given must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// Each label must be present with exactly this value (plain equality,
    /// no regular expressions).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The alert's severity is one of these (case-insensitive): the LLM
    /// classification's when there is one, else the `severity` label; an
    /// alert with neither does not match.
    #[serde(default)]
    pub severity: Vec<String>,
    /// The `namespace` label is one of these.
    #[serde(default)]
    pub namespace: Vec<String>,
    /// The classification's confidence is at least this (0..=1). An
    /// unclassified alert does not match a rule with a confidence
    /// condition.
    #[serde(default)]
    pub min_confidence: Option<f64>,
    /// The classification's confidence is at most this (0..=1).
    #[serde(default)]
    pub max_confidence: Option<f64>,
    /// A regular expression (Rust `regex` syntax) the whole `alertname`
    /// must match (anchored at both ends).
    #[serde(default)]
    pub alertname_pattern: Option<String>,
    /// Only firing or only resolved events.
    #[serde(default)]
    pub status: Option<Status>,
}

/// Why a rule was refused: the field (a dotted path such as
/// `conditions.alertname_pattern`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The offending field.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Invalid {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
        Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A validated rule, its pattern compiled; the times are epoch ms.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule as posted (normalised).
    pub spec: RuleSpec,
    /// First stored.
    pub created_at: i64,
    /// Last replaced.
    pub updated_at: i64,
    alertname: Option<Regex>,
    /// `conditions.severity`, lowercased.
    severity: Vec<String>,
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(Invalid::new(field, format!("longer than {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(Invalid::new(field, "contains control characters"));
    }
    Ok(())
}

fn check_list(field: &str, values: &[String]) -> Result<(), Invalid> {
    if values.len() > MAX_ENTRIES {
        return Err(Invalid::new(
            field,
            format!("more than {MAX_ENTRIES} values"),
        ));
    }
    for (i, v) in values.iter().enumerate() {
        check_text(&format!("{field}[{i}]"), v, MAX_TEXT_LEN)?;
    }
    Ok(())
}

fn check_confidence(field: &str, value: Option<f64>) -> Result<(), Invalid> {
    match value {
        Some(v) if !(0.0..=1.0).contains(&v) => Err(Invalid::new(field, "must be between 0 and 1")),
        _ => Ok(()),
    }
}

/// Whether `name` is a valid rule name.
pub(crate) fn valid_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Invalid::new(
            "name",
            format!("must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(Invalid::new(
            "name",
            "only letters, digits and . _ : - are allowed",
        ));
    }
    Ok(())
}

impl RuleSpec {
    /// Validates the rule and compiles its pattern.
    ///
    /// # Errors
    /// [`Invalid`] naming the first offending field.
    pub fn compile(self, created_at: i64, updated_at: i64) -> Result<Rule, Invalid> {
        valid_name(&self.name)?;
        check_text("target", &self.target, MAX_TEXT_LEN)?;
        if self.target.chars().any(char::is_whitespace) {
            return Err(Invalid::new("target", "must not contain whitespace"));
        }
        match (self.action, self.delay_seconds) {
            (Action::Delay, None) => {
                return Err(Invalid::new(
                    "delay_seconds",
                    "required when action is \"delay\"",
                ));
            }
            (Action::Delay, Some(d)) if d == 0 || d > MAX_DELAY_SECONDS => {
                return Err(Invalid::new(
                    "delay_seconds",
                    format!("must be between 1 and {MAX_DELAY_SECONDS}"),
                ));
            }
            (Action::Allow | Action::Deny, Some(_)) => {
                return Err(Invalid::new(
                    "delay_seconds",
                    "only allowed when action is \"delay\"",
                ));
            }
            _ => {}
        }
        if !(-PRIORITY_BOUND..=PRIORITY_BOUND).contains(&self.priority) {
            return Err(Invalid::new(
                "priority",
                format!("must be between -{PRIORITY_BOUND} and {PRIORITY_BOUND}"),
            ));
        }
        let c = &self.conditions;
        if c.labels.len() > MAX_ENTRIES {
            return Err(Invalid::new(
                "conditions.labels",
                format!("more than {MAX_ENTRIES} labels"),
            ));
        }
        for (k, v) in &c.labels {
            check_text("conditions.labels", k, MAX_TEXT_LEN)?;
            if v.chars().count() > MAX_TEXT_LEN {
                return Err(Invalid::new(
                    format!("conditions.labels.{k}"),
                    format!("longer than {MAX_TEXT_LEN} characters"),
                ));
            }
        }
        check_list("conditions.severity", &c.severity)?;
        check_list("conditions.namespace", &c.namespace)?;
        check_confidence("conditions.min_confidence", c.min_confidence)?;
        check_confidence("conditions.max_confidence", c.max_confidence)?;
        if let (Some(min), Some(max)) = (c.min_confidence, c.max_confidence)
            && min > max
        {
            return Err(Invalid::new(
                "conditions.max_confidence",
                "must not be below min_confidence",
            ));
        }
        let alertname = match &c.alertname_pattern {
            None => None,
            Some(p) => {
                let field = "conditions.alertname_pattern";
                if p.len() > MAX_PATTERN_LEN {
                    return Err(Invalid::new(
                        field,
                        format!("longer than {MAX_PATTERN_LEN} bytes"),
                    ));
                }
                let regex = RegexBuilder::new(&format!("^(?:{p})$"))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| {
                        Invalid::new(field, format!("not a valid regular expression: {e}"))
                    })?;
                Some(regex)
            }
        };
        let severity = c.severity.iter().map(|s| s.to_lowercase()).collect();
        Ok(Rule {
            spec: self,
            created_at,
            updated_at,
            alertname,
            severity,
        })
    }
}

impl Rule {
    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether this rule is in effect for `target` and every condition
    /// holds for the alert.
    pub fn matches(
        &self,
        alert: &AlertView,
        classification: Option<&Classification>,
        target: &str,
    ) -> bool {
        let spec = &self.spec;
        if !spec.enabled || (spec.target != "*" && spec.target != target) {
            return false;
        }
        let c = &spec.conditions;
        if c.status.is_some_and(|s| s != alert.status) {
            return false;
        }
        if !c.labels.iter().all(|(k, v)| alert.labels.get(k) == Some(v)) {
            return false;
        }
        if !self.severity.is_empty() {
            let severity = match classification {
                Some(c) => Some(c.severity.as_str().to_owned()),
                None => alert
                    .severity
                    .as_deref()
                    .or_else(|| alert.labels.get("severity").map(String::as_str))
                    .map(str::to_lowercase),
            };
            if !severity.is_some_and(|s| self.severity.contains(&s)) {
                return false;
            }
        }
        if !c.namespace.is_empty()
            && !alert
                .namespace
                .as_ref()
                .is_some_and(|ns| c.namespace.contains(ns))
        {
            return false;
        }
        if c.min_confidence.is_some() || c.max_confidence.is_some() {
            let Some(confidence) = classification.map(|c| c.confidence) else {
                return false;
            };
            if c.min_confidence.is_some_and(|min| confidence < min)
                || c.max_confidence.is_some_and(|max| confidence > max)
            {
                return false;
            }
        }
        if let Some(pattern) = &self.alertname
            && !pattern.is_match(&alert.alertname)
        {
            return false;
        }
        true
    }

    /// What this rule decides when it matches.
    pub fn decision(&self) -> Decision {
        let rule = self.spec.name.clone();
        match self.spec.action {
            Action::Allow => Decision::Allow,
            Action::Deny => Decision::Deny { rule },
            Action::Delay => Decision::Delay {
                rule,
                delay: Duration::from_secs(u64::from(self.spec.delay_seconds.unwrap_or(1))),
            },
        }
    }
}

/// The rules in evaluation order: priority, then name.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
}

impl RuleSet {
    /// Sorts `rules` into evaluation order.
    pub fn new(mut rules: Vec<Arc<Rule>>) -> RuleSet {
        rules.sort_by(|a, b| (a.spec.priority, &a.spec.name).cmp(&(b.spec.priority, &b.spec.name)));
        RuleSet { rules }
    }

    /// The rules, in evaluation order.
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// The first enabled rule that matches decides; none: [`Decision::Allow`].
    /// A matching `allow` rule ends the evaluation too (later rules are not
    /// consulted).
    pub fn decide(
        &self,
        alert: &AlertView,
        classification: Option<&Classification>,
        target: &str,
    ) -> (Decision, Option<&Rule>) {
        self.rules
            .iter()
            .find(|r| r.matches(alert, classification, target))
            .map_or((Decision::Allow, None), |r| {
                (r.decision(), Some(r.as_ref()))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::LlmSeverity;

    fn alert(labels: &[(&str, &str)]) -> AlertView {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        AlertView {
            event_id: 1,
            fingerprint: "f".into(),
            alertname: labels.get("alertname").cloned().unwrap_or_default(),
            namespace: labels.get("namespace").cloned(),
            severity: labels.get("severity").cloned(),
            status: Status::Firing,
            starts_at: 0,
            ends_at: 0,
            labels,
            annotations: serde_json::Map::new(),
            generator_url: None,
        }
    }

    fn spec(json: serde_json::Value) -> Result<Rule, Invalid> {
        serde_json::from_value::<RuleSpec>(json)
            .unwrap()
            .compile(0, 0)
    }

    #[test]
    fn the_pattern_is_anchored() {
        let rule = spec(serde_json::json!({
            "name": "r", "action": "deny",
            "conditions": {"alertname_pattern": "Disk.*"}
        }))
        .unwrap();
        assert!(rule.matches(&alert(&[("alertname", "DiskFull")]), None, "t"));
        assert!(!rule.matches(&alert(&[("alertname", "NodeDiskFull")]), None, "t"));
    }

    #[test]
    fn invalid_rules_name_their_field() {
        for (json, field) in [
            (serde_json::json!({"name": "a b", "action": "deny"}), "name"),
            (
                serde_json::json!({"name": "r", "action": "delay"}),
                "delay_seconds",
            ),
            (
                serde_json::json!({"name": "r", "action": "delay", "delay_seconds": 86401}),
                "delay_seconds",
            ),
            (
                serde_json::json!({"name": "r", "action": "deny", "delay_seconds": 5}),
                "delay_seconds",
            ),
            (
                serde_json::json!({"name": "r", "action": "deny", "priority": 2_000_000}),
                "priority",
            ),
            (
                serde_json::json!({"name": "r", "action": "deny", "conditions": {"alertname_pattern": "("}}),
                "conditions.alertname_pattern",
            ),
            (
                serde_json::json!({"name": "r", "action": "deny", "conditions": {"min_confidence": 1.5}}),
                "conditions.min_confidence",
            ),
            (
                serde_json::json!({"name": "r", "action": "deny",
                    "conditions": {"min_confidence": 0.8, "max_confidence": 0.2}}),
                "conditions.max_confidence",
            ),
        ] {
            assert_eq!(spec(json).unwrap_err().field, field);
        }
    }

    #[test]
    fn classification_severity_wins_over_the_label() {
        let rule = spec(serde_json::json!({
            "name": "r", "action": "deny", "conditions": {"severity": ["Noise"]}
        }))
        .unwrap();
        let a = alert(&[("severity", "critical")]);
        assert!(!rule.matches(&a, None, "t"));
        let c = Classification {
            severity: LlmSeverity::Noise,
            confidence: 0.9,
            reasoning: String::new(),
            recommendations: vec![],
            model: "m".into(),
            classified_at_ms: 0,
        };
        assert!(rule.matches(&a, Some(&c), "t"));
        assert!(
            spec(serde_json::json!({
                "name": "r", "action": "deny", "conditions": {"severity": ["CRITICAL"]}
            }))
            .unwrap()
            .matches(&a, None, "t")
        );
    }
}

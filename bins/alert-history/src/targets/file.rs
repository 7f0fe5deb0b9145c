//! `TARGETS_FILE`: a YAML list of targets, each with a `name` and the
//! Secret's keys.
//!
//! ```yaml
//! - {name: oncall, format: pagerduty, api-key: R0123456789abcdef0123456789abcde}
//! - name: team-chat
//!   format: slack
//!   url: https://hooks.slack.com/services/T000/B000/XXXX
//!   filter-severity: [critical, warning]   # or "critical,warning"
//!   min-confidence: 0.7
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use keel_core::ConfigError;
use serde_yaml::Value;

use super::model::{Target, TargetSource};

/// The variable every error of this module names.
pub(crate) const VARIABLE: &str = "TARGETS_FILE";

/// Reads and parses the file.
///
/// # Errors
/// A [`ConfigError`] naming `TARGETS_FILE`, the path and, for a bad entry,
/// its position and name.
pub(crate) fn load(path: &Path) -> Result<Vec<Target>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(VARIABLE, format!("cannot read {}: {e}", path.display())))?;
    parse(&text)
        .map_err(|reason| ConfigError::new(VARIABLE, format!("{}: {reason}", path.display())))
}

/// Parses the file's text (an empty file: no targets).
///
/// # Errors
/// Why, naming the entry (`entry 2 (oncall): ...`).
pub(crate) fn parse(text: &str) -> Result<Vec<Target>, String> {
    let doc: Value = serde_yaml::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let entries = match doc {
        Value::Null => return Ok(Vec::new()),
        Value::Sequence(entries) => entries,
        _ => {
            return Err(
                "must be a YAML list of targets (`- {name: ..., format: ..., url: ...}`)"
                    .to_owned(),
            );
        }
    };
    let mut targets = Vec::with_capacity(entries.len());
    let mut names = HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let position = i + 1;
        let keys = keys(entry).map_err(|reason| format!("entry {position}: {reason}"))?;
        let Some(name) = keys
            .get("name")
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
        else {
            return Err(format!("entry {position}: `name` is missing"));
        };
        let target = Target::from_keys(&name, &keys, TargetSource::File)
            .map_err(|reason| format!("entry {position} ({name}): {reason}"))?;
        if !names.insert(target.name.clone()) {
            return Err(format!(
                "entry {position} ({name}): the name is used by an earlier entry"
            ));
        }
        targets.push(target);
    }
    Ok(targets)
}

/// An entry's keys as text: scalars as written, a list of scalars joined
/// with commas (so `filter-severity: [critical, warning]` reads as the
/// Secret's `critical,warning`).
fn keys(entry: &Value) -> Result<BTreeMap<String, String>, String> {
    let Value::Mapping(map) = entry else {
        return Err("must be a mapping of keys (`name`, `format`, `url`, ...)".to_owned());
    };
    let mut out = BTreeMap::new();
    for (key, value) in map {
        let Some(key) = key.as_str() else {
            return Err("keys must be strings".to_owned());
        };
        let text = match value {
            Value::Null => continue,
            Value::Sequence(items) => items
                .iter()
                .map(|v| scalar(v).ok_or_else(|| format!("`{key}` must be a list of values")))
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            v => scalar(v).ok_or_else(|| format!("`{key}` must be a value or a list"))?,
        };
        out.insert(key.to_owned(), text);
    }
    Ok(out)
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

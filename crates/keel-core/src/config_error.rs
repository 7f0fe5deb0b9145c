//! The one configuration error every Keel crate returns from its builders.

use std::borrow::Cow;
use std::fmt;

/// A setting was rejected: [`field`](ConfigError::field) names it (as its
/// builder method or environment variable spells it), and
/// [`reason`](ConfigError::reason) says what is wrong.
///
/// Every Keel crate returns this one type from its builders, so a program
/// maps any of them to "exit 64, naming the variable" in one place.
///
/// ```
/// use keel_core::ConfigError;
///
/// let e = ConfigError::new("max_retries", "must be at most 100");
/// assert_eq!(e.field(), "max_retries");
/// assert_eq!(e.to_string(), "invalid `max_retries`: must be at most 100");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: Cow<'static, str>,
    reason: Cow<'static, str>,
}

impl ConfigError {
    /// `field` is invalid because of `reason` (a phrase such as "must be
    /// above zero").
    pub fn new(field: impl Into<Cow<'static, str>>, reason: impl Into<Cow<'static, str>>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The setting at fault (`max_retries`, `backoff.factor`,
    /// `TELEGRAM_CHAT_ID`...).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The same error under a longer name, for a setting nested in another
    /// (`retry` + `max_delay` → `retry.max_delay`), or renamed to the
    /// variable a program reads it from.
    #[must_use]
    pub fn within(self, outer: &str) -> Self {
        ConfigError {
            field: Cow::Owned(format!("{outer}.{}", self.field)),
            reason: self.reason,
        }
    }

    /// The same error, naming `field` instead (a program's variable name).
    #[must_use]
    pub fn renamed(self, field: impl Into<Cow<'static, str>>) -> Self {
        ConfigError {
            field: field.into(),
            reason: self.reason,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_and_renaming_keep_the_reason() {
        let e = ConfigError::new("factor", "must be at least 1").within("backoff");
        assert_eq!(e.field(), "backoff.factor");
        assert_eq!(e.reason(), "must be at least 1");
        let r = e.renamed("RETRY_FACTOR");
        assert_eq!(r.to_string(), "invalid `RETRY_FACTOR`: must be at least 1");
    }
}

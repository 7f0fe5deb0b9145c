use std::time::Duration;

/// What one call meant for reliability purposes.
///
/// Breakers count [`Outcome::Failure`] (and [`Outcome::Overloaded`]) against a
/// dependency, retry policies retry only those two, and [`Outcome::Neutral`]
/// never changes any statistic: a call the caller cancelled, or an error that
/// says nothing about the dependency's health (a 404, a validation error),
/// must not trip a breaker or spend a retry budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed in a way that reflects on the dependency.
    Failure,
    /// The call was cancelled or its result deliberately ignored.
    Neutral,
    /// The dependency refused the call because it is overloaded (HTTP 429 or
    /// 503, Telegram's `retry_after`, an open circuit breaker). `retry_after`
    /// is how long it asked callers to wait, when it said.
    Overloaded {
        /// The delay the dependency asked for, if it gave one.
        retry_after: Option<Duration>,
    },
}

impl Outcome {
    /// An overload without a retry-after hint.
    pub const OVERLOADED: Outcome = Outcome::Overloaded { retry_after: None };

    /// An overload that asks callers to wait `retry_after`.
    pub const fn overloaded_for(retry_after: Duration) -> Outcome {
        Outcome::Overloaded {
            retry_after: Some(retry_after),
        }
    }

    /// `true` for [`Outcome::Success`].
    pub const fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// `true` for [`Outcome::Failure`] and [`Outcome::Overloaded`]: the
    /// outcomes that count against a dependency and may be retried.
    pub const fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failure | Outcome::Overloaded { .. })
    }

    /// `true` for [`Outcome::Neutral`].
    pub const fn is_neutral(&self) -> bool {
        matches!(self, Outcome::Neutral)
    }

    /// `true` for [`Outcome::Overloaded`].
    pub const fn is_overloaded(&self) -> bool {
        matches!(self, Outcome::Overloaded { .. })
    }

    /// Whether a retry policy may retry this outcome (failures and overloads).
    pub const fn is_retryable(&self) -> bool {
        self.is_failure()
    }

    /// The retry-after hint of an overload, if any.
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            Outcome::Overloaded { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// A short, stable, lowercase name, usable as a bounded metric label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Neutral => "neutral",
            Outcome::Overloaded { .. } => "overloaded",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.retry_after() {
            Some(d) => write!(f, "overloaded (retry after {d:?})"),
            None => f.write_str(self.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates() {
        assert!(Outcome::Success.is_success());
        assert!(Outcome::Failure.is_failure() && Outcome::Failure.is_retryable());
        assert!(Outcome::OVERLOADED.is_failure() && Outcome::OVERLOADED.is_overloaded());
        assert!(Outcome::Neutral.is_neutral() && !Outcome::Neutral.is_retryable());
        assert_eq!(
            Outcome::overloaded_for(Duration::from_secs(3)).retry_after(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(Outcome::Failure.retry_after(), None);
        assert_eq!(Outcome::OVERLOADED.to_string(), "overloaded");
        assert_eq!(
            Outcome::overloaded_for(Duration::from_secs(1)).to_string(),
            "overloaded (retry after 1s)"
        );
    }
}

//! How urgent a call or a job is, for every Keel component that queues work.

use std::fmt;

/// How urgent a call or job is. Components that queue work (the bulkhead,
/// the worker pool) serve higher priorities first and FIFO within one
/// priority; components that shed work shed the lowest priority first.
///
/// Ordered: `Low < Normal < High < Critical`; the default is `Normal`.
///
/// ```
/// use keel_core::Priority;
/// assert!(Priority::Critical > Priority::Low);
/// assert_eq!(Priority::default(), Priority::Normal);
/// assert_eq!("high".parse::<Priority>(), Ok(Priority::High));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Priority {
    /// Background work that may wait (routine reads, warm-up).
    Low,
    /// Ordinary work.
    #[default]
    Normal,
    /// Work an operator is waiting on (probe-triggered reads).
    High,
    /// Work that repairs an outage (start a stopped VM, recover a process).
    Critical,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ];

    /// 0 for `Low` up to 3 for `Critical`: an index into per-priority arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The lowercase name, usable as a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not one of `low`, `normal`, `high`, `critical`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPriority;

impl fmt::Display for UnknownPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected one of low, normal, high, critical")
    }
}

impl std::error::Error for UnknownPriority {}

impl std::str::FromStr for Priority {
    type Err = UnknownPriority;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or(UnknownPriority)
    }
}

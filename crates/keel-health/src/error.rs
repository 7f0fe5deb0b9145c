use crate::target::TargetId;

/// Everything a [`HealthChecker`](crate::HealthChecker) operation or a probe
/// constructor can reject.
///
/// Each variant wraps a small struct that callers can match on (or downcast
/// to, from a boxed error) to get the detail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// A configuration value is out of range; the error names the field.
    #[error(transparent)]
    InvalidConfig(#[from] ConfigError),
    /// [`HealthChecker::add`](crate::HealthChecker::add) was given an id that
    /// is already checked.
    #[error(transparent)]
    TargetExists(#[from] TargetExists),
    /// The operation named a target that is not (or no longer) checked.
    #[error(transparent)]
    UnknownTarget(#[from] UnknownTarget),
    /// The checker was shut down; it accepts no new targets.
    #[error(transparent)]
    ShutDown(#[from] CheckerShutDown),
    /// The checker was built outside a tokio runtime and none was given.
    #[error(
        "no tokio runtime: build the health checker inside a runtime or pass one with `HealthCheckerBuilder::runtime`"
    )]
    NoRuntime,
}

pub use keel_core::ConfigError;

/// A target with this id is already being checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target `{target}` is already checked")]
pub struct TargetExists {
    /// The duplicate id.
    pub target: TargetId,
}

/// No target with this id is being checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no target `{target}` is checked")]
pub struct UnknownTarget {
    /// The id that was not found.
    pub target: TargetId,
}

/// The checker was shut down and accepts no new work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the health checker is shut down")]
pub struct CheckerShutDown;

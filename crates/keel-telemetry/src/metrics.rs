//! A prometheus-client registry with the program's prefix (or, for
//! programs whose metric names are fixed by a spec, none).

use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

use keel_core::ConfigError;

use crate::TelemetryError;

/// The `Content-Type` of the OpenMetrics text exposition served on
/// `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The program's metrics registry: a prometheus-client [`Registry`] whose
/// every metric is prefixed with the program's name (`vm_watchdog_...`),
/// or, built with [`MetricsRegistry::unprefixed`], a registry without a
/// program prefix for metrics whose exact names are specified elsewhere
/// (a dashboard, an issue, a predecessor's exporter).
///
/// Libraries expose `register(&mut Registry)` with short, unprefixed names;
/// the program hands them the root registry or a sub-registry with an extra
/// prefix through [`MetricsRegistry::register_with`] and
/// [`MetricsRegistry::register_with_prefix`]. Cloning is cheap and shares the
/// registry, so the admin server can encode it while the program keeps
/// registering.
///
/// Registering takes a write lock and encoding a read lock; metric updates
/// themselves never touch the lock (prometheus-client metrics are atomics
/// shared by `Arc`).
#[derive(Clone)]
pub struct MetricsRegistry {
    prefix: Arc<str>,
    registry: Arc<RwLock<Registry>>,
}

impl MetricsRegistry {
    /// A registry whose metrics are all named `<prefix>_<name>`.
    ///
    /// # Errors
    /// [`TelemetryError::Config`] naming `prefix` when it is not a metric name
    /// (ASCII letters, digits and underscores, not starting with a digit).
    pub fn new(prefix: &str) -> Result<Self, TelemetryError> {
        validate_metric_name("prefix", prefix)?;
        Ok(MetricsRegistry {
            prefix: prefix.into(),
            registry: Arc::new(RwLock::new(Registry::with_prefix(prefix))),
        })
    }

    /// A registry without a program prefix: metrics keep the names they are
    /// registered with (`vm_checks_total`, not `vm_watchdog_vm_checks_total`).
    ///
    /// Use it when the names are fixed by something outside the program (a
    /// specification, existing dashboards); libraries registered in it should
    /// then go through [`register_with_prefix`](Self::register_with_prefix)
    /// so their short names (`queued`, `sent`) cannot collide with the
    /// program's or with each other. [`prefix`](Self::prefix) is `""`.
    pub fn unprefixed() -> Self {
        MetricsRegistry {
            prefix: "".into(),
            registry: Arc::new(RwLock::new(Registry::default())),
        }
    }

    /// The program's prefix (`""` for [`unprefixed`](Self::unprefixed)).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Runs `f` with the root registry (names get `<prefix>_`, or nothing
    /// when unprefixed), for
    /// `some_library::metrics::register(registry)`-style APIs.
    pub fn register_with<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.registry.write())
    }

    /// Runs `f` with a sub-registry whose names get `<prefix>_<sub_prefix>_`
    /// (`<sub_prefix>_` when unprefixed), so two instances of one library
    /// (`breaker_ec2`, `breaker_s3`) do not collide.
    ///
    /// # Errors
    /// [`TelemetryError::Config`] naming `sub_prefix` when it is not a
    /// metric name.
    pub fn register_with_prefix<R>(
        &self,
        sub_prefix: &str,
        f: impl FnOnce(&mut Registry) -> R,
    ) -> Result<R, TelemetryError> {
        validate_metric_name("sub_prefix", sub_prefix)?;
        let mut registry = self.registry.write();
        Ok(f(registry.sub_registry_with_prefix(sub_prefix)))
    }

    /// Encodes every registered metric as OpenMetrics text (ending in
    /// `# EOF`).
    ///
    /// # Errors
    /// `fmt::Error` when a custom collector fails to encode.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry.read())?;
        Ok(out)
    }
}

impl fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsRegistry")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn validate_metric_name(field: &'static str, name: &str) -> Result<(), TelemetryError> {
    let mut chars = name.chars();
    let valid = match chars.next() {
        Some(first) => {
            (first.is_ascii_alphabetic() || first == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!(
                "`{name}`: use ASCII letters, digits and underscores, not starting with a digit"
            ),
        )
        .into())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    use super::*;

    #[test]
    fn metrics_carry_the_program_prefix_and_sub_prefixes() {
        let metrics = MetricsRegistry::new("vm_watchdog").unwrap();
        let checks: Counter = Counter::default();
        let open: Gauge = Gauge::default();
        metrics.register_with(|r| r.register("checks", "VM status checks", checks.clone()));
        metrics
            .register_with_prefix("breaker", |r| {
                r.register("open", "Open circuit breakers", open.clone());
            })
            .unwrap();
        checks.inc_by(3);
        open.set(2);
        let text = metrics.encode().unwrap();
        assert!(text.contains("# TYPE vm_watchdog_checks counter"), "{text}");
        assert!(text.contains("vm_watchdog_checks_total 3"), "{text}");
        assert!(text.contains("vm_watchdog_breaker_open 2"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(metrics.prefix(), "vm_watchdog");
    }

    #[test]
    fn unprefixed_registries_keep_the_registered_names() {
        let metrics = MetricsRegistry::unprefixed();
        assert_eq!(metrics.prefix(), "");
        let checks: Counter = Counter::default();
        let queued: Counter = Counter::default();
        metrics.register_with(|r| r.register("vm_checks", "VM status checks", checks.clone()));
        metrics
            .register_with_prefix("notify", |r| {
                r.register("queued", "Queued alerts", queued.clone());
            })
            .unwrap();
        checks.inc_by(2);
        queued.inc();
        let text = metrics.encode().unwrap();
        assert!(text.contains("# TYPE vm_checks counter"), "{text}");
        assert!(text.contains("\nvm_checks_total 2\n"), "{text}");
        assert!(text.contains("\nnotify_queued_total 1\n"), "{text}");
        assert!(!text.contains("_vm_checks"), "no prefix at all: {text}");
        assert!(metrics.register_with_prefix("bad-sub", |_| ()).is_err());
        assert!(format!("{metrics:?}").contains("prefix: \"\""));
    }

    #[test]
    fn clones_share_the_registry() {
        let metrics = MetricsRegistry::new("p").unwrap();
        let clone = metrics.clone();
        let c: Counter = Counter::default();
        clone.register_with(|r| r.register("late", "Registered through a clone", c.clone()));
        assert!(metrics.encode().unwrap().contains("p_late_total 0"));
    }

    #[test]
    fn invalid_prefixes_are_rejected_with_the_field_name() {
        for bad in ["", "vm-watchdog", "9lives", "a b", "é"] {
            let err = MetricsRegistry::new(bad).unwrap_err();
            assert!(
                matches!(&err, TelemetryError::Config(e) if e.field() == "prefix" && e.reason().starts_with(&format!("`{bad}`"))),
                "{bad}: {err}"
            );
        }
        let metrics = MetricsRegistry::new("_ok_1").unwrap();
        assert!(metrics.register_with_prefix("bad-sub", |_| ()).is_err());
    }
}

//! The program's configuration: one clap struct, every field also an
//! environment variable, validated into typed [`Settings`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use keel_telemetry::{ConfigError, KitArgs, LogTarget, Program, check};

/// The default CPU query: `{pods}` is replaced by the regex of the pods'
/// names, `{namespace}` by the namespace.
pub const DEFAULT_CPU_QUERY: &str = "sum by (pod) (rate(container_cpu_usage_seconds_total{namespace=\"{namespace}\",pod=~\"{pods}\",container!=\"\"}[5m]))";
/// The default Kafka lag query.
pub const DEFAULT_LAG_QUERY: &str =
    "sum by (pod) (kafka_consumer_lag_sum{namespace=\"{namespace}\",pod=~\"{pods}\"})";
/// The default consumption-rate query (the plan's
/// `rate(kafka_consumer_messages_consumed_total[5m])`, summed per pod).
pub const DEFAULT_CONSUMPTION_RATE_QUERY: &str = "sum by (pod) (rate(kafka_consumer_messages_consumed_total{namespace=\"{namespace}\",pod=~\"{pods}\"}[5m]))";
/// The default memory query.
pub const DEFAULT_MEMORY_QUERY: &str = "sum by (pod) (container_memory_working_set_bytes{namespace=\"{namespace}\",pod=~\"{pods}\",container!=\"\"})";

/// How pods are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Weighted, normalised CPU, lag and memory; rotate the most and the
    /// least busy pod when CPU or lag is spread out.
    Composite,
    /// What the predecessor shipped: top K by CPU above the HPA target,
    /// bottom K, when the predicted improvement is large enough.
    HpaCpu,
}

impl Strategy {
    /// The name used in the report and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Composite => "composite",
            Strategy::HpaCpu => "hpa-cpu",
        }
    }
}

/// How a chosen pod goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeleteMode {
    /// The Eviction API: PodDisruptionBudgets are honoured.
    Evict,
    /// A plain DELETE with `DELETE_GRACE_PERIOD`: PDBs are not consulted.
    Delete,
}

/// How the report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Log lines only.
    Text,
    /// The JSON report on stdout (logs go to stderr).
    Json,
}

/// pod-rebalancer: scores the pods of one Deployment from Prometheus and
/// evicts the most and least busy ones so the scheduler and the consumer
/// group spread the load again.
///
/// Every option is also an environment variable (the name in capitals).
/// Durations are written `30s`, `5m`, `1h` or `250ms`.
#[derive(Debug, Clone, Parser)]
#[command(name = "pod-rebalancer", version, about, long_about = None, args_override_self = true)]
pub struct Config {
    /// Base URL of the Prometheus HTTP API.
    #[arg(
        long,
        env = "PROMETHEUS_ENDPOINT",
        default_value = "http://prometheus:9090"
    )]
    pub prometheus_endpoint: String,
    /// Deadline of each PromQL query, retries included.
    #[arg(long, env = "PROMETHEUS_TIMEOUT", default_value = "30s")]
    pub prometheus_timeout: String,
    /// Namespace of the pods.
    #[arg(long, env = "KUBE_NAMESPACE", default_value = "default")]
    pub kube_namespace: String,
    /// Label selector of the pods (`app=consumer`).
    #[arg(long, env = "KUBE_LABEL_SELECTOR")]
    pub kube_label_selector: String,
    /// The Deployment that owns the pods (rollout check, memory and lock).
    #[arg(long, env = "DEPLOYMENT_NAME")]
    pub deployment_name: String,
    /// `composite` or `hpa-cpu`.
    #[arg(long, env = "STRATEGY", value_enum, default_value = "composite")]
    pub strategy: Strategy,
    /// composite: act when CPU's coefficient of variation exceeds this.
    #[arg(long, env = "CPU_VARIANCE_THRESHOLD", default_value_t = 0.3)]
    pub cpu_variance_threshold: f64,
    /// composite: act when lag's coefficient of variation exceeds this.
    #[arg(long, env = "LAG_VARIANCE_THRESHOLD", default_value_t = 0.5)]
    pub lag_variance_threshold: f64,
    /// composite: weight of normalised CPU in the score.
    #[arg(long, env = "CPU_WEIGHT", default_value_t = 0.4)]
    pub cpu_weight: f64,
    /// composite: weight of normalised lag in the score.
    #[arg(long, env = "LAG_WEIGHT", default_value_t = 0.4)]
    pub lag_weight: f64,
    /// composite: weight of normalised memory in the score.
    #[arg(long, env = "MEMORY_WEIGHT", default_value_t = 0.2)]
    pub memory_weight: f64,
    /// hpa-cpu: how many of the busiest and of the idlest pods.
    #[arg(long, env = "TOP_K", default_value_t = 1)]
    pub top_k: usize,
    /// hpa-cpu: the HPA's name (default: `HPA_PREFIX` + `DEPLOYMENT_NAME`).
    #[arg(long, env = "HPA_NAME")]
    pub hpa_name: Option<String>,
    /// Prefix of the HPA's name when `HPA_NAME` is unset.
    #[arg(long, env = "HPA_PREFIX", default_value = "")]
    pub hpa_prefix: String,
    /// hpa-cpu: a busy pod exceeds target % / 100 × this × mean CPU request.
    #[arg(long, env = "TOLERANCE_MULTIPLIER", default_value_t = 1.5)]
    pub tolerance_multiplier: f64,
    /// hpa-cpu: act only if the top pods' mean improves by more (percent).
    #[arg(long, env = "MINIMUM_IMPROVEMENT_PERCENT", default_value_t = 10.0)]
    pub minimum_improvement_percent: f64,
    /// At most this many pods go in one run.
    #[arg(long, env = "MAX_PODS_TO_DELETE", default_value_t = 2)]
    pub max_pods_to_delete: usize,
    /// Never fewer Ready pods than this, counting the ones about to go.
    #[arg(long, env = "MIN_PODS_REQUIRED", default_value_t = 3)]
    pub min_pods_required: usize,
    /// Pods younger than this are neither scored nor chosen.
    #[arg(long, env = "MIN_POD_AGE", default_value = "10m")]
    pub min_pod_age: String,
    /// Decide and explain, change nothing.
    #[arg(long, env = "DRY_RUN", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dry_run: bool,
    /// `evict` (PDBs hold) or `delete`.
    #[arg(long, env = "DELETE_MODE", value_enum, default_value = "evict")]
    pub delete_mode: DeleteMode,
    /// Grace period of a plain delete.
    #[arg(long, env = "DELETE_GRACE_PERIOD", default_value = "30s")]
    pub delete_grace_period: String,
    /// After acting, no new action for this long.
    #[arg(long, env = "COOLDOWN", default_value = "15m")]
    pub cooldown: String,
    /// After each eviction, wait at most this long for a replacement to be
    /// Ready before the next one (0s: do not wait).
    #[arg(long, env = "PACING", default_value = "2m")]
    pub pacing: String,
    /// Pushgateway base URL: metrics are pushed at the end of each run.
    #[arg(long, env = "PUSHGATEWAY_URL")]
    pub pushgateway_url: Option<String>,
    /// PromQL of CPU per pod (`{namespace}`, `{pods}` are substituted).
    #[arg(long, env = "CPU_QUERY", default_value = DEFAULT_CPU_QUERY)]
    pub cpu_query: String,
    /// PromQL of Kafka lag per pod.
    #[arg(long, env = "LAG_QUERY", default_value = DEFAULT_LAG_QUERY)]
    pub lag_query: String,
    /// PromQL of memory per pod.
    #[arg(long, env = "MEMORY_QUERY", default_value = DEFAULT_MEMORY_QUERY)]
    pub memory_query: String,
    /// PromQL of Kafka records consumed per second per pod (reported, and
    /// composite's tie-breaker; not in the score).
    #[arg(long, env = "CONSUMPTION_RATE_QUERY", default_value = DEFAULT_CONSUMPTION_RATE_QUERY)]
    pub consumption_rate_query: String,
    /// `text` or `json` (the report on stdout).
    #[arg(long, env = "OUTPUT", value_enum, default_value = "text")]
    pub output: Output,
    /// Also write the JSON report to this file.
    #[arg(long, env = "REPORT_FILE")]
    pub report_file: Option<PathBuf>,
    /// Run again every interval until SIGTERM (unset: one run, then exit).
    #[arg(long, env = "INTERVAL")]
    pub interval: Option<String>,
    /// Kubeconfig path (unset: in-cluster, else `~/.kube/config`).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kit: KitArgs,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Prometheus base URL, without a trailing `/`.
    pub prometheus: String,
    /// Deadline of each query.
    pub prometheus_timeout: Duration,
    /// Namespace.
    pub namespace: String,
    /// Label selector.
    pub selector: String,
    /// Deployment name.
    pub deployment: String,
    /// HPA name.
    pub hpa: String,
    /// Strategy.
    pub strategy: Strategy,
    /// Thresholds and weights.
    pub decision: DecisionSettings,
    /// At most this many pods per run.
    pub max_pods_to_delete: usize,
    /// Ready pods to keep.
    pub min_pods_required: usize,
    /// Minimum pod age.
    pub min_pod_age: Duration,
    /// Dry run.
    pub dry_run: bool,
    /// Evict or delete.
    pub delete_mode: DeleteMode,
    /// Grace period of a delete.
    pub grace_period: Duration,
    /// Cooldown.
    pub cooldown: Duration,
    /// Pacing bound.
    pub pacing: Duration,
    /// Pushgateway.
    pub pushgateway: Option<String>,
    /// Queries (templates).
    pub queries: Queries,
    /// Output.
    pub output: Output,
    /// Report file.
    pub report_file: Option<PathBuf>,
    /// Loop interval.
    pub interval: Option<Duration>,
    /// Kubeconfig.
    pub kubeconfig: Option<PathBuf>,
}

/// PromQL templates.
#[derive(Debug, Clone)]
pub struct Queries {
    /// CPU cores per pod.
    pub cpu: String,
    /// Kafka lag per pod.
    pub lag: String,
    /// Memory bytes per pod.
    pub memory: String,
    /// Records consumed per second per pod.
    pub consumption_rate: String,
}

/// What the strategies read.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionSettings {
    /// CV of CPU above which composite acts.
    pub cpu_cv_threshold: f64,
    /// CV of lag above which composite acts.
    pub lag_cv_threshold: f64,
    /// Weights (CPU, lag, memory).
    pub weights: (f64, f64, f64),
    /// hpa-cpu K.
    pub top_k: usize,
    /// hpa-cpu tolerance.
    pub tolerance: f64,
    /// hpa-cpu minimum improvement, percent.
    pub min_improvement_percent: f64,
}

impl Default for DecisionSettings {
    fn default() -> Self {
        DecisionSettings {
            cpu_cv_threshold: 0.3,
            lag_cv_threshold: 0.5,
            weights: (0.4, 0.4, 0.2),
            top_k: 1,
            tolerance: 1.5,
            min_improvement_percent: 10.0,
        }
    }
}

/// Parses `250ms`, `30s`, `5m`, `1h`, `2d`, or a bare number of seconds.
pub fn parse_duration(variable: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let text = text.trim();
    let bad = || {
        ConfigError::new(
            variable,
            format!("{text:?} is not a duration (30s, 5m, 1h)"),
        )
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => return Err(bad()),
    };
    if !(0.0..=366.0 * 86400.0).contains(&seconds) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn fraction(variable: &'static str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(ConfigError::new(variable, "must be a finite number >= 0"))
    }
}

fn template(variable: &'static str, query: &str) -> Result<(), ConfigError> {
    if query.trim().is_empty() {
        return Err(ConfigError::new(variable, "must not be empty"));
    }
    if !query.contains("{pods}") {
        return Err(ConfigError::new(
            variable,
            "must contain {pods} (the regex of the pods' names)",
        ));
    }
    Ok(())
}

impl Config {
    /// Checks every value and returns the typed settings.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let prometheus = check::http_url("PROMETHEUS_ENDPOINT", &self.prometheus_endpoint)?;
        let prometheus_timeout = parse_duration("PROMETHEUS_TIMEOUT", &self.prometheus_timeout)?;
        if prometheus_timeout.is_zero() {
            return Err(ConfigError::new("PROMETHEUS_TIMEOUT", "must be above 0"));
        }
        if self.kube_namespace.trim().is_empty() {
            return Err(ConfigError::new("KUBE_NAMESPACE", "must not be empty"));
        }
        if self.kube_label_selector.trim().is_empty() {
            return Err(ConfigError::new(
                "KUBE_LABEL_SELECTOR",
                "must not be empty (it would select every pod of the namespace)",
            ));
        }
        if self.deployment_name.trim().is_empty() {
            return Err(ConfigError::new("DEPLOYMENT_NAME", "must not be empty"));
        }
        fraction("CPU_VARIANCE_THRESHOLD", self.cpu_variance_threshold)?;
        fraction("LAG_VARIANCE_THRESHOLD", self.lag_variance_threshold)?;
        fraction("CPU_WEIGHT", self.cpu_weight)?;
        fraction("LAG_WEIGHT", self.lag_weight)?;
        fraction("MEMORY_WEIGHT", self.memory_weight)?;
        if self.cpu_weight + self.lag_weight + self.memory_weight <= 0.0 {
            return Err(ConfigError::new("CPU_WEIGHT", "the three weights sum to 0"));
        }
        if self.top_k == 0 {
            return Err(ConfigError::new("TOP_K", "must be at least 1"));
        }
        fraction("TOLERANCE_MULTIPLIER", self.tolerance_multiplier)?;
        fraction(
            "MINIMUM_IMPROVEMENT_PERCENT",
            self.minimum_improvement_percent,
        )?;
        if self.max_pods_to_delete == 0 {
            return Err(ConfigError::new("MAX_PODS_TO_DELETE", "must be at least 1"));
        }
        if self.min_pods_required == 0 {
            return Err(ConfigError::new("MIN_PODS_REQUIRED", "must be at least 1"));
        }
        template("CPU_QUERY", &self.cpu_query)?;
        template("LAG_QUERY", &self.lag_query)?;
        template("MEMORY_QUERY", &self.memory_query)?;
        template("CONSUMPTION_RATE_QUERY", &self.consumption_rate_query)?;
        let pushgateway = match &self.pushgateway_url {
            Some(url) if !url.trim().is_empty() => Some(
                check::http_url("PUSHGATEWAY_URL", url)?
                    .as_str()
                    .trim_end_matches('/')
                    .to_owned(),
            ),
            _ => None,
        };
        let interval = match &self.interval {
            Some(text) if !text.trim().is_empty() => {
                let d = parse_duration("INTERVAL", text)?;
                if d < Duration::from_secs(1) {
                    return Err(ConfigError::new("INTERVAL", "must be at least 1s"));
                }
                Some(d)
            }
            _ => None,
        };
        let hpa = self
            .hpa_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| format!("{}{}", self.hpa_prefix, self.deployment_name));
        Ok(Settings {
            prometheus: prometheus.as_str().trim_end_matches('/').to_owned(),
            prometheus_timeout,
            namespace: self.kube_namespace.clone(),
            selector: self.kube_label_selector.clone(),
            deployment: self.deployment_name.clone(),
            hpa,
            strategy: self.strategy,
            decision: DecisionSettings {
                cpu_cv_threshold: self.cpu_variance_threshold,
                lag_cv_threshold: self.lag_variance_threshold,
                weights: (self.cpu_weight, self.lag_weight, self.memory_weight),
                top_k: self.top_k,
                tolerance: self.tolerance_multiplier,
                min_improvement_percent: self.minimum_improvement_percent,
            },
            max_pods_to_delete: self.max_pods_to_delete,
            min_pods_required: self.min_pods_required,
            min_pod_age: parse_duration("MIN_POD_AGE", &self.min_pod_age)?,
            dry_run: self.dry_run,
            delete_mode: self.delete_mode,
            grace_period: parse_duration("DELETE_GRACE_PERIOD", &self.delete_grace_period)?,
            cooldown: parse_duration("COOLDOWN", &self.cooldown)?,
            pacing: parse_duration("PACING", &self.pacing)?,
            pushgateway,
            queries: Queries {
                cpu: self.cpu_query.clone(),
                lag: self.lag_query.clone(),
                memory: self.memory_query.clone(),
                consumption_rate: self.consumption_rate_query.clone(),
            },
            output: self.output,
            report_file: self.report_file.clone(),
            interval,
            kubeconfig: self
                .kubeconfig
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
        })
    }
}

impl Program for Config {
    fn kit_args(&self) -> &KitArgs {
        &self.kit
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.settings().map(drop)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if let Some(path) = &self.kubeconfig {
            check::readable_file("KUBECONFIG", path)?;
            kube::config::Kubeconfig::read_from(path)
                .map_err(|e| ConfigError::new("KUBECONFIG", format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// Standard output is the report's; logs go to standard error.
    fn log_target(&self) -> LogTarget {
        LogTarget::Stderr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Config {
        let mut args = vec![
            "pod-rebalancer",
            "--kube-label-selector",
            "app=consumer",
            "--deployment-name",
            "consumer",
        ];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).expect("parses")
    }

    #[test]
    fn defaults_validate() {
        let s = parse(&[]).settings().expect("valid");
        assert_eq!(s.strategy, Strategy::Composite);
        assert_eq!(s.decision, DecisionSettings::default());
        assert_eq!(s.delete_mode, DeleteMode::Evict);
        assert_eq!(s.cooldown, Duration::from_secs(900));
        assert_eq!(s.hpa, "consumer");
        assert!(!s.dry_run);
    }

    #[test]
    fn errors_name_the_variable() {
        let cases: &[(&[&str], &str)] = &[
            (&["--prometheus-endpoint", "ftp://x"], "PROMETHEUS_ENDPOINT"),
            (&["--prometheus-timeout", "soon"], "PROMETHEUS_TIMEOUT"),
            (&["--cpu-variance-threshold=-1"], "CPU_VARIANCE_THRESHOLD"),
            (&["--max-pods-to-delete", "0"], "MAX_PODS_TO_DELETE"),
            (&["--min-pods-required", "0"], "MIN_PODS_REQUIRED"),
            (&["--top-k", "0"], "TOP_K"),
            (&["--cooldown", "5x"], "COOLDOWN"),
            (&["--cpu-query", "up"], "CPU_QUERY"),
            (&["--consumption-rate-query", " "], "CONSUMPTION_RATE_QUERY"),
            (&["--pushgateway-url", "nope"], "PUSHGATEWAY_URL"),
            (&["--interval", "0s"], "INTERVAL"),
        ];
        for (args, variable) in cases {
            let err = parse(args).settings().expect_err("invalid");
            assert_eq!(err.field(), *variable, "{args:?}");
        }
    }

    #[test]
    fn durations() {
        let d = |t| parse_duration("X", t).expect("valid");
        assert_eq!(d("250ms"), Duration::from_millis(250));
        assert_eq!(d("30"), Duration::from_secs(30));
        assert_eq!(d("5m"), Duration::from_secs(300));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert!(parse_duration("X", "-1s").is_err());
        assert!(parse_duration("X", "").is_err());
    }

    #[test]
    fn log_level_maps_onto_the_kit_filter_unless_rust_log_is_given() {
        let filter = |c: &Config| {
            c.kit_args()
                .log
                .config()
                .expect("valid")
                .filter()
                .to_owned()
        };
        assert_eq!(filter(&parse(&[])), "info");
        let c = parse(&["--log-level", "DEBUG"]);
        assert_eq!(c.kit.log.log_level, Some(keel_telemetry::LogLevel::Debug));
        assert_eq!(filter(&c), "debug");
        assert_eq!(
            filter(&parse(&[
                "--log-level",
                "error",
                "--log-filter",
                "warn,pod_rebalancer=debug"
            ])),
            "warn,pod_rebalancer=debug"
        );
        let err = Config::try_parse_from([
            "pod-rebalancer",
            "--kube-label-selector",
            "a=b",
            "--deployment-name",
            "d",
            "--log-level",
            "loud",
        ])
        .expect_err("not a level");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn check_config_parses_the_kubeconfig() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, "clusters: [not, a, kubeconfig").expect("write");
        let config = parse(&["--kubeconfig", &path.display().to_string()]);
        assert_eq!(
            config.check().expect_err("unparsable").field(),
            "KUBECONFIG"
        );
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster: {server: 'http://127.0.0.1:1'}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\nusers:\n- name: u\n  user: {token: t}\n",
        )
        .expect("write");
        config.check().expect("a valid kubeconfig");
    }

    #[test]
    fn hpa_name_from_prefix() {
        let s = parse(&["--hpa-prefix", "hpa-"]).settings().expect("valid");
        assert_eq!(s.hpa, "hpa-consumer");
    }
}

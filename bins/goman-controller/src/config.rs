//! Configuration: one clap struct, every setting an environment variable,
//! checked at start (exit 64 naming the variable).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use keel_telemetry::{ConfigError, KitArgs, LogTarget, Program, check};

/// Reconciles K3s clusters on AWS: desired state in S3 (or a local
/// directory), a lock per cluster in DynamoDB, instances in EC2, K3s
/// installed through SSM.
#[derive(Debug, Clone, Parser)]
#[command(name = "goman-controller", version)]
pub struct Config {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,

    /// The profile: a namespace for state, locks, tags and parameters.
    #[arg(long, env = "GOMAN_PROFILE", default_value = "default", global = true)]
    pub profile: String,

    /// The S3 bucket holding `state/{profile}/clusters/{name}.json`. Without
    /// it, state lives in GOMAN_STATE_DIR (the embedded default).
    #[arg(long, env = "GOMAN_STATE_BUCKET", global = true)]
    pub state_bucket: Option<String>,

    /// The local state directory used when GOMAN_STATE_BUCKET is not set
    /// (also the lock files' and the default journal's home).
    #[arg(
        long,
        env = "GOMAN_STATE_DIR",
        default_value = "./goman-state",
        global = true
    )]
    pub state_dir: PathBuf,

    /// The DynamoDB lock table (with GOMAN_STATE_BUCKET).
    #[arg(
        long,
        env = "GOMAN_LOCK_TABLE",
        default_value = "goman-resource-locks",
        global = true
    )]
    pub lock_table: String,

    /// The lock's time to live; it is renewed every 2/5 of it.
    #[arg(long, env = "GOMAN_LOCK_TTL", default_value = "5m", value_parser = parse_duration, global = true)]
    pub lock_ttl: Duration,

    /// The AWS region of the state, the locks and the clusters.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1", global = true)]
    pub region: String,

    /// One endpoint for every AWS service (moto, LocalStack); AWS's own
    /// endpoints when unset.
    #[arg(long, env = "AWS_ENDPOINT_URL", global = true)]
    pub endpoint: Option<String>,

    /// The keel-tx journal: a directory (`file:/var/lib/goman/journal` or a
    /// plain path) or a PostgreSQL URL (`postgres://...`) shared by every
    /// controller. Default: `{GOMAN_STATE_DIR}/journal`.
    #[arg(long, env = "GOMAN_JOURNAL", global = true)]
    pub journal: Option<String>,

    /// The AMI of every node.
    #[arg(long, env = "GOMAN_AMI", default_value = "ami-03cf127a", global = true)]
    pub ami: String,

    /// The instance profile the nodes run with (SSM agent, their token
    /// parameter).
    #[arg(long, env = "GOMAN_INSTANCE_PROFILE", global = true)]
    pub instance_profile: Option<String>,

    /// The subnet of the nodes (the default VPC's otherwise).
    #[arg(long, env = "GOMAN_SUBNET", global = true)]
    pub subnet: Option<String>,

    /// A node not Ready this long after launch is replaced.
    #[arg(long, env = "GOMAN_NODE_STARTUP_TIMEOUT", default_value = "10m", value_parser = parse_duration, global = true)]
    pub node_startup_timeout: Duration,

    /// A reconcile pass's limit.
    #[arg(long, env = "GOMAN_RECONCILE_TIMEOUT", default_value = "10m", value_parser = parse_duration, global = true)]
    pub reconcile_timeout: Duration,

    /// How often SSM commands and node readiness are polled.
    #[arg(long, env = "GOMAN_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration, global = true)]
    pub poll_interval: Duration,

    /// SSM commands at once.
    #[arg(
        long,
        env = "GOMAN_PARALLEL_MAX_CONCURRENCY",
        default_value_t = 5,
        global = true
    )]
    pub ssm_concurrency: usize,

    /// One SSM command's limit.
    #[arg(long, env = "GOMAN_COMMAND_TIMEOUT", default_value = "5m", value_parser = parse_duration, global = true)]
    pub command_timeout: Duration,

    /// An SSM fan-out's limit.
    #[arg(long, env = "GOMAN_PARALLEL_TIMEOUT", default_value = "10m", value_parser = parse_duration, global = true)]
    pub parallel_timeout: Duration,

    /// Retries of an AWS call (transient errors and throttling).
    #[arg(
        long,
        env = "GOMAN_RETRY_MAX_RETRIES",
        default_value_t = 5,
        global = true
    )]
    pub retry_max_retries: u32,

    /// The first transient backoff, doubling.
    #[arg(long, env = "GOMAN_RETRY_BASE_DELAY", default_value = "500ms", value_parser = parse_duration, global = true)]
    pub retry_base_delay: Duration,

    /// The first throttle backoff, doubling to 20 times it.
    #[arg(long, env = "GOMAN_THROTTLE_BASE_DELAY", default_value = "1s", value_parser = parse_duration, global = true)]
    pub throttle_base_delay: Duration,

    /// One AWS attempt's limit.
    #[arg(long, env = "GOMAN_AWS_ATTEMPT_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
    pub aws_attempt_timeout: Duration,

    /// How often the daemon lists the state for changed objects.
    #[arg(long, env = "GOMAN_WATCH_INTERVAL", default_value = "5s", value_parser = parse_duration, global = true)]
    pub watch_interval: Duration,

    /// Reconcile passes at once (daemon).
    #[arg(long, env = "GOMAN_WORKERS", default_value_t = 4, global = true)]
    pub workers: usize,

    /// Scale every steady-state requeue (5 s Pending, 10 s Provisioning,
    /// 45 s Running, 15 s Deleting, 20 s Failed) by this factor (tests use
    /// 0.1).
    #[arg(
        long,
        env = "GOMAN_REQUEUE_SCALE",
        default_value_t = 1.0,
        global = true
    )]
    pub requeue_scale: f64,

    /// Where `/healthz`, `/readyz`, `/metrics`, `/metrics.json`,
    /// `/clusters` and `/breakers` are served (daemon only).
    #[arg(
        long,
        env = "ADMIN_ADDR",
        default_value = "127.0.0.1:9090",
        global = true
    )]
    pub admin_addr: SocketAddr,

    /// Serve `POST /breakers/{name}/open|close|reset` too.
    #[arg(
        long,
        env = "ADMIN_BREAKER_CONTROL",
        default_value_t = false,
        global = true
    )]
    pub admin_breaker_control: bool,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub kit: KitArgs,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// The daemon: watches the state and reconciles every cluster.
    Run,
    /// One pass over one cluster (goman's Lambda shape), repeated (each
    /// after its requeue, at most 60 s) until the cluster settles (Running,
    /// Stopped, Failed or deleted) or `--max-passes` passes ran.
    Reconcile {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// Passes at most (each waits its requeue).
        #[arg(long, default_value_t = 1)]
        max_passes: u32,
    },
    /// Desired state: apply, get, list, delete, stop, start.
    Cluster {
        /// What to do with it.
        #[command(subcommand)]
        action: ClusterCommand,
    },
    /// Creates the state bucket and the lock table if they are missing.
    Init,
}

/// `cluster ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Creates or updates a cluster from a YAML (or JSON) manifest.
    Apply {
        /// The manifest (`-` for standard input).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Prints one cluster's document as JSON.
    Get {
        /// The cluster.
        name: String,
    },
    /// Lists clusters with their phase.
    List,
    /// Asks for deletion (drain, then terminate).
    Delete {
        /// The cluster.
        name: String,
    },
    /// Stops every instance.
    Stop {
        /// The cluster.
        name: String,
    },
    /// Starts them again.
    Start {
        /// The cluster.
        name: String,
    },
}

/// Parses `500ms`, `30s`, `5m`, `1h` (or plain seconds).
///
/// # Errors
/// A message for clap.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 30s, 5m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !seconds.is_finite() || !(0.0..=86_400.0 * 7.0).contains(&seconds) {
        return Err(format!("{s:?} is out of range (0 to 7 days)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Where the journal lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalLocation {
    /// A directory (keel-tx `FileJournal`).
    Dir(PathBuf),
    /// PostgreSQL (keel-tx `PostgresJournal`).
    Postgres(String),
}

impl Config {
    /// The journal's location.
    pub fn journal_location(&self) -> JournalLocation {
        match self.journal.as_deref() {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                JournalLocation::Postgres(url.to_owned())
            }
            Some(path) => {
                JournalLocation::Dir(PathBuf::from(path.strip_prefix("file:").unwrap_or(path)))
            }
            None => JournalLocation::Dir(self.state_dir.join("journal")),
        }
    }

    fn positive(variable: &'static str, d: Duration) -> Result<(), ConfigError> {
        if d.is_zero() {
            Err(ConfigError::new(variable, "must be more than zero"))
        } else {
            Ok(())
        }
    }
}

impl Program for Config {
    fn kit_args(&self) -> &KitArgs {
        &self.kit
    }

    fn validate(&self) -> Result<(), ConfigError> {
        crate::model::validate_name(&self.profile)
            .map_err(|e| ConfigError::new("GOMAN_PROFILE", e.reason))?;
        if let Some(bucket) = &self.state_bucket {
            let ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !ok {
                return Err(ConfigError::new(
                    "GOMAN_STATE_BUCKET",
                    format!("{bucket:?} is not an S3 bucket name"),
                ));
            }
        }
        if self.lock_table.is_empty() || self.lock_table.len() > 255 {
            return Err(ConfigError::new(
                "GOMAN_LOCK_TABLE",
                "must be 1 to 255 characters",
            ));
        }
        if self.lock_ttl < Duration::from_secs(2) {
            return Err(ConfigError::new("GOMAN_LOCK_TTL", "must be at least 2s"));
        }
        if let Some(endpoint) = &self.endpoint {
            check::http_url("AWS_ENDPOINT_URL", endpoint)?;
        }
        let region_ok = !self.region.is_empty()
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err(ConfigError::new(
                "AWS_REGION",
                format!("{:?} is not a region name", self.region),
            ));
        }
        if let JournalLocation::Postgres(url) = self.journal_location() {
            url::Url::parse(&url)
                .map_err(|e| ConfigError::new("GOMAN_JOURNAL", format!("not a URL: {e}")))?;
        }
        Self::positive("GOMAN_NODE_STARTUP_TIMEOUT", self.node_startup_timeout)?;
        Self::positive("GOMAN_RECONCILE_TIMEOUT", self.reconcile_timeout)?;
        Self::positive("GOMAN_POLL_INTERVAL", self.poll_interval)?;
        Self::positive("GOMAN_COMMAND_TIMEOUT", self.command_timeout)?;
        Self::positive("GOMAN_PARALLEL_TIMEOUT", self.parallel_timeout)?;
        Self::positive("GOMAN_AWS_ATTEMPT_TIMEOUT", self.aws_attempt_timeout)?;
        Self::positive("GOMAN_WATCH_INTERVAL", self.watch_interval)?;
        Self::positive("GOMAN_RETRY_BASE_DELAY", self.retry_base_delay)?;
        Self::positive("GOMAN_THROTTLE_BASE_DELAY", self.throttle_base_delay)?;
        if !(1..=64).contains(&self.ssm_concurrency) {
            return Err(ConfigError::new(
                "GOMAN_PARALLEL_MAX_CONCURRENCY",
                "must be 1 to 64",
            ));
        }
        if !(1..=256).contains(&self.workers) {
            return Err(ConfigError::new("GOMAN_WORKERS", "must be 1 to 256"));
        }
        if self.retry_max_retries > 20 {
            return Err(ConfigError::new(
                "GOMAN_RETRY_MAX_RETRIES",
                "must be at most 20",
            ));
        }
        if !(self.requeue_scale > 0.0 && self.requeue_scale <= 100.0) {
            return Err(ConfigError::new(
                "GOMAN_REQUEUE_SCALE",
                "must be above 0 and at most 100",
            ));
        }
        if self.ami.is_empty() || !self.ami.starts_with("ami-") {
            return Err(ConfigError::new(
                "GOMAN_AMI",
                format!("{:?} is not an AMI id", self.ami),
            ));
        }
        if let Command::Reconcile { cluster, .. } = &self.command {
            crate::model::validate_name(cluster)
                .map_err(|e| ConfigError::new("--cluster", e.reason))?;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.state_bucket.is_none() {
            check::writable_path("GOMAN_STATE_DIR", &self.state_dir)?;
        }
        // The default journal lives inside GOMAN_STATE_DIR, created at
        // start: only an explicit one is checked on its own.
        if self.journal.is_some()
            && let JournalLocation::Dir(dir) = self.journal_location()
        {
            check::writable_path("GOMAN_JOURNAL", &dir)?;
        }
        if let Command::Cluster {
            action: ClusterCommand::Apply { file },
        } = &self.command
            && file.as_os_str() != "-"
        {
            check::readable_file("--file", file)?;
        }
        Ok(())
    }

    fn admin_addr(&self) -> Option<SocketAddr> {
        matches!(self.command, Command::Run).then_some(self.admin_addr)
    }

    fn metrics_prefix(&self) -> Option<String> {
        Some("goman".to_owned())
    }

    fn drain_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }

    fn log_target(&self) -> LogTarget {
        // The CLI prints documents on standard output.
        match self.command {
            Command::Run => LogTarget::Stdout,
            _ => LogTarget::Stderr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999h").is_err());
    }

    #[test]
    fn invalid_settings_name_their_variable() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["goman-controller"];
            args.extend_from_slice(extra);
            args.push("run");
            Config::try_parse_from(args).unwrap()
        };
        assert_eq!(
            parse(&["--profile", "Bad_Profile"])
                .validate()
                .unwrap_err()
                .field(),
            "GOMAN_PROFILE"
        );
        assert_eq!(
            parse(&["--state-bucket", "A"])
                .validate()
                .unwrap_err()
                .field(),
            "GOMAN_STATE_BUCKET"
        );
        assert_eq!(
            parse(&["--endpoint", "ftp://x"])
                .validate()
                .unwrap_err()
                .field(),
            "AWS_ENDPOINT_URL"
        );
        assert_eq!(
            parse(&["--lock-ttl", "1s"]).validate().unwrap_err().field(),
            "GOMAN_LOCK_TTL"
        );
        assert_eq!(
            parse(&["--journal", "postgres://u:p@[bad/x"])
                .validate()
                .unwrap_err()
                .field(),
            "GOMAN_JOURNAL"
        );
        assert_eq!(
            parse(&["--ami", "x"]).validate().unwrap_err().field(),
            "GOMAN_AMI"
        );
        assert!(parse(&[]).validate().is_ok());
    }
}

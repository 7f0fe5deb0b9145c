//! `RUST_LOG` + `LOG_FORMAT` tracing setup for binaries.

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

use keel_core::ConfigError;
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

use crate::TelemetryError;

/// The environment variable that selects the log format (`json` or `text`).
pub const LOG_FORMAT_VAR: &str = "LOG_FORMAT";
/// The environment variable that holds the filter directives
/// (`info,keel_breaker=debug`).
pub const RUST_LOG_VAR: &str = "RUST_LOG";
/// The environment variable that sets one level for every target
/// (`debug`), used when `RUST_LOG` is unset.
pub const LOG_LEVEL_VAR: &str = "LOG_LEVEL";
/// The filter used when `RUST_LOG` and `LOG_LEVEL` are unset or empty.
pub const DEFAULT_FILTER: &str = "info";

/// `LOG_LEVEL`: one level for every target, for operators who do not write
/// `tracing` directives. `RUST_LOG`, when set, is the more precise one and
/// wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Per-call detail.
    Debug,
    /// Lifecycle (the default).
    Info,
    /// Problems only.
    Warn,
    /// Failures only.
    Error,
}

impl LogLevel {
    /// The `tracing` filter directive.
    pub fn directive(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (`tracing-subscriber`'s full format). ANSI colours
    /// are used only when the output is a terminal.
    #[default]
    Text,
    /// One JSON object per line, with the event's fields flattened to the top
    /// level next to `timestamp`, `level`, `target` and the current span.
    Json,
}

impl FromStr for LogFormat {
    type Err = ConfigError;

    /// `json` or `text`, case-insensitive; anything else is a
    /// [`ConfigError`] naming `LOG_FORMAT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            _ => Err(ConfigError::new(
                LOG_FORMAT_VAR,
                format!("`{s}` is neither `json` nor `text`"),
            )),
        }
    }
}

// The docs are for rustdoc only: clap turns a flattened struct's doc comment
// into the program's `about`.
#[cfg_attr(
    doc,
    doc = "The logging options every program flattens into its clap struct (through [`crate::KitArgs`]), so `--help` documents `RUST_LOG`, `LOG_LEVEL` and `LOG_FORMAT` like every other variable."
)]
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LogArgs {
    /// Which log lines to keep: `tracing` filter directives such as `info` or
    /// `warn,keel_breaker=debug` [default: LOG_LEVEL, else info].
    #[arg(long = "log-filter", env = RUST_LOG_VAR, value_name = RUST_LOG_VAR)]
    pub log_filter: Option<String>,

    /// One level for every target (trace, debug, info, warn, error), used
    /// when RUST_LOG is unset.
    #[arg(long = "log-level", env = LOG_LEVEL_VAR, value_name = LOG_LEVEL_VAR, value_enum, ignore_case = true)]
    pub log_level: Option<LogLevel>,

    /// Log line format: `text` (human-readable) or `json` (one object per
    /// line, fields as JSON values).
    #[arg(long = "log-format", env = LOG_FORMAT_VAR, value_name = LOG_FORMAT_VAR, value_enum, ignore_case = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Default for LogArgs {
    fn default() -> Self {
        LogArgs {
            log_filter: None,
            log_level: None,
            log_format: LogFormat::Text,
        }
    }
}

impl LogArgs {
    /// The validated configuration: `RUST_LOG` when set (not blank), else
    /// `LOG_LEVEL`, else [`DEFAULT_FILTER`].
    ///
    /// # Errors
    /// A [`ConfigError`] naming `RUST_LOG` when a directive does not parse.
    pub fn config(&self) -> Result<LogConfig, ConfigError> {
        let filter = self
            .log_filter
            .as_deref()
            .filter(|f| !f.trim().is_empty())
            .or(self.log_level.map(LogLevel::directive));
        LogConfig::from_env_values(None, filter).map(|config| LogConfig {
            format: self.log_format,
            ..config
        })
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogTarget {
    /// Standard output (the default, as `tracing-subscriber`'s).
    #[default]
    Stdout,
    /// Standard error, for command-line programs whose stdout is a report.
    Stderr,
}

/// A validated logging configuration: a format and a filter.
///
/// Building one validates both values, so a binary can check its logging
/// configuration in `--check-config` without installing anything.
#[derive(Debug, Clone)]
pub struct LogConfig {
    format: LogFormat,
    filter: String,
    target: LogTarget,
}

impl LogConfig {
    /// Text format, [`DEFAULT_FILTER`], standard output.
    pub fn new(format: LogFormat) -> Self {
        LogConfig {
            format,
            filter: DEFAULT_FILTER.to_owned(),
            target: LogTarget::Stdout,
        }
    }

    /// From the values of `LOG_FORMAT` and `RUST_LOG` (`None`, empty or
    /// blank = unset: text format, [`DEFAULT_FILTER`]). Programs started by
    /// [`crate::run`] get this from [`LogArgs`] instead.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `LOG_FORMAT` or `RUST_LOG`.
    pub fn from_env_values(
        log_format: Option<&str>,
        rust_log: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let format = match log_format.map(str::trim) {
            None | Some("") => LogFormat::Text,
            Some(v) => v.parse()?,
        };
        let config = LogConfig::new(format);
        match rust_log.map(str::trim) {
            None | Some("") => Ok(config),
            Some(filter) => config.with_filter(filter),
        }
    }

    /// Replaces the filter directives.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `RUST_LOG` when a directive does not parse.
    pub fn with_filter(mut self, directives: &str) -> Result<Self, ConfigError> {
        parse_filter(directives)?;
        self.filter = directives.to_owned();
        Ok(self)
    }

    /// Sends log lines to `target` instead of standard output.
    pub fn with_target(mut self, target: LogTarget) -> Self {
        self.target = target;
        self
    }

    /// The configured format.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// The configured filter directives.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// The configured target.
    pub fn target(&self) -> LogTarget {
        self.target
    }

    /// Builds (without installing) a subscriber that writes to `writer`,
    /// without ANSI colours. Use it with
    /// [`tracing::subscriber::with_default`] in tests, or to send logs
    /// somewhere other than stdout/stderr.
    pub fn subscriber_with_writer<W>(&self, writer: W) -> Box<dyn Subscriber + Send + Sync>
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        self.build(writer, false)
    }

    fn build<W>(&self, writer: W, ansi: bool) -> Box<dyn Subscriber + Send + Sync>
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        // The filter was validated when it was set.
        let filter = parse_filter(&self.filter).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer);
        match self.format {
            LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
            LogFormat::Json => Box::new(
                builder
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .finish(),
            ),
        }
    }

    /// Installs this configuration as the process's global subscriber, and
    /// forwards records of the `log` crate to it.
    ///
    /// # Errors
    /// [`TelemetryError::TracingAlreadyInitialized`] when a global subscriber
    /// is already installed (a second call never panics).
    pub fn init(&self) -> Result<(), TelemetryError> {
        let subscriber = match self.target {
            LogTarget::Stdout => self.build(std::io::stdout, std::io::stdout().is_terminal()),
            LogTarget::Stderr => self.build(std::io::stderr, std::io::stderr().is_terminal()),
        };
        // Also bridges the `log` crate (records from dependencies that use
        // it) into the subscriber.
        subscriber
            .try_init()
            .map_err(|_| TelemetryError::TracingAlreadyInitialized)
    }
}

fn parse_filter(directives: &str) -> Result<EnvFilter, ConfigError> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| ConfigError::new(RUST_LOG_VAR, format!("`{directives}`: {e}")))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().clone()).unwrap()
        }
    }

    #[test]
    fn log_format_parses_case_insensitively_and_defaults_to_text() {
        let text = |v| LogConfig::from_env_values(v, None).unwrap().format();
        assert_eq!(text(None), LogFormat::Text);
        assert_eq!(text(Some("")), LogFormat::Text);
        assert_eq!(text(Some("JSON")), LogFormat::Json);
        assert_eq!(" text ".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::Json.to_string(), "json");
    }

    #[test]
    fn invalid_log_format_names_the_variable() {
        let err = LogConfig::from_env_values(Some("yaml"), None).unwrap_err();
        assert_eq!(err.field(), "LOG_FORMAT");
        assert_eq!(
            err.to_string(),
            "invalid `LOG_FORMAT`: `yaml` is neither `json` nor `text`"
        );
    }

    #[test]
    fn invalid_filter_names_rust_log() {
        let err = LogConfig::from_env_values(None, Some("keel=notalevel")).unwrap_err();
        assert_eq!(err.field(), "RUST_LOG");
        assert!(
            err.reason().starts_with("`keel=notalevel`: "),
            "{}",
            err.reason()
        );
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn log_args_parse_and_validate() {
        use clap::{CommandFactory, Parser};
        let cli =
            Cli::try_parse_from(["p", "--log-format", "JSON", "--log-filter", "warn"]).unwrap();
        let config = cli.log.config().unwrap();
        assert_eq!(
            (config.format(), config.filter()),
            (LogFormat::Json, "warn")
        );
        let cli = Cli::try_parse_from(["p", "--log-filter", "keel=loud"]).unwrap();
        assert_eq!(cli.log.config().unwrap_err().field(), "RUST_LOG");
        let err = Cli::try_parse_from(["p", "--log-format", "xml"]).unwrap_err();
        assert!(err.to_string().contains("LOG_FORMAT"), "{err}");
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("[env: RUST_LOG") && help.contains("[env: LOG_FORMAT"),
            "{help}"
        );
        assert_eq!(
            LogArgs::default().config().unwrap().filter(),
            DEFAULT_FILTER
        );
    }

    #[test]
    fn log_level_applies_when_rust_log_is_unset_or_blank() {
        use clap::{CommandFactory, Parser};
        let parse = |args: &[&str]| {
            let cli =
                Cli::try_parse_from(std::iter::once("p").chain(args.iter().copied())).unwrap();
            cli.log.config().unwrap().filter().to_owned()
        };
        assert_eq!(parse(&["--log-level", "DEBUG"]), "debug");
        assert_eq!(
            parse(&["--log-level", "warn", "--log-filter", "error,keel=trace"]),
            "error,keel=trace"
        );
        assert_eq!(
            parse(&["--log-level", "warn", "--log-filter", "  "]),
            "warn"
        );
        assert_eq!(parse(&[]), DEFAULT_FILTER);
        let err = Cli::try_parse_from(["p", "--log-level", "loud"]).unwrap_err();
        assert!(err.to_string().contains("LOG_LEVEL"), "{err}");
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("[env: LOG_LEVEL"), "{help}");
    }

    #[test]
    fn empty_rust_log_uses_the_default_filter() {
        let config = LogConfig::from_env_values(Some("json"), Some("  ")).unwrap();
        assert_eq!(config.filter(), DEFAULT_FILTER);
        assert_eq!(config.format(), LogFormat::Json);
        let config = LogConfig::from_env_values(None, Some("warn,keel=debug")).unwrap();
        assert_eq!(config.filter(), "warn,keel=debug");
        assert_eq!(config.target(), LogTarget::Stdout);
    }

    #[test]
    fn json_format_writes_one_object_per_line_with_flattened_fields() {
        let buffer = Buffer::default();
        let config = LogConfig::new(LogFormat::Json)
            .with_filter("debug")
            .unwrap();
        let subscriber = config.subscriber_with_writer(buffer.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("reconcile", vm = "vm-1");
            let _entered = span.enter();
            tracing::warn!(attempt = 3, "start failed");
            tracing::trace!("filtered out");
        });
        let text = buffer.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "start failed");
        assert_eq!(line["attempt"], 3);
        assert_eq!(line["span"]["name"], "reconcile");
        assert_eq!(line["span"]["vm"], "vm-1");
        assert!(line["timestamp"].is_string());
    }

    #[test]
    fn text_format_respects_the_filter() {
        let buffer = Buffer::default();
        let config = LogConfig::new(LogFormat::Text).with_filter("warn").unwrap();
        let subscriber = config.subscriber_with_writer(buffer.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("hidden");
            tracing::error!(code = 7, "shown");
        });
        let text = buffer.text();
        assert!(text.contains("shown"), "{text}");
        assert!(text.contains("code=7"), "{text}");
        assert!(!text.contains("hidden"), "{text}");
        assert!(!text.trim_start().starts_with('{'), "{text}");
    }
}

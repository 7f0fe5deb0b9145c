//! `RUST_LOG` + `LOG_FORMAT` tracing setup for binaries.

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

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
/// The filter used when `RUST_LOG` is unset or empty.
pub const DEFAULT_FILTER: &str = "info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (`tracing-subscriber`'s full format). ANSI colours
    /// are used only when the output is a terminal.
    #[default]
    Text,
    /// One JSON object per line, with the event's fields flattened to the top
    /// level next to `timestamp`, `level`, `target` and the current span.
    Json,
}

impl LogFormat {
    /// Reads [`LOG_FORMAT_VAR`]; unset or empty means [`LogFormat::Text`].
    ///
    /// # Errors
    /// [`TelemetryError::InvalidLogFormat`] naming `LOG_FORMAT` when the value
    /// is neither `json` nor `text` (case-insensitive).
    pub fn from_env() -> Result<Self, TelemetryError> {
        Self::from_env_value(std::env::var(LOG_FORMAT_VAR).ok().as_deref())
    }

    /// Interprets the value of [`LOG_FORMAT_VAR`] as [`LogFormat::from_env`]
    /// does, without touching the environment (`None` = unset).
    ///
    /// # Errors
    /// As [`LogFormat::from_env`].
    pub fn from_env_value(value: Option<&str>) -> Result<Self, TelemetryError> {
        match value.map(str::trim) {
            None | Some("") => Ok(LogFormat::Text),
            Some(v) => v.parse(),
        }
    }
}

impl FromStr for LogFormat {
    type Err = TelemetryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            _ => Err(TelemetryError::InvalidLogFormat {
                variable: LOG_FORMAT_VAR,
                value: s.to_owned(),
            }),
        }
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

    /// Reads [`LOG_FORMAT_VAR`] and [`RUST_LOG_VAR`] (unset or empty
    /// `RUST_LOG` means [`DEFAULT_FILTER`]).
    ///
    /// # Errors
    /// [`TelemetryError::InvalidLogFormat`] or
    /// [`TelemetryError::InvalidLogFilter`], naming the variable.
    pub fn from_env() -> Result<Self, TelemetryError> {
        Self::from_env_values(
            std::env::var(LOG_FORMAT_VAR).ok().as_deref(),
            std::env::var(RUST_LOG_VAR).ok().as_deref(),
        )
    }

    /// As [`LogConfig::from_env`], from given values of `LOG_FORMAT` and
    /// `RUST_LOG` (`None` = unset).
    ///
    /// # Errors
    /// As [`LogConfig::from_env`].
    pub fn from_env_values(
        log_format: Option<&str>,
        rust_log: Option<&str>,
    ) -> Result<Self, TelemetryError> {
        let config = LogConfig::new(LogFormat::from_env_value(log_format)?);
        match rust_log.map(str::trim) {
            None | Some("") => Ok(config),
            Some(filter) => config.with_filter(filter),
        }
    }

    /// Replaces the filter directives.
    ///
    /// # Errors
    /// [`TelemetryError::InvalidLogFilter`] (naming `RUST_LOG`) when a
    /// directive does not parse.
    pub fn with_filter(mut self, directives: &str) -> Result<Self, TelemetryError> {
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

fn parse_filter(directives: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|source| TelemetryError::InvalidLogFilter {
            variable: RUST_LOG_VAR,
            value: directives.to_owned(),
            source,
        })
}

/// Installs the global subscriber with `format` and the filter from
/// `RUST_LOG` (default [`DEFAULT_FILTER`]), writing to standard output.
///
/// # Errors
/// [`TelemetryError::InvalidLogFilter`] for a bad `RUST_LOG`;
/// [`TelemetryError::TracingAlreadyInitialized`] on a second call.
pub fn init_tracing(format: LogFormat) -> Result<(), TelemetryError> {
    let config = LogConfig::from_env_values(None, std::env::var(RUST_LOG_VAR).ok().as_deref())?;
    LogConfig { format, ..config }.init()
}

/// Reads `LOG_FORMAT` and `RUST_LOG`, installs the global subscriber and
/// returns the configuration it used.
///
/// # Errors
/// As [`LogConfig::from_env`] and [`LogConfig::init`].
pub fn init_from_env() -> Result<LogConfig, TelemetryError> {
    let config = LogConfig::from_env()?;
    config.init()?;
    Ok(config)
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
        assert_eq!(LogFormat::from_env_value(None).unwrap(), LogFormat::Text);
        assert_eq!(
            LogFormat::from_env_value(Some("")).unwrap(),
            LogFormat::Text
        );
        assert_eq!(
            LogFormat::from_env_value(Some("JSON")).unwrap(),
            LogFormat::Json
        );
        assert_eq!(" text ".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::Json.to_string(), "json");
    }

    #[test]
    fn invalid_log_format_names_the_variable() {
        let err = LogFormat::from_env_value(Some("yaml")).unwrap_err();
        assert!(matches!(
            &err,
            TelemetryError::InvalidLogFormat { variable: "LOG_FORMAT", value } if value == "yaml"
        ));
        assert_eq!(
            err.to_string(),
            "invalid LOG_FORMAT=\"yaml\": expected `json` or `text`"
        );
    }

    #[test]
    fn invalid_filter_names_rust_log() {
        let err = LogConfig::from_env_values(None, Some("keel=notalevel")).unwrap_err();
        assert!(matches!(
            &err,
            TelemetryError::InvalidLogFilter {
                variable: "RUST_LOG",
                ..
            }
        ));
        assert!(err.to_string().starts_with("invalid RUST_LOG="));
        // The source is not repeated in the Display.
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(!err.to_string().contains(&source));
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

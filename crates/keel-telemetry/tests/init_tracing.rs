//! Global subscriber installation from the real environment. Each case runs
//! in a child process (this test binary re-executed) with `LOG_FORMAT` and
//! `RUST_LOG` set, because the subscriber is process-wide and the
//! environment cannot be changed safely in a running test.

use std::io::Write;
use std::process::Command;

use keel_telemetry::{LogFormat, TelemetryError, init_from_env, init_tracing};

const CHILD_ENV: &str = "KEEL_TELEMETRY_INIT_CHILD";

fn child(test_name: &str, log_format: &str, rust_log: &str) -> (i32, String, String) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env("LOG_FORMAT", log_format)
        .env("RUST_LOG", rust_log)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn json_from_env_with_log_bridge_and_second_init_is_an_error() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let config = init_from_env().unwrap();
        assert_eq!(config.format(), LogFormat::Json);
        tracing::info!(vm = "vm-1", "from tracing");
        tracing::debug!("filtered out by RUST_LOG");
        log::warn!("from the log crate");
        let second = init_tracing(LogFormat::Text).unwrap_err();
        assert!(matches!(second, TelemetryError::TracingAlreadyInitialized));
        std::process::exit(0);
    }
    let (code, stdout, stderr) = child(
        "json_from_env_with_log_bridge_and_second_init_is_an_error",
        "json",
        "info",
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["message"], "from tracing");
    assert_eq!(lines[0]["vm"], "vm-1");
    assert_eq!(lines[0]["level"], "INFO");
    assert_eq!(lines[1]["message"], "from the log crate");
    assert_eq!(lines[1]["level"], "WARN");
}

#[test]
fn an_invalid_log_format_is_reported_naming_the_variable() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let err = init_from_env().unwrap_err();
        let mut out = std::io::stdout().lock();
        writeln!(out, "ERROR {err}").unwrap();
        out.flush().unwrap();
        std::process::exit(64);
    }
    let (code, stdout, _) = child(
        "an_invalid_log_format_is_reported_naming_the_variable",
        "yaml",
        "info",
    );
    assert_eq!(code, 64);
    assert!(
        stdout.contains(r#"ERROR invalid LOG_FORMAT="yaml": expected `json` or `text`"#),
        "{stdout}"
    );
}

#[test]
fn an_invalid_rust_log_is_reported_naming_the_variable() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let err = init_from_env().unwrap_err();
        assert!(matches!(
            err,
            TelemetryError::InvalidLogFilter {
                variable: "RUST_LOG",
                ..
            }
        ));
        let mut out = std::io::stdout().lock();
        writeln!(out, "ERROR {err}").unwrap();
        out.flush().unwrap();
        std::process::exit(64);
    }
    let (code, stdout, _) = child(
        "an_invalid_rust_log_is_reported_naming_the_variable",
        "text",
        "keel=loud",
    );
    assert_eq!(code, 64);
    assert!(
        stdout.contains(r#"ERROR invalid RUST_LOG="keel=loud""#),
        "{stdout}"
    );
}

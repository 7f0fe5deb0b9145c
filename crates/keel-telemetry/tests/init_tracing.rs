//! Installing the global subscriber. The case runs in a child process (this
//! test binary re-executed), because the subscriber is process-wide.

use std::process::Command;

use keel_telemetry::{LogConfig, LogFormat, TelemetryError};

const CHILD_ENV: &str = "KEEL_TELEMETRY_INIT_CHILD";

#[test]
fn json_with_log_bridge_and_second_init_is_an_error() {
    let name = "json_with_log_bridge_and_second_init_is_an_error";
    if std::env::var_os(CHILD_ENV).is_some() {
        let config = LogConfig::from_env_values(Some("json"), Some("info")).unwrap();
        config.init().unwrap();
        tracing::info!(vm = "vm-1", attempt = 3, ok = true, "from tracing");
        tracing::debug!("filtered out by the filter");
        log::warn!("from the log crate");
        let second = LogConfig::new(LogFormat::Text).init().unwrap_err();
        assert!(matches!(second, TelemetryError::TracingAlreadyInitialized));
        std::process::exit(0);
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["message"], "from tracing");
    assert_eq!(lines[0]["vm"], "vm-1");
    // Field values keep their JSON types.
    assert_eq!(lines[0]["attempt"], 3);
    assert_eq!(lines[0]["ok"], true);
    assert_eq!(lines[0]["level"], "INFO");
    assert_eq!(lines[1]["message"], "from the log crate");
    assert_eq!(lines[1]["level"], "WARN");
}

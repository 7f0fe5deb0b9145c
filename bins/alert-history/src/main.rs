//! alert-history binary: parse configuration, serve until SIGTERM, drain.

use std::process::ExitCode;

use alert_history::{Config, Service};
use clap::Parser;
use keel_telemetry::DEFAULT_DRAIN_TIMEOUT;

/// `EX_CONFIG`-style exit code for invalid configuration (sysexits `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(e) if e.use_stderr() => {
            eprintln!("alert-history: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            // --help / --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("alert-history: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if config.check_config {
        eprintln!("alert-history: configuration is valid");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("alert-history: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let log = match config.log_config() {
        Ok(log) => log,
        Err(e) => {
            eprintln!("alert-history: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = log.init() {
        eprintln!("alert-history: cannot set up logging: {e}");
        return ExitCode::FAILURE;
    }
    let service = match Service::start(&config).await {
        Ok(service) => service,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            tracing::error!(error = %message, "start failed");
            eprintln!("alert-history: start failed: {message}");
            return ExitCode::FAILURE;
        }
    };
    let reason = match service.shutdown().signal().await {
        Ok(reason) => reason.to_string(),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for signals");
            return ExitCode::FAILURE;
        }
    };
    let report = service.stop(DEFAULT_DRAIN_TIMEOUT).await;
    tracing::info!(
        %reason,
        completed = report.completed,
        abandoned = report.abandoned,
        "alert-history stopped"
    );
    ExitCode::SUCCESS
}

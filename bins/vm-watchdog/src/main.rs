//! vm-watchdog binary: parse configuration, watch VMs until SIGTERM, stop
//! within 10 s.

use std::process::ExitCode;

use clap::Parser;
use vm_watchdog::app::STOP_BUDGET;
use vm_watchdog::{Config, Options, Watchdog, vms_yaml};

/// Exit code for invalid configuration (sysexits `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(e) if e.use_stderr() => {
            eprintln!("vm-watchdog: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            // --help / --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let settings = match config.validate() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("vm-watchdog: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vm-watchdog: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let vms = match vms_yaml::load(&settings.vms_config).await {
            Ok(vms) => vms,
            Err(e) => {
                eprintln!("vm-watchdog: invalid configuration: VMS_CONFIG: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let log = match keel_telemetry::LogConfig::from_env() {
            Ok(log) => log,
            Err(e) => {
                eprintln!("vm-watchdog: invalid configuration: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        if config.check_config {
            eprintln!(
                "vm-watchdog: configuration is valid ({} VMs)",
                vms.vms.len()
            );
            return ExitCode::SUCCESS;
        }
        if let Err(e) = log.init() {
            eprintln!("vm-watchdog: cannot set up logging: {e}");
            return ExitCode::FAILURE;
        }
        let watchdog = match Watchdog::start(&settings, vms, Options::default()).await {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "start failed");
                return ExitCode::FAILURE;
            }
        };
        // `health_addr` is the bound address (HEALTH_ADDR may ask for port 0).
        let health_addr = watchdog
            .local_addr()
            .map_or_else(String::new, |a| a.to_string());
        tracing::info!(%health_addr, "vm-watchdog started");
        let reason = match watchdog.shutdown().signal().await {
            Ok(reason) => reason.to_string(),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for signals");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(%reason, "stopping");
        watchdog.stop(STOP_BUDGET).await;
        ExitCode::SUCCESS
    })
}

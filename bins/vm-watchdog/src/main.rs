//! vm-watchdog binary: keel-telemetry's kit parses and checks the
//! configuration (exit 64 naming the variable), sets up logging, the admin
//! server and the signals; the watchdog runs until SIGTERM and stops within
//! 10 s.

use std::process::ExitCode;

use vm_watchdog::app::STOP_BUDGET;
use vm_watchdog::{Config, Error, Options, Watchdog};

fn main() -> ExitCode {
    keel_telemetry::run(|config: Config, kit| async move {
        let settings = config.validate()?;
        let vms = settings.load_vms().await?;
        let options = Options {
            kit: Some(kit.clone()),
            ..Options::default()
        };
        let watchdog = Watchdog::start(&settings, vms, options).await?;
        // The bound address: HEALTH_ADDR may ask for port 0.
        let health_addr = kit.admin_addr().map(|a| a.to_string());
        tracing::info!(health_addr, "vm-watchdog started");
        kit.stopping().await;
        watchdog.stop(STOP_BUDGET).await;
        Ok::<_, Error>(())
    })
}

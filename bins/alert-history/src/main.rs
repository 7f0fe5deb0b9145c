//! alert-history binary: the kit's `run` parses the configuration (exit 64
//! naming the variable), handles `--check-config`, logging, SIGTERM/SIGINT
//! and the bounded drain; this serves until then.

use std::process::ExitCode;

use alert_history::{Config, Error, Service};

fn main() -> ExitCode {
    keel_telemetry::run(|config: Config, kit| async move {
        let service = Service::start_with(&config, kit.shutdown().clone()).await?;
        kit.stopping().await;
        service.finish().await;
        Ok::<_, Error>(())
    })
}

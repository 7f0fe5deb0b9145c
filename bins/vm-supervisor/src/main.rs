//! vm-supervisor binary: keel-telemetry's kit parses and checks the
//! configuration (exit 64 naming the variable), sets up logging, the admin
//! server and the signals; on SIGTERM the supervisor stops watching and
//! leaves the VMs running; SIGHUP re-reads `SUPERVISOR_CONFIG`.

use std::process::ExitCode;

use vm_supervisor::app::{App, Error, STOP_BUDGET};
use vm_supervisor::config::Config;

fn main() -> ExitCode {
    keel_telemetry::run(|config: Config, kit| async move {
        let settings = config.settings()?;
        // The kit has listened for SIGHUP since the start.
        let mut hangup = kit.hangups().subscribe();
        let app = App::start(settings, &kit).await?;
        let supervisor = app.supervisor().clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading SUPERVISOR_CONFIG");
                // The outcome is logged and counted by reload itself.
                let _ = supervisor.reload().await;
            }
        });
        tracing::info!(
            admin_addr = kit.admin_addr().map(|a| a.to_string()),
            vms = app.supervisor().list().len(),
            "vm-supervisor started"
        );
        kit.stopping().await;
        app.stop(STOP_BUDGET).await;
        Ok::<_, Error>(())
    })
}

//! pod-rebalancer binary: keel-telemetry's kit parses and checks the
//! configuration (exit 64 naming the variable) and sets up logging and the
//! signals; one run (or, with `INTERVAL`, one every interval until
//! SIGTERM), the report on stdout or in `REPORT_FILE`, and the run's exit
//! code (0, 2, 3, 4, 5: see the README).

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use pod_rebalancer::config::Output;
use pod_rebalancer::kube::{Kube, connect};
use pod_rebalancer::prom::Prometheus;
use pod_rebalancer::{Clients, Config, Report, Settings, push, run_once};

fn main() -> ExitCode {
    let code = Arc::new(AtomicU8::new(0));
    let run_code = Arc::clone(&code);
    let exit = keel_telemetry::run(move |config: Config, kit| async move {
        let settings = config.settings()?;
        let client = connect(settings.kubeconfig.as_deref()).await?;
        let clients = Clients {
            prometheus: Prometheus::new(&settings.prometheus, settings.prometheus_timeout)?,
            kube: Kube::new(client, &settings.namespace)?,
            run_id: run_id(),
        };
        loop {
            let report = tokio::select! {
                r = run_once(&settings, &clients) => r,
                () = kit.stopping() => return Ok(()),
            };
            emit(&settings, &report).await;
            run_code.store(report.exit_code, Ordering::SeqCst);
            let Some(interval) = settings.interval else {
                return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
            };
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = kit.stopping() => return Ok(()),
            }
        }
    });
    if exit == ExitCode::SUCCESS {
        ExitCode::from(code.load(Ordering::SeqCst))
    } else {
        exit
    }
}

/// A unique enough id for the lock: host name (the pod's) and process id.
fn run_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{host}/{}", std::process::id())
}

async fn emit(settings: &Settings, report: &Report) {
    let json = serde_json::to_string_pretty(report).unwrap_or_default();
    if settings.output == Output::Json {
        // One line: the kit logs to stdout too, so a reader takes the line
        // that starts with `{"strategy"` (or reads REPORT_FILE).
        let line = serde_json::to_string(report).unwrap_or_default();
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }
    if let Some(path) = &settings.report_file
        && let Err(e) = tokio::fs::write(path, &json).await
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot write REPORT_FILE");
    }
    if let Some(url) = &settings.pushgateway {
        push::push(url, &settings.namespace, &settings.deployment, report).await;
    }
}

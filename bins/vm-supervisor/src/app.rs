//! The program assembled inside keel-telemetry's kit: registry → notifier
//! → supervisor → admin routes; on SIGTERM the supervisor stops watching,
//! the VMs keep running, queued alerts are flushed.

use std::time::Duration;

use keel_health::HealthMetrics;
use keel_notify::{Notifier, TelegramSink, WebhookSink};
use keel_telemetry::Kit;

use crate::alerts::Alerts;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::supervisor::{Options, Supervisor};

/// The stop budget after SIGTERM: 9 s of the kit's 10 s drain.
pub const STOP_BUDGET: Duration = Duration::from_secs(9);

/// A program-level failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid configuration (exit 64: the kit finds the `ConfigError` in
    /// the source chain).
    #[error("invalid configuration")]
    Config(#[from] keel_core::ConfigError),
    /// The registry or the supervisor's start.
    #[error("supervisor did not start")]
    Start(#[from] crate::supervisor::StartError),
    /// The notifier.
    #[error("notifier")]
    Notify(#[from] keel_notify::NotifyError),
    /// Telemetry.
    #[error("telemetry")]
    Telemetry(#[from] keel_telemetry::TelemetryError),
}

/// The running program.
#[derive(Debug)]
pub struct App {
    supervisor: Supervisor,
    alerts: Alerts,
}

fn notifier(settings: &Settings, metrics_kit: &Kit) -> Result<Option<Notifier>, Error> {
    let mut builder = Notifier::builder();
    let mut any = false;
    if let Some((token, chat, base)) = &settings.sinks.telegram {
        let sink = TelegramSink::builder(token.clone(), chat.clone())
            .base_url(base.clone())
            .build()
            .map_err(keel_notify::NotifyError::Config)?;
        builder = builder.sink(sink);
        any = true;
    }
    if let Some((url, secret)) = &settings.sinks.webhook {
        let mut sink = WebhookSink::builder(url.clone());
        if let Some(secret) = secret {
            sink = sink.secret(secret.as_bytes().to_vec());
        }
        builder = builder.sink(sink.build().map_err(keel_notify::NotifyError::Config)?);
        any = true;
    }
    if !any {
        return Ok(None);
    }
    let notifier = builder.build()?;
    metrics_kit
        .metrics()
        .register_with_prefix("notify", |r| notifier.register_metrics(r))?;
    Ok(Some(notifier))
}

impl App {
    /// Starts everything in `kit`.
    ///
    /// # Errors
    /// [`Error`]: the file (exit 64), the registry, the notifier.
    pub async fn start(settings: Settings, kit: &Kit) -> Result<App, Error> {
        let file = settings.load_file()?;
        let metrics = Metrics::default();
        let health = HealthMetrics::new();
        kit.metrics().register_with(|r| metrics.register(r));
        kit.metrics()
            .register_with_prefix("vm_health", |r| health.register(r))?;
        let alerts = Alerts::new(notifier(&settings, kit)?);
        let token = settings.admin_token.clone();
        let supervisor = Supervisor::start(
            settings,
            file.vms,
            metrics,
            health,
            alerts.clone(),
            Options::default(),
        )
        .await?;
        kit.set_admin_routes(crate::http::routes(supervisor.clone(), token));
        Ok(App { supervisor, alerts })
    }

    /// The supervisor.
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Stops supervising (the VMs keep running) and flushes alerts.
    pub async fn stop(self, budget: Duration) {
        let tasks_done = self.supervisor.shutdown(budget / 3).await;
        let report = match self.alerts.notifier() {
            Some(n) => Some(n.shutdown(budget / 2).await),
            None => None,
        };
        tracing::info!(
            tasks_done,
            alerts_sent = report.as_ref().map(|r| r.sent),
            alerts_dropped = report.as_ref().map(|r| r.dropped),
            "vm-supervisor stopped; VMs left running"
        );
    }
}

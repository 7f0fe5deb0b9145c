//! The whole program assembled inside keel-telemetry's kit: configuration →
//! notifier (Telegram) → guarded API → engine → `/health` on the kit's admin
//! server → `vms.yaml` watcher, and the bounded stop on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_notify::{Notifier, Priority, RateLimit, TelegramSink};
use keel_telemetry::{Kit, MetricsRegistry, Shutdown};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::alerts::{Alerts, SinkFactory, SinkFor};
use crate::api::{Api, ApiSettings, BreakerHook, HttpApi};
use crate::commands::CommandSettings;
use crate::config::Settings;
use crate::engine::{Engine, EngineSettings};
use crate::error::Error;
use crate::iam::TokenSource;
use crate::metrics::Metrics;
use crate::proxy::ProxyClient;
use crate::vms_yaml::VmsFile;
use crate::watch::{self, Reloader};
use crate::yandex::YandexClient;

/// The stop budget of [`Watchdog::stop`] after SIGTERM: 9 s, leaving the
/// kit a second of its 10 s drain bound for the rest.
pub const STOP_BUDGET: Duration = Duration::from_secs(9);

/// Knobs the environment does not expose (tests and the load program).
#[derive(Debug, Clone)]
pub struct Options {
    /// API policies (default: [`ApiSettings::new`] with
    /// `API_WORKER_POOL_SIZE` workers).
    pub api: Option<ApiSettings>,
    /// Replaces the Telegram rate limits the sink declares (default:
    /// Telegram's own: 1/s per chat, 20/min per group, 30/s per bot).
    pub telegram_rate_limits: Option<Vec<RateLimit>>,
    /// Engine settings beyond the bounds (default: TCP probes, entropy seed).
    pub engine: Option<EngineSettings>,
    /// Quiet time before a changed `vms.yaml` is reloaded.
    pub debounce: Duration,
    /// The program kit to run in (its shutdown, metrics registry and admin
    /// server, as `keel_telemetry::run` gives it). Default: a kit of its
    /// own, serving the admin routes on `HEALTH_ADDR` with an unprefixed
    /// registry (tests).
    pub kit: Option<Kit>,
    /// Run the self-checks ([`crate::selfcheck`]) at start (default
    /// `true`): a rejected credential fails the start (exit 64); a service
    /// that cannot be reached is logged and the program starts.
    pub self_check: bool,
    /// The command poller's settings when `TELEGRAM_COMMANDS` is on
    /// (default: [`CommandSettings::new`]; tests shorten its timeouts).
    pub commands: Option<CommandSettings>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            api: None,
            telegram_rate_limits: None,
            engine: None,
            debounce: watch::DEFAULT_DEBOUNCE,
            kit: None,
            self_check: true,
            commands: None,
        }
    }
}

/// Makes the Telegram sinks of forum topics and command replies: same bot,
/// chat, base URL and rate limits as the main sink (the limits are keyed by
/// chat and bot, so every sink shares them).
fn sink_factory(settings: &Settings, limits: Option<Vec<RateLimit>>) -> SinkFactory {
    let token = settings.bot_token.clone();
    let chat = settings.chat.clone();
    let base = settings.telegram_url.clone();
    Arc::new(move |what: SinkFor| {
        let mut b = TelegramSink::builder(token.clone(), chat.clone())
            .base_url(base.clone())
            .name(what.sink_name());
        match what {
            SinkFor::Topic(topic) => b = b.thread_id(topic),
            SinkFor::Reply(topic) => {
                if let Some(topic) = topic {
                    b = b.thread_id(topic);
                }
                b = b
                    .icons(false)
                    .digests(false)
                    .silent_at_or_below(Priority::Critical);
            }
        }
        if let Some(limits) = &limits {
            b = b.rate_limits(limits.clone());
        }
        b.build()
    })
}

/// After a start whose self-check could not reach Telegram: asks `getMe`
/// every 30 s until Telegram answers, then counts alerts as deliverable
/// again (as far as the sinks' breakers say).
fn spawn_recheck(
    engine: Arc<Engine<HttpApi>>,
    settings: Settings,
    cancel: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        let client = crate::selfcheck::client();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
            match crate::selfcheck::telegram(&client, &settings).await {
                Ok(_) => {
                    tracing::info!("self-check: Telegram answers now");
                    engine.set_telegram_verified(true);
                    return;
                }
                Err(e) if e.is_rejected() => {
                    tracing::error!(error = %e, "self-check: Telegram rejects the configuration");
                }
                Err(e) => tracing::debug!(error = %e, "self-check: Telegram still unreachable"),
            }
        }
    });
}

/// A running watchdog.
#[derive(Debug)]
pub struct Watchdog {
    engine: Arc<Engine<HttpApi>>,
    notifier: Notifier,
    kit: Kit,
    watcher: JoinHandle<()>,
    metrics: Metrics,
}

/// What [`Watchdog::stop`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopReport {
    /// Every VM task ended in time.
    pub tasks_stopped: bool,
    /// Alerts sent during the stop.
    pub alerts_sent: u64,
    /// Alerts written to the spool.
    pub alerts_spooled: usize,
    /// Alerts lost (no spool, or the spool failed).
    pub alerts_dropped: usize,
    /// How long the stop took.
    pub elapsed: Duration,
}

impl Watchdog {
    /// Starts everything for `settings`, monitoring `vms` (already loaded
    /// from `settings.vms_config`, which is then watched).
    ///
    /// # Errors
    /// [`Error`] when the notifier, the admin server or the watcher cannot
    /// start.
    pub async fn start(settings: &Settings, vms: VmsFile, options: Options) -> Result<Self, Error> {
        // Self-checks first: rejected credentials stop the start (exit 64).
        let check_client = crate::selfcheck::client();
        let mut telegram_unverified = false;
        let mut bot = None;
        if options.self_check {
            // Both at once: an unreachable service costs its timeout once.
            let (telegram, cloud) = tokio::join!(
                crate::selfcheck::telegram(&check_client, settings),
                crate::selfcheck::cloud(&check_client, settings, &vms),
            );
            match telegram {
                Ok(info) => {
                    tracing::info!(bot = ?info.username, "self-check: Telegram accepts the bot token and the chat");
                    bot = Some(info);
                }
                Err(f) if f.is_rejected() => return Err(Error::Config(f.into_config_error())),
                Err(f) => {
                    tracing::warn!(error = %f, "self-check: cannot reach Telegram; starting anyway (telegram_up stays 0 until it answers)");
                    telegram_unverified = true;
                }
            }
            match cloud {
                Ok(()) => tracing::info!("self-check: the cloud accepts the credentials"),
                Err(f) if f.is_rejected() => return Err(Error::Config(f.into_config_error())),
                Err(f) => {
                    tracing::warn!(error = %f, "self-check: cannot reach the cloud API; starting anyway");
                }
            }
        }
        let kit = match options.kit.clone() {
            Some(kit) => kit,
            None => Kit::builder()
                .admin_addr(settings.health_addr)
                .start()
                .await
                .map_err(Error::Telemetry)?,
        };
        let metrics = Metrics::new();
        // The issue names the metrics without a program prefix: the kit's
        // registry is unprefixed (`Program::metrics_prefix` is `None`).
        let registry = kit.metrics().clone();
        registry.register_with(|r| metrics.register(r));

        let mut telegram = TelegramSink::builder(settings.bot_token.clone(), settings.chat.clone())
            .base_url(settings.telegram_url.clone());
        if let Some(topic) = settings.topic_id {
            telegram = telegram.thread_id(topic);
        }
        if let Some(limits) = options.telegram_rate_limits.clone() {
            telegram = telegram.rate_limits(limits);
        }
        let telegram = telegram
            .build()
            .map_err(|e| Error::Notify(keel_notify::NotifyError::Config(e)))?;
        let default_sink = keel_notify::Sink::name(&telegram).to_owned();
        let factory = sink_factory(settings, options.telegram_rate_limits.clone());
        let mut notifier = Alerts::configure(Notifier::builder(), metrics.clone())
            .sink(telegram)
            .workers(settings.telegram_workers);
        // The sinks of the topics vms.yaml names now exist before the spool
        // is read back, so spooled alerts find their topic.
        let mut sinks = vec![default_sink.clone()];
        for topic in vms.vms.iter().filter_map(|vm| vm.topic_id) {
            let name = SinkFor::Topic(topic).sink_name();
            if Some(topic) == settings.topic_id || sinks.contains(&name) {
                continue;
            }
            let sink = factory(SinkFor::Topic(topic))
                .map_err(|e| Error::Notify(keel_notify::NotifyError::Config(e)))?;
            notifier = notifier.sink(sink);
            sinks.push(name);
        }
        if let Some(spool) = &settings.alert_spool {
            notifier = notifier.spool(spool.clone());
        } else if let Some(dir) = &settings.state_dir {
            notifier = notifier.state_dir(dir.clone());
        } else if std::env::var_os("STATE_DIRECTORY").is_none() {
            tracing::warn!(
                "neither ALERT_SPOOL nor STATE_DIR is set: alerts still queued at shutdown will be lost (logged with their count)"
            );
        }
        let notifier = notifier.build().map_err(Error::Notify)?;
        registry
            .register_with_prefix("vm_watchdog_notify", |r| notifier.register_metrics(r))
            .map_err(Error::Telemetry)?;
        let alerts = Alerts::new(notifier.clone()).with_routing(
            default_sink,
            settings.topic_id,
            factory,
            sinks,
        );

        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| Error::Io {
                context: "cannot build the HTTP client".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let tokens = Arc::new(TokenSource::new(
            &settings.credentials,
            &settings.iam_url,
            &settings.metadata_url,
            client.clone(),
        ));
        let raw = HttpApi::new(
            YandexClient::new(
                client.clone(),
                &settings.compute_url,
                &settings.operation_url,
                tokens,
            ),
            ProxyClient::new(client),
        );
        let hook_alerts = alerts.clone();
        let hook_metrics = metrics.clone();
        let hook: BreakerHook = Arc::new(move |group: &str, open: bool| {
            hook_metrics.breaker_open(group, open);
            if open {
                tracing::warn!(group, "cloud API circuit opened");
                hook_alerts.api_down(group);
            } else {
                tracing::info!(group, "cloud API circuit closed");
                hook_alerts.api_up(group);
            }
        });
        let api_settings = options
            .api
            .clone()
            .unwrap_or_else(|| ApiSettings::new(settings.api_workers));
        let api = Api::new(raw, api_settings, metrics.clone(), Some(hook)).map_err(|e| {
            Error::Config(keel_core::ConfigError::new(
                "API_WORKER_POOL_SIZE",
                format!("invalid API policies: {e}"),
            ))
        })?;
        let mut engine_settings = options
            .engine
            .clone()
            .unwrap_or_else(|| EngineSettings::new(settings.bounds));
        engine_settings.bounds = settings.bounds;
        engine_settings.stuck_after = settings.stuck_after;
        engine_settings.updating_stuck_after = settings.updating_stuck_after;
        let engine = Arc::new(Engine::new(api, alerts, metrics.clone(), engine_settings));
        if telegram_unverified {
            engine.set_telegram_verified(false);
            spawn_recheck(engine.clone(), settings.clone(), kit.token().child_token());
        }
        let report = engine.apply(&vms);
        engine.set_config_valid(true, Some(chrono::Utc::now().timestamp()));
        // `telegram_up` follows the Telegram breaker between scrapes of
        // `/health` too.
        let gauge_engine = engine.clone();
        let gauge_cancel = kit.token().child_token();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = gauge_cancel.cancelled() => return,
                    _ = tick.tick() => { gauge_engine.watch_delivery(); }
                }
            }
        });
        tracing::info!(vms = report.added.len(), folder = ?vms.folder_id, "monitoring started");

        kit.set_admin_routes(crate::http::routes(
            engine.clone(),
            settings.admin_token.clone(),
        ));
        if settings.telegram_commands {
            let command_settings = options.commands.clone().unwrap_or_else(|| {
                CommandSettings::new(settings, bot.as_ref().and_then(|b| b.username.clone()))
            });
            let client = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| Error::Io {
                    context: "cannot build the HTTP client".into(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            tokio::spawn(crate::commands::run(
                engine.clone(),
                command_settings,
                client,
                kit.token().child_token(),
            ));
        } else if settings.admin_user_ids.is_empty() {
            tracing::debug!("TELEGRAM_COMMANDS is off: no commands from the chat");
        } else {
            tracing::warn!(
                "TELEGRAM_ADMIN_USER_IDS is set but TELEGRAM_COMMANDS is off: no commands are taken"
            );
        }
        let watcher = watch::spawn(
            Reloader::new(engine.clone(), settings.vms_config.clone(), vms),
            options.debounce,
            kit.hangups().subscribe(),
            kit.token().child_token(),
        )?;
        Ok(Watchdog {
            engine,
            notifier,
            kit,
            watcher,
            metrics,
        })
    }

    /// The engine (VM tasks, `/health` document).
    pub fn engine(&self) -> &Arc<Engine<HttpApi>> {
        &self.engine
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The registry behind `/metrics` (unprefixed; keel-notify's metrics
    /// under `vm_watchdog_notify_`).
    pub fn registry(&self) -> &MetricsRegistry {
        self.kit.metrics()
    }

    /// The notifier.
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// The admin server's bound address, when serving.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.kit.admin_addr()
    }

    /// The kit's shutdown coordinator.
    pub fn shutdown(&self) -> &Shutdown {
        self.kit.shutdown()
    }

    /// Stops within `budget`: stops watching, ends every VM task, flushes
    /// queued alerts to Telegram (spooling what does not make it), drains
    /// the admin server.
    pub async fn stop(self, budget: Duration) -> StopReport {
        let started = Instant::now();
        let deadline = started + budget;
        // Stops the watcher (a child of the kit's token) and `/readyz`.
        self.kit.shutdown().trigger();
        let tasks_stopped = self.engine.shutdown(budget / 5).await;
        let _ = tokio::time::timeout(Duration::from_millis(200), self.watcher).await;
        // Leave a second for the drain below.
        let notify_budget = deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_secs(1));
        let report = self.notifier.shutdown(notify_budget).await;
        let drain = self
            .kit
            .shutdown()
            .drain(deadline.saturating_duration_since(Instant::now()))
            .await;
        let stop = StopReport {
            tasks_stopped,
            alerts_sent: report.sent,
            alerts_spooled: report.spooled,
            alerts_dropped: report.dropped,
            elapsed: started.elapsed(),
        };
        tracing::info!(
            tasks_stopped,
            alerts_sent = report.sent,
            alerts_spooled = report.spooled,
            alerts_dropped = report.dropped,
            drain_clean = drain.is_clean(),
            elapsed_ms = stop.elapsed.as_millis() as u64,
            "vm-watchdog stopped"
        );
        stop
    }
}

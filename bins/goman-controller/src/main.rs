//! goman-controller binary: keel-telemetry's kit parses and checks the
//! configuration (exit 64 naming the variable), sets up logging, the admin
//! server (daemon only) and the signals.

use std::process::ExitCode;
use std::time::Duration;

use goman_controller::config::{ClusterCommand, Command, Config};
use goman_controller::daemon::{Daemon, DaemonSettings};
use goman_controller::metrics::Metrics;
use goman_controller::model::Phase;
use goman_controller::reconcile::Requeue;
use goman_controller::{app, cli};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    keel_telemetry::run(|config: Config, kit| async move {
        match config.command.clone() {
            Command::Run => {
                let metrics = kit.metrics().register_with(Metrics::register);
                let parts = app::build(&config, metrics.clone()).await?;
                kit.metrics()
                    .register_with(|r| parts.breakers.register_metrics(r));
                let daemon = Daemon::new(
                    parts.reconciler.clone(),
                    DaemonSettings {
                        watch_interval: config.watch_interval,
                        workers: config.workers,
                        requeue_scale: config.requeue_scale,
                        ..DaemonSettings::default()
                    },
                );
                let ready = daemon.clone();
                kit.readiness().add_fn("state-store-listed", move || {
                    let ready = ready.clone();
                    async move {
                        if ready.has_listed() {
                            Ok(())
                        } else {
                            Err("the state store has not been listed yet")
                        }
                    }
                })?;
                kit.set_admin_routes(goman_controller::http::routes(
                    daemon.clone(),
                    metrics,
                    parts.breakers.clone(),
                    config.admin_breaker_control,
                ));
                tracing::info!(
                    store = %parts.reconciler.store().describe(),
                    admin_addr = kit.admin_addr().map(|a| a.to_string()),
                    "goman-controller started"
                );
                daemon.run(kit.token()).await;
                Ok::<(), BoxError>(())
            }
            Command::Reconcile {
                cluster,
                max_passes,
            } => {
                let parts = app::build(&config, Metrics::unregistered()).await?;
                for pass in 1..=max_passes {
                    let outcome = tokio::select! {
                        o = parts.reconciler.reconcile(&cluster) => o?,
                        () = kit.stopping() => return Ok(()),
                    };
                    tracing::info!(pass, result = outcome.result, phase = ?outcome.phase, requeue = ?outcome.requeue, "reconcile pass finished");
                    let settled = matches!(
                        outcome.phase,
                        Some(Phase::Running | Phase::Stopped | Phase::Failed)
                    );
                    let wait = match outcome.requeue {
                        Requeue::Done => break,
                        Requeue::After(_) if settled => break,
                        Requeue::After(d) => d,
                    };
                    if pass == max_passes {
                        break;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(wait.min(Duration::from_secs(60))) => {}
                        () = kit.stopping() => return Ok(()),
                    }
                }
                Ok(())
            }
            Command::Cluster { action } => {
                let (aws, _) = app::connect(&config, Metrics::unregistered()).await?;
                let store = app::store(&config, &aws).await?;
                match action {
                    ClusterCommand::Apply { file } => {
                        let text = cli::read_manifest(&file)?;
                        cli::print_json(&cli::apply(&store, &config.profile, &text).await?)?;
                    }
                    ClusterCommand::Get { name } => {
                        let doc = store
                            .get(&name)
                            .await?
                            .ok_or(cli::CliError::NotFound(name))?;
                        cli::print_json(&doc.doc)?;
                    }
                    ClusterCommand::List => cli::list(&store).await?,
                    ClusterCommand::Delete { name } => {
                        cli::print_json(&cli::delete(&store, &name).await?)?;
                    }
                    ClusterCommand::Stop { name } => {
                        cli::print_json(&cli::set_stopped(&store, &name, true).await?)?;
                    }
                    ClusterCommand::Start { name } => {
                        cli::print_json(&cli::set_stopped(&store, &name, false).await?)?;
                    }
                }
                Ok(())
            }
            Command::Init => {
                let (aws, _) = app::connect(&config, Metrics::unregistered()).await?;
                let bucket = config.state_bucket.clone().ok_or_else(|| {
                    keel_telemetry::ConfigError::new("GOMAN_STATE_BUCKET", "init needs a bucket")
                })?;
                app::init(&aws, &bucket, &config.lock_table).await?;
                Ok(())
            }
        }
    })
}

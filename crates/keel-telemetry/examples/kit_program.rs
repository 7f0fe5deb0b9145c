//! The smallest program on the kit, run by `tests/run.rs`: an admin server,
//! a periodic task, a status route, and switches that make it fail in each
//! documented way.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use clap::Parser;
use keel_telemetry::prometheus_client::metrics::counter::Counter;
use keel_telemetry::{ConfigError, KitArgs, Program, check, every};

/// A tiny program that ticks until told to stop.
#[derive(Debug, Parser)]
#[command(name = "kit-program", version)]
struct Config {
    /// Where the admin routes are served (none when unset).
    #[arg(long, env = "ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,

    /// The upstream API.
    #[arg(long, env = "UPSTREAM_URL", default_value = "http://127.0.0.1:1")]
    upstream_url: String,

    /// Parallel workers.
    #[arg(long, env = "WORKERS", default_value_t = 2)]
    workers: u32,

    /// An optional token; blank counts as unset.
    #[arg(long, env = "TOKEN")]
    token: Option<String>,

    /// A file the program would write.
    #[arg(long, env = "STATE_FILE")]
    state_file: Option<PathBuf>,

    /// How the run ends: `signal` (default), `done`, `fail`, `config`,
    /// `hang` (ignores the stop), `panic`.
    #[arg(long, env = "BEHAVIOUR", default_value = "signal")]
    behaviour: String,

    #[command(flatten)]
    kit: KitArgs,
}

impl Program for Config {
    fn kit_args(&self) -> &KitArgs {
        &self.kit
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check::http_url("UPSTREAM_URL", &self.upstream_url)?;
        if !(1..=64).contains(&self.workers) {
            return Err(ConfigError::new("WORKERS", "must be within 1..=64"));
        }
        if let Some(token) = &self.token
            && token.trim().is_empty()
        {
            return Err(ConfigError::new("TOKEN", "is set but blank"));
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        if let Some(path) = &self.state_file {
            check::writable_path("STATE_FILE", path)?;
        }
        Ok(())
    }

    fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    fn drain_timeout(&self) -> Duration {
        Duration::from_secs(2)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start")]
struct StartError(#[source] ConfigError);

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() -> ExitCode {
    keel_telemetry::run(|config: Config, kit| async move {
        let ticks = Counter::<u64>::default();
        kit.metrics()
            .register_with(|r| r.register("ticks", "Periodic task runs", ticks.clone()));
        let counted = ticks.clone();
        kit.shutdown()
            .spawn(every(Duration::from_millis(20), kit.token(), move || {
                counted.inc();
                async {}
            }));
        kit.set_admin_routes(Router::new().route("/status", get(|| async { "ticking" })));
        let addr = kit.admin_addr().map(|a| a.to_string()).unwrap_or_default();
        say(&format!("READY {addr}"));
        tracing::info!(workers = config.workers, "started");
        match config.behaviour.as_str() {
            "done" => return Ok(()),
            "fail" => return Err("the upstream refused us".into()),
            "config" => {
                return Err(Box::new(StartError(ConfigError::new(
                    "UPSTREAM_URL",
                    "answered 404 at start",
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            "panic" => panic!("bug"),
            "hang" => std::future::pending::<()>().await,
            _ => {}
        }
        kit.stopping().await;
        say("STOPPING");
        Ok(())
    })
}

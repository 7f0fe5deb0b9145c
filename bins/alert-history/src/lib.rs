//! alert-history: an Alertmanager webhook receiver that keeps every alert
//! event, because Alertmanager itself forgets resolved alerts.
//!
//! Point an Alertmanager `webhook_config` at `POST /webhook`; each alert of
//! each delivery becomes an event keyed by (fingerprint, status, startsAt,
//! endsAt), stored idempotently (redeliveries update `last_seen` and
//! `occurrences`, they never add rows) in SQLite or PostgreSQL, one
//! transaction per delivery. `GET /history`, `GET /alerts/{fingerprint}`,
//! `GET /report` and the `/dashboard` read it back; `/metrics`, `/healthz`,
//! `/readyz` and `/health/*` serve operators. The routes and response shapes
//! of the Python predecessor are kept; Keel's additions are extra fields.
//!
//! A 2xx from `POST /webhook` means the alerts are stored: a failed write
//! is answered 503 (Alertmanager retries) and turns readiness red until
//! writes are durable again ([`store::NotDurable`]); an alert that either
//! database could not store or read back is refused with 422 naming the
//! field ([`model::MAX_JSON_DEPTH`]).
//!
//! Modules: [`config`] (the clap struct, a kit [`keel_telemetry::Program`]),
//! [`model`] (the webhook payload and what is storable), [`store`]
//! (SQLite/PostgreSQL, one module per concept inside), [`pipeline`] (ingest
//! stages), [`http`] (the API and which token guards which route),
//! [`dashboard`] (HTML + JSON), [`metrics`], [`retention`], [`timeline`].
//!
//! Serving the API in-process over a temporary SQLite file:
//!
//! ```
//! use alert_history::{AppState, Config, Store, router};
//! use axum::body::Body;
//! use axum::http::{Request, StatusCode};
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let url = format!("sqlite://{}", dir.path().join("history.db").display());
//! let config = Config::for_database(&url);
//! let store = Store::connect(&url, 4).await?;
//! let app = router(AppState::new(store, &config, Default::default())?);
//!
//! let payload = r#"{"version":"4","status":"firing","alerts":[{"status":"firing",
//!   "labels":{"alertname":"DiskFull","instance":"node-1","severity":"critical"},
//!   "annotations":{"summary":"disk 95% full"},"startsAt":"2026-11-22T12:51:10Z",
//!   "endsAt":"0001-01-01T00:00:00Z","fingerprint":"12a9e0cfd9b7b39d"}]}"#;
//! for expected_saved in [1, 0] {
//!     // Alertmanager redelivers: the second delivery stores nothing new.
//!     let request = Request::post("/webhook").body(Body::from(payload))?;
//!     let response = app.clone().oneshot(request).await?;
//!     assert_eq!(response.status(), StatusCode::OK);
//!     let body: serde_json::Value =
//!         serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
//!     assert_eq!(body["saved"], expected_saved);
//! }
//!
//! let response = app.oneshot(Request::get("/history?alertname=DiskFull").body(Body::empty())?).await?;
//! let history: serde_json::Value =
//!     serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
//! assert_eq!(history.as_array().unwrap().len(), 1);
//! assert_eq!(history[0]["occurrences"], 2);
//! # Ok(())
//! # }
//! ```

mod auth;
pub mod classify;
pub mod config;
pub mod dashboard;
mod error;
pub mod filters;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod publish;
pub mod retention;
pub mod routing;
pub mod store;
pub mod targets;
pub mod timeline;

use std::net::SocketAddr;
use std::time::Duration;

use keel_telemetry::{DrainReport, HttpServer, ReadTimeouts, Shutdown};
use tokio::net::TcpListener;

pub use config::{Backend, Config, SqliteSync};
pub use error::{Error, PayloadError, QueryError};
pub use http::{AppState, Parts, router};
pub use metrics::Metrics;
pub use model::{NewEvent, Status, parse_webhook};
pub use pipeline::{Incoming, IngestStages, Stage, StageError};
pub use store::{HistoryQuery, IngestOutcome, ReportQuery, Store, StoreOptions};

/// A running service: the HTTP server (the kit's [`HttpServer`], with
/// header and body read timeouts and a drain no stalled client can hold)
/// and the retention task, both tracked by one [`Shutdown`].
#[derive(Debug)]
pub struct Service {
    local_addr: SocketAddr,
    shutdown: Shutdown,
    state: AppState,
    server: HttpServer,
}

impl Service {
    /// Connects to the database (running migrations), binds
    /// `config.listen_addr`, and starts serving and the retention task.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid configuration, the database, migration
    /// or bind error otherwise.
    pub async fn start(config: &Config) -> Result<Service, Error> {
        Service::start_with(config, Shutdown::new()).await
    }

    /// [`Service::start`] under a given [`Shutdown`] (the kit's, in the
    /// binary): the HTTP server and the retention task are tracked by it.
    ///
    /// # Errors
    /// As [`Service::start`].
    pub async fn start_with(config: &Config, shutdown: Shutdown) -> Result<Service, Error> {
        config.validate()?;
        let timeouts = ReadTimeouts::new(config.header_read_timeout(), config.body_read_timeout())?;
        let store = Store::connect_with(
            &config.database_url,
            StoreOptions {
                max_connections: config.db_max_connections,
                sqlite_synchronous: config.sqlite_synchronous,
            },
        )
        .await?;
        let mut parts = http::Parts {
            targets: targets::Targets::from_config(&config.targets, &shutdown).await?,
            filters: filters::Filters::load(&store).await?,
            enrichment: classify::Enrichment::from_config(&config.classify, &store).await?,
            publisher: None,
        };
        // Publishing runs where targets can exist; without a targets source
        // (the embedded default) ingest writes no outbox rows at all.
        if config.targets.targets_file.is_some() || config.targets.targets_from_kubernetes {
            parts.publisher = Some(publish::Publisher::start(
                &store,
                &parts.targets,
                &parts.filters,
                &parts.enrichment,
                &config.publish,
                &shutdown,
            ));
        }
        shutdown.spawn(
            parts
                .filters
                .clone()
                .watch(filters::POLL_INTERVAL, shutdown.token()),
        );
        let state = AppState::with_parts(store.clone(), config, shutdown.token(), parts)?;
        state.metrics().set_db_alerts(store.count_events().await?);
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen_addr,
                source,
            })?;
        let server =
            HttpServer::from_listener(listener, router(state.clone()), &shutdown, timeouts)?;
        let local_addr = server.local_addr();
        shutdown.spawn(retention::task(
            store.clone(),
            state.metrics().clone(),
            config.retention(),
            config.retention_interval(),
            shutdown.token(),
        ));
        tracing::info!(
            addr = %local_addr,
            backend = store.backend_name(),
            retention_days = config.retention_days,
            retention_interval_seconds = config.retention_interval_seconds,
            "alert-history listening"
        );
        Ok(Service {
            local_addr,
            shutdown,
            state,
            server,
        })
    }

    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shutdown coordinator (wait for SIGTERM with
    /// [`Shutdown::signal`]).
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The shared state (store, metrics).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops taking requests (readiness turns 503, the listener closes),
    /// lets in-flight requests finish within `drain`, then closes the
    /// database.
    pub async fn stop(self, drain: Duration) -> DrainReport {
        let report = self.shutdown.drain(drain).await;
        self.state.store().close().await;
        report
    }

    /// Once the shutdown has been triggered: waits for the HTTP server to
    /// answer its in-flight requests (the kit bounds the wait), then closes
    /// the database.
    pub async fn finish(self) {
        if let Err(e) = self.server.wait().await {
            tracing::warn!(error = %e, "HTTP server task failed");
        }
        self.state.store().close().await;
    }
}

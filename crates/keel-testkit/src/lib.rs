//! Test support for Keel crates and programs (`publish = false`; a
//! dev-dependency only).
//!
//! * **Fake HTTP servers.** [`FakeServer`] serves any axum [`Router`] on
//!   `127.0.0.1:<random port>` through the fake layer ([`FakeLayer`]), which
//!   records every request ([`RecordedRequest`]), injects faults
//!   ([`Faults`]: error rate with a 5xx status, latency distributions
//!   ([`Latency`]), 429 with `Retry-After`, connection drops and resets, a
//!   down/up schedule ([`Flap`]); seeded with [`keel_core::Rng`] and
//!   changeable mid-test; a [`FaultRenderer`] renders them in a fake's wire
//!   format) and serves scripted answers ([`Script`]) before the router. The
//!   fakes of real APIs in [`fakes`] are small routers on top of it.
//! * **Real services.** [`services`] finds the local PostgreSQL
//!   (`PgSchema`, feature `postgres`) and Redis (`RedisPrefix`, feature
//!   `redis`) with a unique schema or key prefix per test, and starts
//!   [`Prometheus`], [`Alertmanager`] and [`Moto`] as child processes on
//!   free ports. A missing service fails the test with the command that
//!   installs or starts it; nothing is skipped silently.
//! * **Fuzz targets as tests.** [`fuzz::replay`] runs a fuzz target's
//!   property over its committed corpus and reproducers, then a seeded
//!   mutation budget (docs/RELIABILITY.md).
//! * **Time and logs.** [`ManualClock`] (from `keel-core`) and
//!   [`init_test_tracing`].
//!
//! ```
//! use std::time::Duration;
//! use axum::Router;
//! use axum::routing::get;
//! use keel_testkit::{Fault, FakeServer, ScriptedResponse};
//! use reqwest::StatusCode;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = Router::new().route("/info", get(|| async { r#"{"status":"RUNNING"}"# }));
//! let server = FakeServer::start(app).await;
//! let client = reqwest::Client::new();
//!
//! // The router answers...
//! let response = client.get(server.url("/info")).send().await?;
//! assert_eq!(response.text().await?, r#"{"status":"RUNNING"}"#);
//!
//! // ...unless a fault or a scripted answer comes first.
//! server.faults().push_next(Fault::Error(StatusCode::SERVICE_UNAVAILABLE));
//! server.script().enqueue(
//!     http::Method::POST,
//!     "/start",
//!     ScriptedResponse::json(StatusCode::CONFLICT, &serde_json::json!({ "code": 9 })),
//! );
//! let response = client.get(server.url("/info?verbose=1")).send().await?;
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//! let response = client.post(server.url("/start")).body("go").send().await?;
//! assert_eq!(response.status(), StatusCode::CONFLICT);
//!
//! // Every request was recorded, faulted or not.
//! let requests = server.wait_for_requests(3, Duration::from_secs(5)).await?;
//! assert_eq!(requests[1].query_param("verbose").as_deref(), Some("1"));
//! assert_eq!(requests[1].fault, Some(Fault::Error(StatusCode::SERVICE_UNAVAILABLE)));
//! assert_eq!(requests[2].body_text(), "go");
//! # Ok(())
//! # }
//! ```

mod error;
pub mod fakes;
mod faults;
pub mod fuzz;
mod layer;
mod logging;
mod record;
mod script;
mod server;
pub mod services;

pub use axum::Router;
pub use error::{TestkitError, WaitTimeout};
pub use faults::{
    Fault, FaultConfig, FaultRenderer, Faults, Flap, Latency, PlainRenderer,
    default_error_response, default_rate_limited_response, retry_after_secs,
};
pub use keel_core::{Clock, ManualClock, Rng};
pub use layer::{DEFAULT_SEED, FakeControl, FakeLayer, FakeService};
pub use logging::init_test_tracing;
pub use record::RecordedRequest;
pub use script::{Script, ScriptedResponse};
pub use server::{FakeServer, FakeServerBuilder};
pub use services::{Alertmanager, Moto, Prometheus};

//! Execute-once for controllers and webhooks.
//!
//! A controller that creates cloud instances, a webhook receiver that stores
//! alerts, a payment endpoint: each must survive retries, redeliveries and
//! replicas without doing the work twice. This crate gives every such
//! operation a key ([`IdempotencyKey`]: SHA-256 over the operation's name
//! and canonical JSON parameters) and runs it through [`Idempotency`]:
//!
//! * the first caller of a key claims it (`Pending`, with an owner and a
//!   lease it renews while running), runs the operation and stores the
//!   result (serialized as JSON) for a TTL (24 h by default);
//! * later callers get the stored result without running anything;
//! * concurrent callers wait for the running owner's result (coalescing) or
//!   fail fast with [`RequestInFlight`], chosen per call;
//! * a failure is run again when keel-core classifies it as retryable
//!   ([`Outcome::is_retryable`](keel_core::Outcome::is_retryable)) and
//!   replayed when not;
//! * a key reused for a different request ([`Fingerprint`]) fails with
//!   [`FingerprintMismatch`];
//! * an owner that crashed loses its key when its lease runs out: the next
//!   caller takes it over.
//!
//! Use it when an operation has effects outside your process that must not
//! repeat. Do not use it as a cache: it stores one result per key and never
//! refreshes it.
//!
//! # Guarantees and limits
//!
//! * "At most once per key" holds while the owner keeps its lease: a run
//!   that stalls (not just runs long: heartbeats renew the lease every
//!   third of it) past its lease can be taken over and run a second time;
//!   the stalled owner then finds it lost the key, its result is not stored
//!   and `lost_leases` is counted.
//! * A cancelled run (its future dropped, a panic) releases its key at once,
//!   so the next caller runs without waiting for the lease.
//! * If the store fails after the operation ran, the caller still gets the
//!   value; the key stays pending until its lease runs out.
//! * By default every `Err` is a retryable failure (keel-core's
//!   [`classify::Default`](keel_core::classify::Default)); pass a classifier
//!   with [`Call::classify`] to store and replay non-retryable errors.
//!
//! Results and errors are stored as JSON, so both serialize; an error type
//! that does not (`std::io::Error`, a boxed error) can be returned as
//! [`StoredError`], which `?` converts to.
//!
//! Backends implement [`IdempotencyStore`]: [`MemoryStore`] (default; one
//! process: [`Idempotency::new`] in one line, [`Idempotency::in_memory`] to
//! configure it, [`Builder::clock`] to hand it the program's
//! [`keel_core::Clock`]), `RedisStore` (feature `redis`) and `PostgresStore`
//! (feature `postgres`) for several replicas, which keep time on their
//! servers. Feature `axum` adds
//! `IdempotencyLayer`, a tower middleware for the `Idempotency-Key` HTTP
//! header; feature `metrics` adds Prometheus counters (`Metrics`).
//!
//! ```
//! use keel_idempotency::{Fingerprint, Idempotency, IdempotencyKey};
//! use serde::{Deserialize, Serialize};
//! use serde_json::json;
//! use std::sync::atomic::{AtomicU32, Ordering};
//!
//! // Errors are stored too (a non-retryable one is replayed), so they
//! // serialize like results.
//! #[derive(Debug, Serialize, Deserialize, thiserror::Error)]
//! #[error("cloud API error: {0}")]
//! struct CloudError(String);
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let idem = Idempotency::new(); // in memory
//! let params = json!({"cluster": "prod", "instance_type": "t3.small", "count": 2});
//! let key = IdempotencyKey::new("create-instances", &params)?;
//! let fingerprint = Fingerprint::of(&params)?;
//!
//! let created = AtomicU32::new(0);
//! let create = || async {
//!     created.fetch_add(2, Ordering::SeqCst);
//!     Ok::<_, CloudError>(vec!["i-1".to_string(), "i-2".to_string()])
//! };
//! let first = idem.execute(&key, &fingerprint, create).await?;
//! // A retry (a redelivered webhook, a restarted reconcile loop) replays the
//! // stored result instead of creating two more instances.
//! let again = idem.execute(&key, &fingerprint, create).await?;
//! assert_eq!(first, again);
//! assert_eq!(created.load(Ordering::SeqCst), 2);
//!
//! // The same key with other parameters is a client error.
//! let other = Fingerprint::of(&json!({"count": 3}))?;
//! let err = idem.execute(&key, &other, create).await.unwrap_err();
//! assert!(err.as_fingerprint_mismatch().is_some());
//! # Ok(())
//! # }
//! ```

mod cleanup;
mod config;
mod error;
mod executor;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod key;
mod memory;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
mod store;

#[cfg(feature = "axum")]
pub mod http;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;

pub use cleanup::CleanupTask;
pub use config::{
    Builder, DEFAULT_HEARTBEAT, DEFAULT_LEASE, DEFAULT_TTL, DEFAULT_WAIT_TIMEOUT, InFlightPolicy,
};
pub use error::{
    ConfigError, ExecuteError, FingerprintMismatch, IdempotencyError, InvalidDigest,
    RequestInFlight, StoreError, StoredError,
};
pub use executor::{Call, Executed, ExecutionKind, Idempotency};
pub use key::{Fingerprint, IdempotencyKey, canonical_json};
pub use memory::MemoryStore;
#[cfg(feature = "metrics")]
pub use metrics::Metrics;
pub use store::{
    Begin, BeginRequest, IdempotencyStore, OwnerId, Previous, Record, RecordState, Settle,
    StoreFuture,
};

#[cfg(feature = "axum")]
pub use http::{IdempotencyLayer, IdempotencyLayerBuilder, IdempotencyService};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresStore, PostgresStoreBuilder};
#[cfg(feature = "redis")]
pub use redis::{RedisStore, RedisStoreBuilder};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

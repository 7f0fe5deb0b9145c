//! goman-controller: reconciles K3s clusters on AWS with every reliability
//! feature goman documented, built on the Keel core.
//!
//! * [`model`]: goman's `ClusterResource` (metadata, spec, status, phases).
//! * [`store`]: cluster documents in S3 (or a local directory), every write
//!   conditional on the version read; [`lock`]: goman's DynamoDB lock.
//! * [`aws`]: the SDK clients and the one way to call them (a
//!   `keel::Pipeline` per service over the breaker registry's AWS presets,
//!   throttling-aware retries, the SDK's own retries off); [`cloud`]: EC2
//!   (idempotent creates, batches of 10) and SSM (parallel commands).
//! * [`reconcile`]: one pass over one cluster (keel-tx transactions through
//!   fenced writes, the provisioning saga); [`daemon`]: the watch loop and
//!   work queue; [`cli`]: `cluster apply | get | list | delete`.
//!
//! ```
//! use goman_controller::model::Manifest;
//! let m = Manifest::parse(
//!     "metadata: {name: dev}\nspec: {region: us-east-1, instanceType: t3.small, masterCount: 1, mode: developer, k3sVersion: v1.31.4+k3s1}",
//! )
//! .unwrap();
//! assert_eq!(m.spec.master_count, 1);
//! assert!(Manifest::parse("metadata: {name: dev}\nspec: {region: us-east-1, instanceType: t3.small, masterCount: 2, mode: ha, k3sVersion: v1}").is_err());
//! ```

pub mod app;
pub mod aws;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod daemon;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod lock;
pub mod metrics;
pub mod model;
pub mod reconcile;
pub mod store;

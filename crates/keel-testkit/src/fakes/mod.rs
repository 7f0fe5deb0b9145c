//! Fakes of the external HTTP APIs Keel programs talk to, each a small axum
//! router wrapped by the fault layer ([`crate::FakeServer`]).

pub mod aws;
pub mod kube;
mod limits;
pub mod llm;
pub mod pagerduty;
pub mod rootly;
pub mod slack;
pub mod telegram;
pub mod webhook;
pub mod yandex;

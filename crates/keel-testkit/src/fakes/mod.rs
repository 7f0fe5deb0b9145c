//! Fakes of the external HTTP APIs Keel programs talk to, each a small axum
//! router wrapped by the fault layer ([`crate::FakeServer`]).

pub mod telegram;
pub mod yandex;

//! Real local services for tests: find the running PostgreSQL and Redis, or
//! start Prometheus, Alertmanager and moto as child processes.

mod alertmanager;
mod moto;
#[cfg(feature = "postgres")]
mod postgres;
mod process;
mod prometheus;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "postgres", feature = "redis"))]
mod unique;

pub use alertmanager::{
    ALERTMANAGER_BIN_ENV, ALERTMANAGER_INSTALL, Alertmanager, AlertmanagerBuilder,
    DEFAULT_ALERTMANAGER_CONFIG,
};
pub use moto::{DEFAULT_MOTO_VENV, MOTO_BIN_ENV, MOTO_INSTALL, MOTO_VENV_ENV, Moto};
#[cfg(feature = "postgres")]
pub use postgres::{DEFAULT_POSTGRES_URL, POSTGRES_URL_ENV, PgSchema, postgres_url};
pub use prometheus::{
    DEFAULT_PROMETHEUS_CONFIG, PROMETHEUS_BIN_ENV, PROMETHEUS_INSTALL, PROMTOOL_BIN_ENV,
    Prometheus, PrometheusBuilder,
};
#[cfg(feature = "redis")]
pub use redis::{DEFAULT_REDIS_URL, REDIS_URL_ENV, RedisPrefix, redis_url};

//! Tracing for tests.

use tracing_subscriber::EnvFilter;

/// Installs a global subscriber that writes through the test harness's
/// capture (so output shows only for failing tests), filtered by `RUST_LOG`
/// or `info` when it is unset or invalid. Safe to call from every test: only
/// the first call in a process installs anything.
pub fn init_test_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

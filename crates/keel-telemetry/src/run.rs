//! `run`: the start and stop every Keel program shares.

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use clap::Parser;
use keel_core::{BoxError, ConfigError};
use parking_lot::RwLock;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{
    AdminState, DEFAULT_DRAIN_TIMEOUT, Hangups, HttpServer, LogArgs, LogConfig, LogTarget,
    MetricsRegistry, ReadTimeouts, Readiness, Shutdown, TelemetryError, router,
};

/// How a program started with [`run`] ends. These are the only exit codes
/// Keel programs use.
///
/// | code | meaning |
/// |---|---|
/// | 0 | success: stopped by SIGTERM/SIGINT and drained in time, finished its work, `--check-config` found nothing wrong, or `--help`/`--version` |
/// | 1 | runtime failure: the program returned an error that is not a configuration error, panicked, or did not stop within the drain bound; the runtime, logging, admin port or signal handlers could not be set up |
/// | 64 | invalid configuration (`EX_USAGE` of sysexits.h): clap rejected an argument or variable, [`Program::validate`] or (with `--check-config`) [`Program::check`] failed, or the program returned an error whose source chain holds a [`ConfigError`]; stderr names the variable |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Exit {
    /// 0.
    Success,
    /// 1.
    Failure,
    /// 64 (`EX_USAGE`).
    Config,
}

impl Exit {
    /// The process exit status.
    pub const fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Config => 64,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

// The docs are for rustdoc only: clap turns a flattened struct's doc comment
// into the program's `about`.
#[cfg_attr(
    doc,
    doc = "The options [`run`] itself reads, flattened into every program's clap struct with `#[command(flatten)]`: `--check-config` and the logging variables ([`LogArgs`]), so `--help` lists them with the program's own."
)]
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct KitArgs {
    #[command(flatten)]
    pub log: LogArgs,

    /// Check the configuration without side effects (URLs parsed, files
    /// readable, directories writable) and exit: 0 when valid, 64 naming
    /// the variable otherwise.
    #[arg(long)]
    pub check_config: bool,
}

/// A program's configuration, as [`run`] needs it: a clap struct (every
/// field with `env = "..."`) that flattens [`KitArgs`].
///
/// ```
/// use std::net::SocketAddr;
/// use clap::Parser;
/// use keel_telemetry::{ConfigError, KitArgs, Program, check};
///
/// /// Watches things.
/// #[derive(Debug, Parser)]
/// #[command(name = "thing-watcher")]
/// struct Config {
///     /// Where `/healthz`, `/readyz` and `/metrics` are served.
///     #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:9090")]
///     admin_addr: SocketAddr,
///     /// The API to watch.
///     #[arg(long, env = "API_URL", default_value = "https://api.example.com")]
///     api_url: String,
///     #[command(flatten)]
///     kit: KitArgs,
/// }
///
/// impl Program for Config {
///     fn kit_args(&self) -> &KitArgs {
///         &self.kit
///     }
///     fn validate(&self) -> Result<(), ConfigError> {
///         check::http_url("API_URL", &self.api_url).map(drop)
///     }
///     fn admin_addr(&self) -> Option<SocketAddr> {
///         Some(self.admin_addr)
///     }
/// }
///
/// let config = Config::try_parse_from(["thing-watcher", "--api-url", "ftp://x"])?;
/// assert_eq!(config.validate().unwrap_err().field(), "API_URL");
/// # Ok::<(), clap::Error>(())
/// ```
pub trait Program: Parser + Send + 'static {
    /// The flattened [`KitArgs`].
    fn kit_args(&self) -> &KitArgs;

    /// Everything that can be checked from the values alone (ranges,
    /// combinations, URLs). Runs at every start; a failure exits 64.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    /// What `--check-config` checks beyond [`validate`](Self::validate):
    /// files readable and parseable, directories writable ([`crate::check`]),
    /// without side effects. Not run at a normal start, where the program's
    /// own start-up meets the same conditions.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable.
    fn check(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Where the admin server (`/healthz`, `/readyz`, `/metrics` and the
    /// routes given to [`Kit::set_admin_routes`]) listens; `None` (the
    /// default) for none.
    fn admin_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// The prefix of the program's metrics: by default the program's name
    /// with `-` as `_` (`alert_history_...`); `None` for none (metric names
    /// fixed by something outside the program).
    fn metrics_prefix(&self) -> Option<String> {
        Some(Self::command().get_name().replace('-', "_"))
    }

    /// From SIGTERM/SIGINT (or the program's own return) to exit, at most
    /// this long (default [`DEFAULT_DRAIN_TIMEOUT`], 10 s).
    fn drain_timeout(&self) -> Duration {
        DEFAULT_DRAIN_TIMEOUT
    }

    /// Where logs go: standard output by default; standard error for a
    /// command-line program whose standard output is a report.
    fn log_target(&self) -> LogTarget {
        LogTarget::Stdout
    }
}

/// What a running program gets from [`run`]: the shutdown coordinator, the
/// metrics registry (with the program's prefix) and readiness checks behind
/// the admin server. Cloning is cheap and shares everything.
#[derive(Clone)]
pub struct Kit {
    shutdown: Shutdown,
    metrics: MetricsRegistry,
    readiness: Readiness,
    admin_addr: Option<SocketAddr>,
    admin_routes: Arc<RwLock<Router>>,
    drain_timeout: Duration,
    hangups: Hangups,
}

impl fmt::Debug for Kit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kit")
            .field("shutdown", &self.shutdown)
            .field("metrics", &self.metrics)
            .field("admin_addr", &self.admin_addr)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl Kit {
    /// A kit outside [`run`] (tests, tools that embed a program): no admin
    /// server and an unprefixed registry unless told otherwise.
    pub fn builder() -> KitBuilder {
        KitBuilder {
            admin_addr: None,
            metrics: None,
            shutdown: None,
            timeouts: ReadTimeouts::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            hangups: None,
        }
    }

    /// The shutdown coordinator: spawn long-lived work with
    /// [`Shutdown::spawn`] so the drain waits for it.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The token cancelled when the program must stop taking work.
    pub fn token(&self) -> CancellationToken {
        self.shutdown.token()
    }

    /// Completes when the program must stop (SIGTERM, SIGINT, or
    /// [`Shutdown::trigger`]).
    pub async fn stopping(&self) {
        self.shutdown.token().cancelled().await;
    }

    /// The registry served on `/metrics`; libraries register into it with
    /// [`MetricsRegistry::register_with`].
    pub fn metrics(&self) -> &MetricsRegistry {
        &self.metrics
    }

    /// The checks behind `/readyz`; add them as their subjects come up.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The admin server's bound address (the real port when 0 was asked
    /// for), if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// How long the stop may take in all (see [`Program::drain_timeout`]).
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// The SIGHUPs [`run`] receives: a program that can reload subscribes
    /// ([`Hangups::subscribe`]); otherwise a SIGHUP is logged and ignored.
    pub fn hangups(&self) -> &Hangups {
        &self.hangups
    }

    /// `/healthz`, `/readyz` and `/metrics` over this kit's readiness checks,
    /// shutdown and registry, for a program that serves them on its own
    /// port (merge them into its router) instead of an admin port.
    pub fn admin_router(&self) -> Router {
        admin_router(&self.metrics, &self.readiness, &self.shutdown)
    }

    /// Serves `routes` (a status page, an admin API) on the admin server
    /// from now on, next to the built-in routes, replacing routes set
    /// before. The server starts before the program so `/healthz` answers
    /// during a slow start; this adds what only exists once it has started.
    /// Routes that repeat a built-in path are never reached.
    pub fn set_admin_routes(&self, routes: Router) {
        *self.admin_routes.write() = routes;
    }
}

/// Builder for [`Kit`], for programs and tests that do not go through
/// [`run`].
#[derive(Debug)]
#[must_use]
pub struct KitBuilder {
    admin_addr: Option<SocketAddr>,
    metrics: Option<MetricsRegistry>,
    shutdown: Option<Shutdown>,
    timeouts: ReadTimeouts,
    drain_timeout: Duration,
    hangups: Option<Hangups>,
}

impl KitBuilder {
    /// Serves the admin routes on `addr` (port 0 for a free one).
    pub fn admin_addr(mut self, addr: SocketAddr) -> Self {
        self.admin_addr = Some(addr);
        self
    }

    /// Uses `metrics` (default: [`MetricsRegistry::unprefixed`]).
    pub fn metrics(mut self, metrics: MetricsRegistry) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Uses `shutdown` (default: a new one).
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// The admin server's read timeouts.
    pub fn read_timeouts(mut self, timeouts: ReadTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// See [`Program::drain_timeout`].
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Uses `hangups` (default: a new one, which only
    /// [`Hangups::trigger`] moves).
    pub fn hangups(mut self, hangups: Hangups) -> Self {
        self.hangups = Some(hangups);
        self
    }

    /// Starts the admin server, if asked for, and returns the kit.
    ///
    /// # Errors
    /// [`TelemetryError::Bind`] when the admin address cannot be bound.
    pub async fn start(self) -> Result<Kit, TelemetryError> {
        let shutdown = self.shutdown.unwrap_or_default();
        let metrics = self.metrics.unwrap_or_else(MetricsRegistry::unprefixed);
        let readiness = Readiness::new();
        let admin_routes = Arc::new(RwLock::new(Router::new()));
        let admin_addr = match self.admin_addr {
            Some(addr) => {
                let late = admin_routes.clone();
                let app = admin_router(&metrics, &readiness, &shutdown).fallback(
                    move |request: Request| {
                        let routes = late.read().clone();
                        async move {
                            match routes.oneshot(request).await {
                                Ok(response) => response,
                                Err(never) => match never {},
                            }
                        }
                    },
                );
                let server = HttpServer::bind_with(addr, app, &shutdown, self.timeouts).await?;
                Some(server.local_addr())
            }
            None => None,
        };
        Ok(Kit {
            shutdown,
            metrics,
            readiness,
            admin_addr,
            admin_routes,
            drain_timeout: self.drain_timeout,
            hangups: self.hangups.unwrap_or_default(),
        })
    }
}

/// SIGHUP's default action ends a process: listen from the start, and pass
/// each one to the program's subscribers, or say it was ignored.
fn listen_for_hangups(name: &str, hangups: &Hangups) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut listener = match signal(SignalKind::hangup()) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: a SIGHUP will end the program");
                return;
            }
        };
        let name = name.to_owned();
        let hangups = hangups.clone();
        tokio::spawn(async move {
            while listener.recv().await.is_some() {
                if hangups.trigger() {
                    tracing::info!("SIGHUP: reloading");
                } else {
                    tracing::info!(
                        program = %name,
                        "SIGHUP ignored: this program reads its configuration only at start"
                    );
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (name, hangups);
}

fn admin_router(metrics: &MetricsRegistry, readiness: &Readiness, shutdown: &Shutdown) -> Router {
    let state = AdminState::builder(metrics.clone())
        .readiness(readiness.clone())
        .shutdown(shutdown.clone())
        .build();
    match state {
        Ok(state) => router(state),
        // Only a status route can make `build` fail, and there is none.
        Err(e) => unreachable!("{e}"),
    }
}

/// Runs a program: the whole of a Keel `main`.
///
/// 1. Parses `C` from the arguments and environment. An environment variable
///    set to an empty or blank value counts as unset (its default applies,
///    an `Option` is `None`). A clap error (unknown flag, unparsable or
///    missing value, both naming the argument and its variable) exits 64;
///    `--help` and `--version` exit 0.
/// 2. [`LogArgs`] and [`Program::validate`]: a [`ConfigError`] is printed to
///    stderr (`name: invalid `VAR`: reason`) and exits 64.
/// 3. With `--check-config`: [`Program::check`], then exit 0 or 64.
/// 4. Installs the logging subscriber, builds a multi-threaded tokio
///    runtime, installs the SIGTERM/SIGINT handlers and a SIGHUP one (passed
///    to [`Kit::hangups`]' subscribers, else logged and ignored, never the
///    default "end the process"), starts the admin server
///    on [`Program::admin_addr`] with the registry of
///    [`Program::metrics_prefix`].
/// 5. Runs `main(config, kit)`. It should serve until
///    [`Kit::stopping`], hand back or finish its work, and return.
/// 6. On a signal, `main` and then the tracked tasks (admin server, work
///    spawned with [`Shutdown::spawn`]) get [`Program::drain_timeout`] in
///    all. If `main` returns first, the same drain follows.
///
/// The exit status is one of [`Exit`]: an error returned by `main` exits 64
/// when its source chain holds a [`ConfigError`] (typed, never matched by
/// text), 1 otherwise.
///
/// ```no_run
/// # use clap::Parser;
/// # use keel_telemetry::{KitArgs, Program};
/// # #[derive(Debug, Parser)]
/// # struct Config { #[command(flatten)] kit: KitArgs }
/// # impl Program for Config { fn kit_args(&self) -> &KitArgs { &self.kit } }
/// fn main() -> std::process::ExitCode {
///     keel_telemetry::run(|config: Config, kit| async move {
///         let work = kit.shutdown().spawn(keel_telemetry::every(
///             std::time::Duration::from_secs(60),
///             kit.token(),
///             || async { /* one round */ },
///         ));
///         kit.stopping().await;
///         work.await?;
///         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
///     })
/// }
/// ```
pub fn run<C, F, Fut, E>(main: F) -> ExitCode
where
    C: Program,
    F: FnOnce(C, Kit) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    run_with_args::<C, _, _, _, _>(std::env::args_os(), main).into()
}

fn run_with_args<C, I, F, Fut, E>(args: I, main: F) -> Exit
where
    C: Program,
    I: IntoIterator<Item = OsString>,
    F: FnOnce(C, Kit) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    let (name, config) = match parse::<C, _>(args) {
        Ok(parsed) => parsed,
        Err(exit) => return exit,
    };
    let log = match validate(&config) {
        Ok(log) => log,
        Err(e) => return config_error(&name, &e),
    };
    if config.kit_args().check_config {
        return match config.check() {
            Ok(()) => {
                eprintln!("{name}: configuration is valid");
                Exit::Success
            }
            Err(e) => config_error(&name, &e),
        };
    }
    if let Err(e) = log.init() {
        eprintln!("{name}: cannot set up logging: {e}");
        return Exit::Failure;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the tokio runtime");
            return Exit::Failure;
        }
    };
    let exit = runtime.block_on(lifecycle(name, config, main));
    // Abandoned tasks are dropped, not waited for: the drain bound is over.
    runtime.shutdown_background();
    exit
}

/// Parses `C`, treating blank environment variables as unset.
fn parse<C: Program, I: IntoIterator<Item = OsString>>(args: I) -> Result<(String, C), Exit> {
    let mut command = C::command().mut_args(|arg| {
        let Some(var) = arg.get_env().and_then(|v| v.to_str()).map(str::to_owned) else {
            return arg;
        };
        // Clap's errors and `--help` name the value after the variable, so
        // a rejected value always names the variable to fix.
        let arg = if arg.get_action().takes_values() {
            arg.value_name(var.clone())
        } else {
            arg
        };
        let blank =
            std::env::var_os(&var).is_some_and(|v| v.to_str().is_some_and(|v| v.trim().is_empty()));
        if blank { arg.env(None) } else { arg }
    });
    let name = command.get_name().to_owned();
    let parsed = command
        .try_get_matches_from_mut(args)
        .and_then(|mut matches| C::from_arg_matches_mut(&mut matches));
    match parsed {
        Ok(config) => Ok((name, config)),
        Err(e) => {
            let e = e.format(&mut command);
            // Help and version go to stdout and are a success.
            let exit = if e.use_stderr() {
                Exit::Config
            } else {
                Exit::Success
            };
            let _ = e.print();
            Err(exit)
        }
    }
}

fn validate<C: Program>(config: &C) -> Result<LogConfig, ConfigError> {
    let log = config
        .kit_args()
        .log
        .config()?
        .with_target(config.log_target());
    config.validate()?;
    Ok(log)
}

fn config_error(name: &str, error: &ConfigError) -> Exit {
    eprintln!("{name}: {error}");
    Exit::Config
}

async fn lifecycle<C, F, Fut, E>(name: String, config: C, main: F) -> Exit
where
    C: Program,
    F: FnOnce(C, Kit) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    let shutdown = Shutdown::new();
    // Handlers are installed now, before anything slow, so an early SIGTERM
    // is not the default "die at once".
    let signal = shutdown.signal();
    let hangups = Hangups::new();
    listen_for_hangups(&name, &hangups);
    let drain_timeout = config.drain_timeout();
    let mut builder = Kit::builder()
        .shutdown(shutdown.clone())
        .drain_timeout(drain_timeout)
        .hangups(hangups);
    if let Some(addr) = config.admin_addr() {
        builder = builder.admin_addr(addr);
    }
    if let Some(prefix) = config.metrics_prefix() {
        match MetricsRegistry::new(&prefix) {
            Ok(metrics) => builder = builder.metrics(metrics),
            Err(e) => {
                tracing::error!(error = %e, "invalid metric prefix");
                return Exit::Failure;
            }
        }
    }
    let kit = match builder.start().await {
        Ok(kit) => kit,
        Err(e) => {
            tracing::error!(error = %chain(&e), "cannot start the admin server");
            return Exit::Failure;
        }
    };
    let program = main(config, kit);
    let mut program = tokio::spawn(async move { program.await.map_err(Into::into) });
    let mut signal_failed = false;
    let returned = tokio::select! {
        joined = &mut program => Some(joined),
        reason = signal => {
            match reason {
                Ok(reason) => tracing::info!(signal = %reason, "stopping"),
                Err(e) => {
                    // Without handlers the program could not be stopped
                    // gracefully: stop now and report a failure.
                    tracing::error!(error = %chain(&e), "cannot listen for signals; stopping");
                    shutdown.trigger();
                    signal_failed = true;
                }
            }
            None
        }
    };
    let deadline = Instant::now() + drain_timeout;
    let mut exit = match returned {
        Some(joined) => outcome(&name, joined),
        None => match tokio::time::timeout_at(deadline, &mut program).await {
            Ok(joined) => outcome(&name, joined),
            Err(_) => {
                program.abort();
                tracing::error!(
                    timeout_ms = drain_timeout.as_millis() as u64,
                    "the program did not stop within the drain bound"
                );
                Exit::Failure
            }
        },
    };
    let report = shutdown
        .drain(deadline.saturating_duration_since(Instant::now()))
        .await;
    if (signal_failed || !report.is_clean()) && exit == Exit::Success {
        exit = Exit::Failure;
    }
    tracing::info!(
        exit = exit.code(),
        abandoned = report.abandoned,
        "{name} stopped"
    );
    exit
}

fn outcome(name: &str, joined: Result<Result<(), BoxError>, tokio::task::JoinError>) -> Exit {
    match joined {
        Ok(Ok(())) => Exit::Success,
        Ok(Err(e)) => {
            if let Some(config) = find_config_error(&*e) {
                tracing::error!(error = %chain(&*e), "invalid configuration");
                eprintln!("{name}: {config}");
                Exit::Config
            } else {
                tracing::error!(error = %chain(&*e), "failed");
                Exit::Failure
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "the program panicked or was cancelled");
            Exit::Failure
        }
    }
}

/// The first [`ConfigError`] in `error`'s source chain (itself included).
pub(crate) fn find_config_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ConfigError> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(config) = e.downcast_ref::<ConfigError>() {
            return Some(config);
        }
        next = e.source();
    }
    None
}

/// `error: source: source...` on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    #[command(name = "tiny-prog", version)]
    struct Tiny {
        /// Workers.
        #[arg(long, env = "KEEL_RUN_TEST_WORKERS", default_value_t = 2)]
        workers: u32,
        #[command(flatten)]
        kit: KitArgs,
    }

    impl Program for Tiny {
        fn kit_args(&self) -> &KitArgs {
            &self.kit
        }
        fn validate(&self) -> Result<(), ConfigError> {
            if self.workers == 0 {
                return Err(ConfigError::new(
                    "KEEL_RUN_TEST_WORKERS",
                    "must be at least 1",
                ));
            }
            Ok(())
        }
        fn check(&self) -> Result<(), ConfigError> {
            Err(ConfigError::new("KEEL_RUN_TEST_WORKERS", "checked"))
        }
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("tiny-prog")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn never(_: Tiny, _: Kit) -> std::future::Ready<Result<(), BoxError>> {
        unreachable!("the program must not start")
    }

    #[test]
    fn exit_codes_are_the_documented_ones() {
        assert_eq!(Exit::Success.code(), 0);
        assert_eq!(Exit::Failure.code(), 1);
        assert_eq!(Exit::Config.code(), 64);
    }

    #[test]
    fn configuration_errors_exit_64_before_the_program_starts() {
        let run = |list: &[&str]| run_with_args::<Tiny, _, _, _, _>(args(list), never);
        assert_eq!(run(&["--workers", "0"]), Exit::Config);
        assert_eq!(run(&["--workers", "many"]), Exit::Config);
        let err = parse::<Tiny, _>(args(&["--workers", "many"])).err();
        assert_eq!(err, Some(Exit::Config));
        assert_eq!(run(&["--log-filter", "keel=loud"]), Exit::Config);
        assert_eq!(run(&["--log-format", "xml"]), Exit::Config);
        assert_eq!(run(&["--no-such-flag"]), Exit::Config);
        // check() runs only with --check-config, and its failure is 64.
        assert_eq!(run(&["--check-config"]), Exit::Config);
        assert_eq!(run(&["--help"]), Exit::Success);
        assert_eq!(run(&["--version"]), Exit::Success);
    }

    #[test]
    fn validation_errors_are_typed() {
        let tiny = Tiny::try_parse_from(args(&["--workers", "0"])).unwrap();
        assert_eq!(
            validate(&tiny).unwrap_err().field(),
            "KEEL_RUN_TEST_WORKERS"
        );
        let tiny = Tiny::try_parse_from(args(&["--log-filter", "x=y=z"])).unwrap();
        assert_eq!(validate(&tiny).unwrap_err().field(), "RUST_LOG");
        assert_eq!(tiny.metrics_prefix().as_deref(), Some("tiny_prog"));
        assert_eq!(tiny.admin_addr(), None);
        assert_eq!(tiny.drain_timeout(), DEFAULT_DRAIN_TIMEOUT);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start")]
    struct StartError(#[source] TelemetryError);

    #[test]
    fn config_errors_are_found_by_type_anywhere_in_the_chain() {
        let nested = StartError(TelemetryError::Config(ConfigError::new(
            "VMS_CONFIG",
            "bad",
        )));
        assert_eq!(find_config_error(&nested).unwrap().field(), "VMS_CONFIG");
        assert_eq!(
            chain(&nested),
            "cannot start: invalid configuration: invalid `VMS_CONFIG`: bad"
        );
        let other = StartError(TelemetryError::TracingAlreadyInitialized);
        assert!(find_config_error(&other).is_none());
        // A message that merely mentions a variable is not a ConfigError.
        let text: BoxError = "invalid `VMS_CONFIG`: looks like one".into();
        assert!(find_config_error(&*text).is_none());
        assert_eq!(outcome("p", Ok(Err(text))), Exit::Failure);
        assert_eq!(outcome("p", Ok(Err(Box::new(nested)))), Exit::Config);
        assert_eq!(outcome("p", Ok(Ok(()))), Exit::Success);
    }

    #[tokio::test]
    async fn late_admin_routes_are_served_next_to_the_built_in_ones() {
        let kit = Kit::builder()
            .admin_addr("127.0.0.1:0".parse().unwrap())
            .metrics(MetricsRegistry::new("late").unwrap())
            .start()
            .await
            .unwrap();
        let base = format!("http://{}", kit.admin_addr().unwrap());
        let client = reqwest::Client::new();
        let get = |path: &str| client.get(format!("{base}{path}")).send();
        assert_eq!(get("/status").await.unwrap().status(), 404);
        kit.set_admin_routes(
            Router::new().route("/status", axum::routing::get(|| async { "all good" })),
        );
        let response = get("/status").await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "all good");
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        assert!(
            get("/metrics")
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .ends_with("# EOF\n")
        );
        kit.shutdown().trigger();
        assert!(
            kit.shutdown()
                .drain(Duration::from_secs(5))
                .await
                .is_clean()
        );
        assert!(format!("{kit:?}").contains("admin_addr"));
    }

    #[tokio::test]
    async fn the_admin_router_can_be_merged_into_a_program_port() {
        let kit = Kit::builder()
            .metrics(MetricsRegistry::new("own_port").unwrap())
            .start()
            .await
            .unwrap();
        assert_eq!(kit.admin_addr(), None);
        let app = Router::new()
            .route("/webhook", axum::routing::post(|| async { "ok" }))
            .merge(kit.admin_router());
        let status = |path: &'static str| {
            let app = app.clone();
            async move {
                app.oneshot(
                    axum::http::Request::get(path)
                        .body(axum::body::Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap()
                .status()
            }
        };
        assert_eq!(status("/metrics").await, 200);
        assert_eq!(status("/readyz").await, 200);
        kit.shutdown().trigger();
        assert_eq!(status("/readyz").await, 503);
        assert_eq!(status("/healthz").await, 200);
    }
}

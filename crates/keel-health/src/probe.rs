use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;

use futures::future::BoxFuture;
use keel_core::BoxError;

/// What one probe run returns: `Ok(())` when the target answered as healthy.
pub type ProbeResult = Result<(), ProbeFailure>;

/// A health check for one target: connect to a port, ask an HTTP endpoint,
/// look at a process...
///
/// Implement it with `async fn`:
///
/// ```
/// use keel_health::{FailureKind, Probe, ProbeFailure};
///
/// struct DiskNotFull { path: std::path::PathBuf }
///
/// impl Probe for DiskNotFull {
///     async fn check(&self) -> Result<(), ProbeFailure> {
///         if self.path.exists() {
///             Ok(())
///         } else {
///             Err(ProbeFailure::new(FailureKind::Missing, "no data directory"))
///         }
///     }
///     fn name(&self) -> &str { "disk" }
/// }
/// ```
///
/// The checker runs one check of a target at a time, wraps it in the
/// target's timeout (a check that overruns is a [`FailureKind::Timeout`]
/// failure and its future is dropped) and catches a panic as a
/// [`FailureKind::Panic`] failure, so a probe need not guard against either.
/// For closures, see [`probe_fn`]; to run several probes in order, see
/// [`all_of`].
pub trait Probe: Send + Sync + 'static {
    /// Runs the check once.
    fn check(&self) -> impl Future<Output = ProbeResult> + Send;

    /// A short human-readable name, reported with failures (by [`all_of`])
    /// and in status snapshots.
    fn name(&self) -> &str;

    /// Erases the probe's type, to mix probes in one collection. Costs one
    /// allocation per check for the boxed future.
    fn boxed(self) -> BoxProbe
    where
        Self: Sized,
    {
        BoxProbe(Arc::new(self))
    }
}

impl<P: Probe> Probe for Arc<P> {
    fn check(&self) -> impl Future<Output = ProbeResult> + Send {
        (**self).check()
    }

    fn name(&self) -> &str {
        (**self).name()
    }
}

trait ErasedProbe: Send + Sync + 'static {
    fn check_boxed(&self) -> BoxFuture<'_, ProbeResult>;
    fn erased_name(&self) -> &str;
}

impl<P: Probe> ErasedProbe for P {
    fn check_boxed(&self) -> BoxFuture<'_, ProbeResult> {
        Box::pin(self.check())
    }

    fn erased_name(&self) -> &str {
        self.name()
    }
}

/// A type-erased, cheaply cloneable [`Probe`]. Made by [`Probe::boxed`].
#[derive(Clone)]
pub struct BoxProbe(Arc<dyn ErasedProbe>);

impl Probe for BoxProbe {
    fn check(&self) -> impl Future<Output = ProbeResult> + Send {
        self.0.check_boxed()
    }

    fn name(&self) -> &str {
        self.0.erased_name()
    }

    fn boxed(self) -> BoxProbe {
        self
    }
}

impl fmt::Debug for BoxProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BoxProbe").field(&self.name()).finish()
    }
}

/// The kind of a probe failure: a small, fixed set, so it can be a metric
/// label (`reason`) without ever exporting a raw error string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum FailureKind {
    /// The check did not finish within the target's timeout.
    Timeout,
    /// The connection was refused (nothing listens on the port or socket).
    Refused,
    /// Any other failure to connect (unreachable, reset during connect...).
    Connect,
    /// The host name did not resolve.
    Resolve,
    /// The HTTP answer's status was not below the healthy limit.
    HttpStatus,
    /// The peer did not speak HTTP/1 properly or closed without answering.
    Protocol,
    /// Another I/O error.
    Io,
    /// The process does not exist, is a zombie, or its pid was reused.
    NotRunning,
    /// A file or socket path does not exist.
    Missing,
    /// A path exists but is not a socket.
    NotSocket,
    /// A custom probe failed.
    Custom,
    /// The probe panicked (caught by the checker).
    Panic,
}

impl FailureKind {
    /// Every kind, in declaration order.
    pub const ALL: [FailureKind; 12] = [
        FailureKind::Timeout,
        FailureKind::Refused,
        FailureKind::Connect,
        FailureKind::Resolve,
        FailureKind::HttpStatus,
        FailureKind::Protocol,
        FailureKind::Io,
        FailureKind::NotRunning,
        FailureKind::Missing,
        FailureKind::NotSocket,
        FailureKind::Custom,
        FailureKind::Panic,
    ];

    /// The `snake_case` name used as the metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Refused => "refused",
            FailureKind::Connect => "connect",
            FailureKind::Resolve => "resolve",
            FailureKind::HttpStatus => "http_status",
            FailureKind::Protocol => "protocol",
            FailureKind::Io => "io",
            FailureKind::NotRunning => "not_running",
            FailureKind::Missing => "missing",
            FailureKind::NotSocket => "not_socket",
            FailureKind::Custom => "custom",
            FailureKind::Panic => "panic",
        }
    }

    /// The kind an I/O error maps to.
    pub fn of_io(error: &io::Error) -> FailureKind {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => FailureKind::Refused,
            io::ErrorKind::NotFound => FailureKind::Missing,
            io::ErrorKind::TimedOut => FailureKind::Timeout,
            _ => FailureKind::Io,
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a check failed: a bounded [`FailureKind`], a human-readable message,
/// and (inside [`all_of`]) the name of the probe that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ProbeFailure {
    kind: FailureKind,
    message: Cow<'static, str>,
    probe: Option<Arc<str>>,
}

impl ProbeFailure {
    /// A failure of the given kind.
    pub fn new(kind: FailureKind, message: impl Into<Cow<'static, str>>) -> Self {
        ProbeFailure {
            kind,
            message: message.into(),
            probe: None,
        }
    }

    /// A [`FailureKind::Custom`] failure.
    pub fn custom(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(FailureKind::Custom, message)
    }

    /// An I/O failure, its kind taken from the error ([`FailureKind::of_io`]).
    pub fn io(context: &str, error: &io::Error) -> Self {
        Self::new(FailureKind::of_io(error), format!("{context}: {error}"))
    }

    /// The kind, for metrics and matching.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The message, without the probe name.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The name of the probe that failed inside a composite ([`all_of`]);
    /// `None` for a failure of a single probe.
    pub fn probe(&self) -> Option<&str> {
        self.probe.as_deref()
    }

    /// Sets which probe failed.
    pub fn with_probe(mut self, probe: impl Into<Arc<str>>) -> Self {
        self.probe = Some(probe.into());
        self
    }
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.probe {
            Some(probe) => write!(f, "{probe}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ProbeFailure {}

impl From<io::Error> for ProbeFailure {
    fn from(error: io::Error) -> Self {
        Self::new(FailureKind::of_io(&error), error.to_string())
    }
}

impl From<String> for ProbeFailure {
    fn from(message: String) -> Self {
        Self::custom(message)
    }
}

impl From<&'static str> for ProbeFailure {
    fn from(message: &'static str) -> Self {
        Self::custom(message)
    }
}

impl From<BoxError> for ProbeFailure {
    fn from(error: BoxError) -> Self {
        match error.downcast::<ProbeFailure>() {
            Ok(failure) => *failure,
            Err(error) => match error.downcast::<io::Error>() {
                Ok(io) => Self::from(*io),
                Err(other) => Self::custom(other.to_string()),
            },
        }
    }
}

impl From<std::convert::Infallible> for ProbeFailure {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// A probe made from an async closure. See [`probe_fn`].
#[derive(Clone)]
pub struct FnProbe<F> {
    f: F,
    name: Cow<'static, str>,
}

/// A probe from an async closure returning `Result<(), E>` where `E` converts
/// into a [`ProbeFailure`] (a `ProbeFailure`, an `io::Error`, a
/// [`BoxError`], a `String` or `&'static str`). Its name is `custom` until
/// [`FnProbe::named`].
///
/// ```
/// use keel_health::{probe_fn, Probe};
///
/// let probe = probe_fn(|| async {
///     let answer = 42; // ask something
///     if answer == 42 { Ok(()) } else { Err(format!("answer was {answer}")) }
/// })
/// .named("oracle");
/// assert_eq!(probe.name(), "oracle");
/// ```
pub fn probe_fn<F, Fut, E>(f: F) -> FnProbe<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Into<ProbeFailure>,
{
    FnProbe {
        f,
        name: Cow::Borrowed("custom"),
    }
}

impl<F> FnProbe<F> {
    /// Sets the probe's name.
    pub fn named(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }
}

impl<F, Fut, E> Probe for FnProbe<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Into<ProbeFailure>,
{
    async fn check(&self) -> ProbeResult {
        (self.f)().await.map_err(Into::into)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl<F> fmt::Debug for FnProbe<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnProbe").field("name", &self.name).finish()
    }
}

/// Probes run in order; the first failure ends the check. See [`all_of`].
#[derive(Clone, Debug)]
pub struct AllOf {
    probes: Vec<BoxProbe>,
    name: String,
}

/// Composes probes: they run one after another in the given order and the
/// first failure is reported, tagged with the failing probe's name
/// ([`ProbeFailure::probe`]); later probes do not run. An empty list always
/// passes. The target's timeout covers the whole sequence.
///
/// ```
/// use keel_health::{all_of, probe_fn, FailureKind, Probe, ProbeFailure};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let vm = all_of([
///     probe_fn(|| async { Ok::<_, ProbeFailure>(()) }).named("process").boxed(),
///     probe_fn(|| async { Err("socket gone") }).named("socket").boxed(),
///     probe_fn(|| async { Ok::<_, ProbeFailure>(()) }).named("api").boxed(),
/// ]);
/// let failure = vm.check().await.unwrap_err();
/// assert_eq!(failure.probe(), Some("socket"));
/// assert_eq!(failure.kind(), FailureKind::Custom);
/// assert_eq!(failure.to_string(), "socket: socket gone");
/// # });
/// ```
pub fn all_of(probes: impl IntoIterator<Item = BoxProbe>) -> AllOf {
    let probes: Vec<BoxProbe> = probes.into_iter().collect();
    let names: Vec<&str> = probes.iter().map(|p| p.name()).collect();
    let name = format!("all_of[{}]", names.join(", "));
    AllOf { probes, name }
}

impl AllOf {
    /// The composed probes, in order.
    pub fn probes(&self) -> &[BoxProbe] {
        &self.probes
    }
}

impl Probe for AllOf {
    async fn check(&self) -> ProbeResult {
        for probe in &self.probes {
            if let Err(failure) = probe.check().await {
                // A nested composite already named the innermost probe.
                return Err(if failure.probe.is_some() {
                    failure
                } else {
                    failure.with_probe(probe.name())
                });
            }
        }
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Guards object safety of the erased trait.
fn _obj_safe(_: &dyn ErasedProbe) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn all_of_stops_at_the_first_failure_and_names_it() {
        let later = Arc::new(AtomicUsize::new(0));
        let counter = later.clone();
        let probe = all_of([
            probe_fn(|| async { Ok::<_, ProbeFailure>(()) })
                .named("first")
                .boxed(),
            probe_fn(|| async {
                Err(ProbeFailure::new(
                    FailureKind::Refused,
                    "connection refused",
                ))
            })
            .named("second")
            .boxed(),
            probe_fn(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ProbeFailure>(())
                }
            })
            .named("third")
            .boxed(),
        ]);
        assert_eq!(probe.name(), "all_of[first, second, third]");
        let failure = probe.check().await.unwrap_err();
        assert_eq!(failure.kind(), FailureKind::Refused);
        assert_eq!(failure.probe(), Some("second"));
        assert_eq!(failure.message(), "connection refused");
        assert_eq!(
            later.load(Ordering::SeqCst),
            0,
            "probes after a failure never run"
        );
    }

    #[tokio::test]
    async fn all_of_runs_every_probe_in_order_when_all_pass() {
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let step = |n: usize| {
            let order = order.clone();
            probe_fn(move || {
                let order = order.clone();
                async move {
                    order.lock().push(n);
                    Ok::<_, ProbeFailure>(())
                }
            })
            .boxed()
        };
        let probe = all_of([step(1), step(2), step(3)]);
        probe.check().await.unwrap();
        assert_eq!(*order.lock(), vec![1, 2, 3]);
        assert!(all_of([]).check().await.is_ok());
    }

    #[tokio::test]
    async fn nested_composites_keep_the_innermost_name() {
        let inner = all_of([probe_fn(|| async { Err("down") }).named("leaf").boxed()]);
        let outer = all_of([inner.boxed()]);
        assert_eq!(outer.check().await.unwrap_err().probe(), Some("leaf"));
    }

    #[test]
    fn conversions_pick_bounded_kinds() {
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "nope");
        assert_eq!(ProbeFailure::from(refused).kind(), FailureKind::Refused);
        let missing: BoxError = Box::new(io::Error::new(io::ErrorKind::NotFound, "gone"));
        assert_eq!(ProbeFailure::from(missing).kind(), FailureKind::Missing);
        let inner: BoxError = Box::new(ProbeFailure::new(FailureKind::HttpStatus, "503"));
        assert_eq!(ProbeFailure::from(inner).kind(), FailureKind::HttpStatus);
        let other: BoxError = "weird".into();
        let failure = ProbeFailure::from(other);
        assert_eq!(failure.kind(), FailureKind::Custom);
        assert_eq!(failure.to_string(), "weird");
        let labels: std::collections::HashSet<_> =
            FailureKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), FailureKind::ALL.len());
    }

    #[tokio::test]
    async fn arc_and_box_probes_delegate() {
        let probe = Arc::new(probe_fn(|| async { Err("x") }).named("shared"));
        assert_eq!(Probe::name(&probe), "shared");
        assert!(probe.check().await.is_err());
        let boxed = probe.boxed();
        assert_eq!(boxed.name(), "shared");
        assert_eq!(format!("{boxed:?}"), "BoxProbe(\"shared\")");
        let again = boxed.clone().boxed();
        assert_eq!(again.name(), "shared");
    }
}

//! The [`Sink`] trait: where messages go (Telegram, Slack, PagerDuty, Rootly,
//! a webhook, a test double).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::error::SinkError;
use crate::notification::Message;

/// A destination for messages.
///
/// A sink renders a [`Message`] in its own format and sends it once: it does
/// not retry, sleep or queue. The notifier around it owns retries (through
/// `keel-retry`), the rate limits the sink declares, backoff while the sink is
/// down and the requeue of long retry-afters. The error says what kind of
/// failure it was ([`SinkError`]), which decides what the notifier does next.
///
/// Write `send` as an `async fn`; its future must be `Send`.
///
/// ```
/// use keel_notify::{Message, RateLimit, Sink, SinkError};
///
/// struct Stdout;
///
/// impl Sink for Stdout {
///     fn name(&self) -> &str {
///         "stdout"
///     }
///
///     async fn send(&self, message: &Message) -> Result<(), SinkError> {
///         let _ = message.to_plain_text(); // a real sink would write it somewhere
///         Ok(())
///     }
///
///     fn rate_limits(&self) -> Vec<RateLimit> {
///         vec![RateLimit::per_second("stdout", 10)]
///     }
/// }
/// ```
pub trait Sink: Send + Sync + 'static {
    /// The sink's name: a metric label, the key that routes notifications
    /// ([`Notification::to`](crate::Notification::to)) and the spool's record
    /// of where a queued message was going. Must be unique per notifier and
    /// stable across restarts; keep the set of names small.
    fn name(&self) -> &str;

    /// Sends one message, once.
    fn send(&self, message: &Message) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// The rate limits every send to this sink must respect (all of them at
    /// once). Limits with the same key, count and period are shared by every
    /// sink of one notifier that declares them: two Telegram sinks posting to
    /// two topics of one group share that group's limits. Called once, when
    /// the notifier is built. No limits by default.
    fn rate_limits(&self) -> Vec<RateLimit> {
        Vec::new()
    }
}

/// "At most `max` sends in any window of `per`", shared by every sink that
/// declares the same `key`, `max` and `per`.
///
/// The notifier enforces it exactly (a sliding log of the last `max` send
/// times, following tokio's clock), so a burst never exceeds it: Telegram's
/// "20 messages per minute in a group" means 20 in any 60 s, not 20 now and
/// one every 3 s after.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub(crate) key: String,
    pub(crate) max: u32,
    pub(crate) per: Duration,
}

impl RateLimit {
    /// At most `max` sends per `per` under `key`. A zero `max` or `per` is
    /// rejected when the notifier is built.
    pub fn new(key: impl Into<String>, max: u32, per: Duration) -> Self {
        RateLimit {
            key: key.into(),
            max,
            per,
        }
    }

    /// At most `max` sends per second under `key`.
    pub fn per_second(key: impl Into<String>, max: u32) -> Self {
        Self::new(key, max, Duration::from_secs(1))
    }

    /// At most `max` sends per minute under `key`.
    pub fn per_minute(key: impl Into<String>, max: u32) -> Self {
        Self::new(key, max, Duration::from_secs(60))
    }

    /// The sharing key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The most sends in one window.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The window length.
    pub fn per(&self) -> Duration {
        self.per
    }
}

impl<S: Sink> Sink for std::sync::Arc<S> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn send(&self, message: &Message) -> impl Future<Output = Result<(), SinkError>> + Send {
        (**self).send(message)
    }

    fn rate_limits(&self) -> Vec<RateLimit> {
        (**self).rate_limits()
    }
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe twin of [`Sink`], so one notifier holds sinks of
/// different types.
pub(crate) trait DynSink: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), SinkError>>;
    fn rate_limits(&self) -> Vec<RateLimit>;
}

impl<S: Sink> DynSink for S {
    fn name(&self) -> &str {
        Sink::name(self)
    }

    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(Sink::send(self, message))
    }

    fn rate_limits(&self) -> Vec<RateLimit> {
        Sink::rate_limits(self)
    }
}

#[allow(dead_code)]
fn _object_safe(_: Box<dyn DynSink>) {}

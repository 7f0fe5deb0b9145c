//! The [`Sink`] trait: where messages go (Telegram, Slack, PagerDuty, Rootly,
//! a webhook, a test double).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::digest::Digest;
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

    /// Sends one message, once, taking `pacer.next_request()` before every
    /// request after the first when the message needs several (a long
    /// Telegram message split into parts), so each request counts against
    /// the sink's [`rate_limits`](Self::rate_limits) like a message of its
    /// own. The notifier calls this method; the default ignores the pacer
    /// and calls [`send`](Self::send), which is right for a sink that sends
    /// one request per message. A wrapper sink must forward it.
    fn send_paced(
        &self,
        message: &Message,
        pacer: &Pacer<'_>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = pacer;
        self.send(message)
    }

    /// Whether this sink combines waiting messages into one
    /// ([`send_digest`](Self::send_digest)). A digesting sink gets at most one
    /// send in flight at a time (so a later state of a subject never
    /// overtakes an earlier one), and when more than one message waits for
    /// it, the next send carries as many as [`digest_fit`](Self::digest_fit)
    /// admits. `false` by default: one message per send, as many in flight
    /// as there are workers.
    fn supports_digest(&self) -> bool {
        false
    }

    /// How many of `entries` (in order, at least two) fit in one digest
    /// message within this sink's size limit. The notifier sends that many
    /// as one [`Digest`] and keeps the rest queued for the next send; a
    /// result below 2 sends the first entry alone (with
    /// [`send_paced`](Self::send_paced), its own truncation or split rules).
    /// The default, 1, never digests.
    fn digest_fit(&self, entries: &[Message]) -> usize {
        let _ = entries;
        1
    }

    /// Sends one digest (at least two entries, as admitted by
    /// [`digest_fit`](Self::digest_fit)) as one message, once. The default
    /// sends each entry with [`send_paced`](Self::send_paced), taking a
    /// rate-limit slot before each after the first: right only for a sink
    /// that never admits digests.
    fn send_digest(
        &self,
        digest: &Digest,
        pacer: &Pacer<'_>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        async move {
            for (i, m) in digest.entries().iter().enumerate() {
                if i > 0 {
                    pacer.next_request().await;
                }
                self.send_paced(m, pacer).await?;
            }
            Ok(())
        }
    }

    /// The rate limits every send to this sink must respect (all of them at
    /// once). Limits with the same key, count and period are shared by every
    /// sink of one notifier that declares them: two Telegram sinks posting to
    /// two topics of one group share that group's limits. Called once, when
    /// the notifier is built. No limits by default.
    fn rate_limits(&self) -> Vec<RateLimit> {
        Vec::new()
    }
}

/// Where a [`Pacer`] takes its slots from (the notifier, for one sink).
pub(crate) trait PaceSource: Send + Sync {
    /// Waits until one more request conforms, and counts it.
    fn next_request(&self) -> BoxFuture<'_, ()>;
}

/// Rate-limit slots for the extra requests of one message: see
/// [`Sink::send_paced`]. The notifier hands one to each send; outside a
/// notifier, [`Pacer::none`] paces nothing.
pub struct Pacer<'a> {
    source: Option<&'a dyn PaceSource>,
}

impl<'a> Pacer<'a> {
    /// A pacer that never waits (for calling a sink directly).
    pub fn none() -> Self {
        Pacer { source: None }
    }

    pub(crate) fn new(source: &'a dyn PaceSource) -> Self {
        Pacer {
            source: Some(source),
        }
    }

    /// Waits until one more request to this sink conforms to its rate
    /// limits and to any pause it asked for (a retry-after), then counts the
    /// request against the limits. Returns at once for [`Pacer::none`].
    pub async fn next_request(&self) {
        if let Some(source) = self.source {
            source.next_request().await;
        }
    }
}

impl std::fmt::Debug for Pacer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("paced", &self.source.is_some())
            .finish()
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

    fn send_paced(
        &self,
        message: &Message,
        pacer: &Pacer<'_>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        (**self).send_paced(message, pacer)
    }

    fn supports_digest(&self) -> bool {
        (**self).supports_digest()
    }

    fn digest_fit(&self, entries: &[Message]) -> usize {
        (**self).digest_fit(entries)
    }

    fn send_digest(
        &self,
        digest: &Digest,
        pacer: &Pacer<'_>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        (**self).send_digest(digest, pacer)
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
    fn send_paced<'a>(
        &'a self,
        message: &'a Message,
        pacer: &'a Pacer<'_>,
    ) -> BoxFuture<'a, Result<(), SinkError>>;
    fn supports_digest(&self) -> bool;
    fn digest_fit(&self, entries: &[Message]) -> usize;
    fn send_digest<'a>(
        &'a self,
        digest: &'a Digest,
        pacer: &'a Pacer<'_>,
    ) -> BoxFuture<'a, Result<(), SinkError>>;
    fn rate_limits(&self) -> Vec<RateLimit>;
}

impl<S: Sink> DynSink for S {
    fn name(&self) -> &str {
        Sink::name(self)
    }

    fn send_paced<'a>(
        &'a self,
        message: &'a Message,
        pacer: &'a Pacer<'_>,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(Sink::send_paced(self, message, pacer))
    }

    fn supports_digest(&self) -> bool {
        Sink::supports_digest(self)
    }

    fn digest_fit(&self, entries: &[Message]) -> usize {
        Sink::digest_fit(self, entries)
    }

    fn send_digest<'a>(
        &'a self,
        digest: &'a Digest,
        pacer: &'a Pacer<'_>,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(Sink::send_digest(self, digest, pacer))
    }

    fn rate_limits(&self) -> Vec<RateLimit> {
        Sink::rate_limits(self)
    }
}

#[allow(dead_code)]
fn _object_safe(_: Box<dyn DynSink>) {}

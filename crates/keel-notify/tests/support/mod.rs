//! Shared helpers for the keel-notify integration tests: a scriptable
//! in-memory sink that records what it receives and when.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use keel_notify::digest::{fit_by_cost, plain_line};
use keel_notify::{Digest, Message, Pacer, Priority, RateLimit, Sink, SinkError};
use parking_lot::Mutex;
use tokio::time::Instant;

/// One message the sink accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Duration,
    pub id: u64,
    pub key: String,
    pub priority: Priority,
    pub title: String,
    pub display_title: String,
    pub body: String,
    pub count: u32,
    /// For a digest: each entry's key and display title, in order (empty
    /// for a single message).
    pub entries: Vec<(String, String)>,
    /// The text as rendered (plain text; a digest's header and lines).
    pub text: String,
    /// Each event's observation time, relative to the sink's origin.
    pub observed: Vec<Duration>,
}

/// What the sink answers to one attempt.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Ok,
    Fail,
    Overloaded(Option<Duration>),
    Reject,
}

#[derive(Debug)]
struct Inner {
    origin: Instant,
    received: Vec<Received>,
    /// (time since origin, message id, answer given) for every attempt.
    attempts: Vec<(Duration, u64)>,
    script: VecDeque<Answer>,
    down: bool,
    delay: Duration,
    concurrent: usize,
    max_concurrent: usize,
    /// Digests on, within this many characters of plain text.
    digest_limit: Option<usize>,
}

/// A sink that records what it receives (relative to its creation time,
/// which follows tokio's paused clock) and answers from a script.
#[derive(Debug, Clone)]
pub struct MemorySink {
    name: String,
    limits: Vec<RateLimit>,
    inner: Arc<Mutex<Inner>>,
}

impl MemorySink {
    pub fn new(name: &str) -> Self {
        MemorySink {
            name: name.to_owned(),
            limits: Vec::new(),
            inner: Arc::new(Mutex::new(Inner {
                origin: Instant::now(),
                received: Vec::new(),
                attempts: Vec::new(),
                script: VecDeque::new(),
                down: false,
                delay: Duration::ZERO,
                concurrent: 0,
                max_concurrent: 0,
                digest_limit: None,
            })),
        }
    }

    /// Combines waiting messages into digests of at most `chars`
    /// characters of plain text (header and lines).
    pub fn with_digests(self, chars: usize) -> Self {
        self.inner.lock().digest_limit = Some(chars);
        self
    }

    pub fn with_limits(mut self, limits: Vec<RateLimit>) -> Self {
        self.limits = limits;
        self
    }

    /// The next attempts get these answers, in order (then `Ok`, or `Fail`
    /// while down).
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.inner.lock().script.extend(answers);
    }

    /// While down, every attempt without a scripted answer fails
    /// (retryable).
    pub fn set_down(&self, down: bool) {
        self.inner.lock().down = down;
    }

    /// Each send takes this long.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.lock().delay = delay;
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().received.clone()
    }

    pub fn keys(&self) -> Vec<String> {
        self.received().into_iter().map(|r| r.key).collect()
    }

    pub fn times(&self) -> Vec<Duration> {
        self.received().into_iter().map(|r| r.at).collect()
    }

    pub fn attempts(&self) -> Vec<(Duration, u64)> {
        self.inner.lock().attempts.clone()
    }

    pub fn max_concurrent(&self) -> usize {
        self.inner.lock().max_concurrent
    }
}

impl MemorySink {
    async fn attempt(&self, mut received: Received) -> Result<(), SinkError> {
        let (answer, delay) = {
            let mut inner = self.inner.lock();
            let at = inner.origin.elapsed();
            inner.attempts.push((at, received.id));
            inner.concurrent += 1;
            inner.max_concurrent = inner.max_concurrent.max(inner.concurrent);
            let answer = inner.script.pop_front().unwrap_or(if inner.down {
                Answer::Fail
            } else {
                Answer::Ok
            });
            (answer, inner.delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut inner = self.inner.lock();
        inner.concurrent -= 1;
        match answer {
            Answer::Ok => {
                received.at = inner.origin.elapsed();
                inner.received.push(received);
                Ok(())
            }
            Answer::Fail => Err(SinkError::retryable("scripted failure")),
            Answer::Overloaded(ra) => Err(SinkError::overloaded(ra)),
            Answer::Reject => Err(SinkError::permanent(Some(400), "scripted rejection")),
        }
    }
}

impl Sink for MemorySink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &Message) -> Result<(), SinkError> {
        let origin = self.inner.lock().origin;
        let received = Received {
            at: Duration::ZERO,
            id: message.id(),
            key: message.key().to_owned(),
            priority: message.priority(),
            title: message.title().to_owned(),
            display_title: message.display_title(),
            body: message.body().to_owned(),
            count: message.count(),
            entries: Vec::new(),
            text: message.to_plain_text(),
            observed: message
                .observed_at()
                .map(|t| t.saturating_duration_since(origin))
                .into_iter()
                .collect(),
        };
        self.attempt(received).await
    }

    fn supports_digest(&self) -> bool {
        self.inner.lock().digest_limit.is_some()
    }

    fn digest_fit(&self, entries: &[Message]) -> usize {
        let Some(limit) = self.inner.lock().digest_limit else {
            return 1;
        };
        let header = Digest::new(0, entries.to_vec()).header().chars().count();
        fit_by_cost(
            limit,
            header,
            entries.iter().map(|m| plain_line(m).chars().count() + 1),
        )
    }

    async fn send_digest(&self, digest: &Digest, _pacer: &Pacer<'_>) -> Result<(), SinkError> {
        let origin = self.inner.lock().origin;
        let received = Received {
            at: Duration::ZERO,
            id: digest.id(),
            key: "digest".to_owned(),
            priority: digest.priority(),
            title: digest.header(),
            display_title: digest.header(),
            body: String::new(),
            count: digest.events(),
            entries: digest
                .entries()
                .iter()
                .map(|m| (m.key().to_owned(), m.display_title()))
                .collect(),
            text: digest.to_plain_text(),
            observed: digest
                .entries()
                .iter()
                .filter_map(Message::observed_at)
                .map(|t| t.saturating_duration_since(origin))
                .collect(),
        };
        self.attempt(received).await
    }

    fn rate_limits(&self) -> Vec<RateLimit> {
        self.limits.clone()
    }
}

pub const S: Duration = Duration::from_secs(1);

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

//! Shared helpers for the keel-notify integration tests: a scriptable
//! in-memory sink that records what it receives and when.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use keel_notify::{Message, Priority, RateLimit, Sink, SinkError};
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
            })),
        }
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

impl Sink for MemorySink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &Message) -> Result<(), SinkError> {
        let (answer, delay) = {
            let mut inner = self.inner.lock();
            let at = inner.origin.elapsed();
            inner.attempts.push((at, message.id()));
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
                let at = inner.origin.elapsed();
                inner.received.push(Received {
                    at,
                    id: message.id(),
                    key: message.key().to_owned(),
                    priority: message.priority(),
                    title: message.title().to_owned(),
                    display_title: message.display_title(),
                    body: message.body().to_owned(),
                    count: message.count(),
                });
                Ok(())
            }
            Answer::Fail => Err(SinkError::retryable("scripted failure")),
            Answer::Overloaded(ra) => Err(SinkError::overloaded(ra)),
            Answer::Reject => Err(SinkError::permanent(Some(400), "scripted rejection")),
        }
    }

    fn rate_limits(&self) -> Vec<RateLimit> {
        self.limits.clone()
    }
}

pub const S: Duration = Duration::from_secs(1);

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

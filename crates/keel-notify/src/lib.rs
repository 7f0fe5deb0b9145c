//! Alert queues and senders: get an alert to people once, promptly, in the
//! right order, without flooding them and without losing it when the chat
//! service is down.
//!
//! Use it wherever a program raises alerts (a VM stopped, a webhook fired)
//! and hands them to a chat or paging service. A [`Notifier`] takes
//! [`Notification`]s synchronously and never blocks on a sink; sender workers
//! deliver them to every [`Sink`] (Telegram, Slack, PagerDuty Events v2,
//! Rootly and a generic webhook built in, each behind its feature; any other
//! by implementing the trait; sinks can be added and removed while running):
//!
//! * **Priorities**: critical first, then warning, then info; first in,
//!   first out within one priority.
//! * **Dedup window** (5 min by default) per dedup key; critical
//!   notifications always go out.
//! * **Debounce** per priority (warning 30 s, info 10 s): repeats of a key
//!   inside the window collapse into one message carrying the latest state
//!   and the count, shown as `"VM stuck (×4)"`.
//! * **Bounded queue** (1,000 deliveries): on overflow the oldest message of
//!   the lowest priority is dropped, counted and logged. Nothing else is
//!   ever dropped except a sink's permanent rejection (also counted and
//!   logged).
//! * **Rate limits** declared by each sink and enforced exactly (Telegram: 1
//!   message/s per chat, 20/min per group, 30/s per bot), following tokio's
//!   clock, so paused-time tests drive them.
//! * **Digests** ([`Digest`]): when messages for one destination wait behind
//!   its rate limit (or while it was down), the next send combines them into
//!   one message within the sink's size limit: a header with the count, one
//!   line per event, critical first; what does not fit goes in the next one.
//!   Notifications about one subject ([`Notification::subject`]) share a
//!   line with their latest state and count, and a later state of a subject
//!   never overtakes an earlier one. A digesting sink's limits are paced (a
//!   small burst, then even spacing), so a steady stream never waits for a
//!   whole window. With a free slot and one message waiting, it goes alone.
//! * **Observed → accepted**: each notification carries
//!   [`observed_at`](Notification::observed_at); the notifier records the
//!   histogram and tells [`NotifierBuilder::on_accepted`].
//! * **Retries** through `keel-retry`, honouring the sink's retry-after; a
//!   retry-after above the cap (60 s) pauses the sink and requeues the
//!   message instead of holding a worker, and is logged and counted as an
//!   escalation.
//! * **A circuit breaker per sink** (`keel-breaker`, named `notify:{sink}`,
//!   optionally in the program's [`BreakerRegistry`]): a failed round of
//!   attempts opens it, its messages wait in the queue, probes go one at a
//!   time with growing open times; [`Notifier::breakers`] shows and forces
//!   them like every other breaker.
//! * **Spool**: queued messages survive a restart (checksummed JSON lines,
//!   temporary file, `fsync`, rename, `fsync` of the directory: the
//!   durability is a stated choice, [`SpoolSync`]); [`Notifier::shutdown`]
//!   sends what the rate limits allow within its budget (as digests) and
//!   spools the rest, by default under the state directory
//!   ([`NotifierBuilder::state_dir`]). A damaged or cut-short spool never
//!   delivers a line that fails its CRC: such lines are logged at `error`
//!   and counted as dropped, and the rest loads.
//! * **Metrics** (feature `metrics`): queued, sent, deduplicated, debounced,
//!   dropped, retried by sink and priority, queue depth, latencies; see
//!   [`metrics`].
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use keel_notify::{Admitted, Message, Notification, Notifier, Priority, Sink, SinkError};
//!
//! /// A sink that keeps what it is given.
//! #[derive(Clone, Default)]
//! struct Inbox(Arc<Mutex<Vec<String>>>);
//!
//! impl Sink for Inbox {
//!     fn name(&self) -> &str {
//!         "inbox"
//!     }
//!     async fn send(&self, message: &Message) -> Result<(), SinkError> {
//!         self.0.lock().unwrap().push(message.display_title());
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let inbox = Inbox::default();
//! let notifier = Notifier::builder().sink(inbox.clone()).build().unwrap();
//!
//! // Warnings are debounced for 30 s: repeats collapse into one message.
//! let stuck = || Notification::warning("vm-7:STARTING", "VM vm-7 stuck").field("vm", "vm-7");
//! assert!(matches!(notifier.notify(stuck()).unwrap(), Admitted::Held { .. }));
//! assert_eq!(notifier.notify(stuck()).unwrap(), Admitted::Debounced { count: 2 });
//!
//! // Critical notifications go out at once, before anything else queued.
//! notifier.notify(Notification::critical("vm-3:STOPPED", "VM vm-3 stopped")).unwrap();
//!
//! tokio::time::sleep(Duration::from_secs(31)).await; // paused time: instant
//! // Within the dedup window a repeat is suppressed.
//! assert_eq!(notifier.notify(stuck()).unwrap(), Admitted::Deduplicated);
//!
//! let report = notifier.shutdown(Duration::from_secs(5)).await;
//! assert_eq!((report.spooled, report.dropped), (0, 0));
//! assert_eq!(*inbox.0.lock().unwrap(), ["VM vm-3 stopped", "VM vm-7 stuck (×2)"]);
//! # }
//! ```
//!
//! Features: `telegram` (on by default), `slack`, `pagerduty`, `rootly`,
//! `webhook` (one sender each), `metrics` (Prometheus).
//!
//! With Telegram (the `telegram` feature, on by default):
//!
//! ```no_run
//! # #[cfg(feature = "telegram")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use keel_notify::{ChatId, Notifier, Priority, TelegramSink};
//!
//! let chat: ChatId = std::env::var("GROUP_CHAT_ID")?.parse()?;
//! let telegram = TelegramSink::builder(std::env::var("BOT_TOKEN")?, chat)
//!     .thread_id(std::env::var("TOPIC_ID")?.parse()?)
//!     .silent_at_or_below(Priority::Info)
//!     .build()?;
//! let notifier = Notifier::builder()
//!     .sink(telegram)
//!     .state_dir("/var/lib/watchdog") // the spool is notify.spool in it
//!     .build()?;
//! # let _ = notifier; Ok(()) }
//! ```

mod admission;
pub mod config;
pub mod digest;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(any(
    feature = "slack",
    feature = "pagerduty",
    feature = "rootly",
    feature = "webhook"
))]
mod http;
pub mod metrics;
mod notification;
mod notifier;
#[cfg(feature = "pagerduty")]
pub mod pagerduty;
mod queue;
mod rate;
#[cfg(feature = "rootly")]
pub mod rootly;
mod sink;
#[cfg(feature = "slack")]
pub mod slack;
mod spool;
#[cfg(feature = "telegram")]
pub mod telegram;
#[cfg(feature = "webhook")]
pub mod webhook;

pub use config::{Accepted, Dropped, NotifierBuilder};
pub use digest::Digest;
pub use error::{ConfigError, NotifyError, QueueClosed, SinkError, UnknownSink};
pub use keel_breaker::{BreakerConfig, BreakerRegistry, CircuitBreaker, State as BreakerState};
pub use metrics::{DropReason, Stats};
pub use notification::{Message, Notification, Phase, Priority};
pub use notifier::{Admitted, Notifier, ShutdownReport};
#[cfg(feature = "pagerduty")]
pub use pagerduty::{PagerDutySink, PagerDutySinkBuilder};
#[cfg(feature = "rootly")]
pub use rootly::{RootlySink, RootlySinkBuilder};
pub use sink::{Pacer, RateLimit, Sink};
#[cfg(feature = "slack")]
pub use slack::{SlackSink, SlackSinkBuilder};
pub use spool::SpoolSync;
#[cfg(feature = "telegram")]
pub use telegram::{ChatId, TelegramSink, TelegramSinkBuilder, TooLong};
#[cfg(feature = "webhook")]
pub use webhook::{WebhookSink, WebhookSinkBuilder};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

//! Counters every notifier keeps ([`Stats`]) and, with the `metrics`
//! feature, the Prometheus families registered by
//! `Notifier::register_metrics`.
//!
//! Prometheus names (short and unprefixed: the binary adds its prefix with
//! `Registry::sub_registry_with_prefix`; the encoder appends `_total` to
//! counters):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `queued` | counter | `sink`, `priority` |
//! | `sent` | counter | `sink`, `priority` |
//! | `retried` | counter | `sink`, `priority` |
//! | `dropped` | counter | `sink`, `priority`, `reason` (`overflow`, `permanent`, `shutdown`, `unknown_sink`, `abandoned`, `removed`) |
//! | `deduplicated` | counter | `sink`, `priority` (one per sink the notification was for) |
//! | `debounced` | counter | `sink`, `priority` (one per sink the notification was for) |
//! | `retry_after_escalations` | counter | `sink` |
//! | `queue_depth` | gauge | `priority` |
//! | `held` | gauge | none (notifications waiting out their debounce) |
//! | `send_duration_seconds` | histogram | `sink` (one attempt) |
//! | `delivery_latency_seconds` | histogram | `sink`, `priority` (queued → sent) |
//! | `observed_to_accepted_seconds` | histogram | `sink`, `priority` (the change observed, [`Notification::observed_at`](crate::Notification::observed_at), → accepted by the sink) |
//! | `messages` | counter | `sink`, `kind` (`single`, `digest`): requests the sink accepted |
//!
//! Label values are bounded: sink names come from the notifier's fixed set
//! of sinks, priorities and reasons are fixed lists.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::notification::Priority;

/// Metric names, as registered (before any prefix).
pub mod names {
    /// Deliveries accepted into the queue (one per notification and sink).
    pub const QUEUED: &str = "queued";
    /// Deliveries a sink accepted.
    pub const SENT: &str = "sent";
    /// Send attempts after the first one of a delivery.
    pub const RETRIED: &str = "retried";
    /// Deliveries dropped, by reason.
    pub const DROPPED: &str = "dropped";
    /// Notifications suppressed by the dedup window.
    pub const DEDUPLICATED: &str = "deduplicated";
    /// Notifications collapsed into a held one by the debounce.
    pub const DEBOUNCED: &str = "debounced";
    /// Retry-afters above the cap: the message was requeued, the sink paused.
    pub const RETRY_AFTER_ESCALATIONS: &str = "retry_after_escalations";
    /// Deliveries waiting in the queue.
    pub const QUEUE_DEPTH: &str = "queue_depth";
    /// Notifications held by the debounce.
    pub const HELD: &str = "held";
    /// Duration of one send attempt.
    pub const SEND_DURATION: &str = "send_duration_seconds";
    /// Time from entering the queue to being accepted by the sink.
    pub const DELIVERY_LATENCY: &str = "delivery_latency_seconds";
    /// Time from the program observing the change to the sink accepting
    /// the message that reports it.
    pub const OBSERVED_TO_ACCEPTED: &str = "observed_to_accepted_seconds";
    /// Messages (single or digest) the sinks accepted.
    pub const MESSAGES: &str = "messages";
}

/// Why a delivery was dropped (the `reason` label; told to
/// [`NotifierBuilder::on_dropped`](crate::NotifierBuilder::on_dropped)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The queue was full.
    Overflow,
    /// The sink rejected the message permanently.
    Permanent,
    /// Shut down with no spool configured.
    Shutdown,
    /// A spooled message named a sink that no longer exists.
    UnknownSink,
    /// The last handle was dropped without `shutdown`.
    Abandoned,
    /// Its sink was removed at run time.
    Removed,
    /// The program cancelled it before it was sent
    /// ([`Notifier::cancel`](crate::Notifier::cancel)).
    Cancelled,
}

impl DropReason {
    /// The `reason` label: `overflow`, `permanent`, `shutdown`,
    /// `unknown_sink`, `abandoned`, `removed` or `cancelled`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Overflow => "overflow",
            DropReason::Permanent => "permanent",
            DropReason::Shutdown => "shutdown",
            DropReason::UnknownSink => "unknown_sink",
            DropReason::Abandoned => "abandoned",
            DropReason::Removed => "removed",
            DropReason::Cancelled => "cancelled",
        }
    }
}

/// A snapshot of a notifier's counters (since it was built) and gauges.
///
/// Counting costs one relaxed atomic add per event; [`Notifier::stats`]
/// costs one short lock for the gauges.
///
/// [`Notifier::stats`]: crate::Notifier::stats
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Deliveries queued (one per notification and sink; requeues and
    /// spool loads not counted again).
    pub queued: u64,
    /// Deliveries the sinks accepted (events: a digest of twelve counts
    /// twelve).
    pub sent: u64,
    /// Messages the sinks accepted (a digest counts one).
    pub messages: u64,
    /// Of `messages`: digests.
    pub digests: u64,
    /// Notifications suppressed by the dedup window.
    pub deduplicated: u64,
    /// Notifications collapsed into a held one.
    pub debounced: u64,
    /// Deliveries dropped, for any reason (each is also logged).
    pub dropped: u64,
    /// Of `dropped`: permanent sink rejections.
    pub rejected: u64,
    /// Send attempts after the first of a delivery.
    pub retried: u64,
    /// Deliveries put back in the queue after a failed round of attempts.
    pub requeued: u64,
    /// Retry-afters above the cap.
    pub escalations: u64,
    /// Deliveries loaded from the spool at start.
    pub restored: u64,
    /// Deliveries waiting in the queue now.
    pub depth: usize,
    /// Notifications held by the debounce now.
    pub held: usize,
    /// Deliveries being sent now.
    pub in_flight: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) queued: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) messages: AtomicU64,
    pub(crate) digests: AtomicU64,
    pub(crate) deduplicated: AtomicU64,
    pub(crate) debounced: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) requeued: AtomicU64,
    pub(crate) escalations: AtomicU64,
    pub(crate) restored: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            queued: r(&self.queued),
            sent: r(&self.sent),
            messages: r(&self.messages),
            digests: r(&self.digests),
            deduplicated: r(&self.deduplicated),
            debounced: r(&self.debounced),
            dropped: r(&self.dropped),
            rejected: r(&self.rejected),
            retried: r(&self.retried),
            requeued: r(&self.requeued),
            escalations: r(&self.escalations),
            restored: r(&self.restored),
            ..Stats::default()
        }
    }
}

#[cfg(feature = "metrics")]
mod prom {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
    use prometheus_client::registry::{Registry, Unit};

    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct SinkPriority {
        sink: String,
        priority: &'static str,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct Dropped {
        sink: String,
        priority: &'static str,
        reason: &'static str,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct SinkKind {
        sink: String,
        kind: &'static str,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct SinkOnly {
        sink: String,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct PriorityOnly {
        priority: &'static str,
    }

    fn send_buckets() -> Histogram {
        // 5 ms .. ~20 s
        Histogram::new(exponential_buckets(0.005, 2.0, 13))
    }

    fn latency_buckets() -> Histogram {
        // 10 ms .. ~1.4 h: a delivery may wait out a sink outage.
        Histogram::new(exponential_buckets(0.01, 3.0, 14))
    }

    fn observed_buckets() -> Histogram {
        // 0.25 s .. ~1.4 h, finer where the 5 s target is.
        Histogram::new(exponential_buckets(0.25, 2.0, 15))
    }

    /// The Prometheus families (cheap to clone: each is an `Arc`).
    #[derive(Debug, Clone)]
    pub(crate) struct Metrics {
        queued: Family<SinkPriority, Counter>,
        sent: Family<SinkPriority, Counter>,
        retried: Family<SinkPriority, Counter>,
        dropped: Family<Dropped, Counter>,
        deduplicated: Family<SinkPriority, Counter>,
        debounced: Family<SinkPriority, Counter>,
        escalations: Family<SinkOnly, Counter>,
        depth: Family<PriorityOnly, Gauge>,
        held: Gauge,
        send_duration: Family<SinkOnly, Histogram, fn() -> Histogram>,
        delivery_latency: Family<SinkPriority, Histogram, fn() -> Histogram>,
        observed: Family<SinkPriority, Histogram, fn() -> Histogram>,
        messages: Family<SinkKind, Counter>,
    }

    impl Default for Metrics {
        fn default() -> Self {
            Metrics {
                queued: Family::default(),
                sent: Family::default(),
                retried: Family::default(),
                dropped: Family::default(),
                deduplicated: Family::default(),
                debounced: Family::default(),
                escalations: Family::default(),
                depth: Family::default(),
                held: Gauge::default(),
                send_duration: Family::new_with_constructor(send_buckets),
                delivery_latency: Family::new_with_constructor(latency_buckets),
                observed: Family::new_with_constructor(observed_buckets),
                messages: Family::default(),
            }
        }
    }

    fn sp(sink: &str, priority: Priority) -> SinkPriority {
        SinkPriority {
            sink: sink.to_owned(),
            priority: priority.as_str(),
        }
    }

    impl Metrics {
        /// Whether recording does anything (callers skip clock reads when
        /// it does not).
        pub(crate) const ENABLED: bool = true;

        pub(crate) fn register(&self, registry: &mut Registry) {
            registry.register(
                names::QUEUED,
                "Deliveries accepted into the queue",
                self.queued.clone(),
            );
            registry.register(names::SENT, "Deliveries a sink accepted", self.sent.clone());
            registry.register(
                names::RETRIED,
                "Send attempts after the first one of a delivery",
                self.retried.clone(),
            );
            registry.register(
                names::DROPPED,
                "Deliveries dropped, by reason",
                self.dropped.clone(),
            );
            registry.register(
                names::DEDUPLICATED,
                "Notifications suppressed by the dedup window",
                self.deduplicated.clone(),
            );
            registry.register(
                names::DEBOUNCED,
                "Notifications collapsed into a held one by the debounce",
                self.debounced.clone(),
            );
            registry.register(
                names::RETRY_AFTER_ESCALATIONS,
                "Retry-afters above the cap: message requeued, sink paused",
                self.escalations.clone(),
            );
            registry.register(
                names::QUEUE_DEPTH,
                "Deliveries waiting in the queue",
                self.depth.clone(),
            );
            registry.register(
                names::HELD,
                "Notifications held by the debounce",
                self.held.clone(),
            );
            registry.register_with_unit(
                "send_duration",
                "Duration of one send attempt",
                Unit::Seconds,
                self.send_duration.clone(),
            );
            registry.register_with_unit(
                "delivery_latency",
                "Time from entering the queue to being accepted by the sink",
                Unit::Seconds,
                self.delivery_latency.clone(),
            );
            registry.register_with_unit(
                "observed_to_accepted",
                "Time from the program observing a change to the sink accepting its message",
                Unit::Seconds,
                self.observed.clone(),
            );
            registry.register(
                names::MESSAGES,
                "Messages (single or digest) the sinks accepted",
                self.messages.clone(),
            );
        }

        pub(crate) fn queued(&self, sink: &str, p: Priority) {
            self.queued.get_or_create(&sp(sink, p)).inc();
        }
        pub(crate) fn sent(&self, sink: &str, p: Priority, latency: Duration, observed: Duration) {
            let labels = sp(sink, p);
            self.sent.get_or_create(&labels).inc();
            self.delivery_latency
                .get_or_create(&labels)
                .observe(latency.as_secs_f64());
            self.observed
                .get_or_create(&labels)
                .observe(observed.as_secs_f64());
        }
        pub(crate) fn message(&self, sink: &str, digest: bool) {
            self.messages
                .get_or_create(&SinkKind {
                    sink: sink.to_owned(),
                    kind: if digest { "digest" } else { "single" },
                })
                .inc();
        }
        pub(crate) fn retried(&self, sink: &str, p: Priority) {
            self.retried.get_or_create(&sp(sink, p)).inc();
        }
        pub(crate) fn dropped(&self, sink: &str, p: Priority, reason: DropReason) {
            self.dropped
                .get_or_create(&Dropped {
                    sink: sink.to_owned(),
                    priority: p.as_str(),
                    reason: reason.as_str(),
                })
                .inc();
        }
        pub(crate) fn deduplicated(&self, sink: &str, p: Priority) {
            self.deduplicated.get_or_create(&sp(sink, p)).inc();
        }
        pub(crate) fn debounced(&self, sink: &str, p: Priority) {
            self.debounced.get_or_create(&sp(sink, p)).inc();
        }
        pub(crate) fn escalation(&self, sink: &str) {
            self.escalations
                .get_or_create(&SinkOnly {
                    sink: sink.to_owned(),
                })
                .inc();
        }
        pub(crate) fn send_duration(&self, sink: &str, d: Duration) {
            self.send_duration
                .get_or_create(&SinkOnly {
                    sink: sink.to_owned(),
                })
                .observe(d.as_secs_f64());
        }
        pub(crate) fn gauges(&self, depth: [usize; 3], held: usize) {
            for (p, n) in Priority::ALL.iter().zip(depth) {
                self.depth
                    .get_or_create(&PriorityOnly {
                        priority: p.as_str(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            self.held.set(i64::try_from(held).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(feature = "metrics")]
pub(crate) use prom::Metrics;

/// Without the `metrics` feature every recording is a no-op.
#[cfg(not(feature = "metrics"))]
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    _none: (),
}

#[cfg(not(feature = "metrics"))]
#[allow(clippy::unused_self)]
impl Metrics {
    pub(crate) const ENABLED: bool = false;
    #[inline]
    pub(crate) fn queued(&self, _: &str, _: Priority) {}
    #[inline]
    pub(crate) fn sent(&self, _: &str, _: Priority, _: Duration, _: Duration) {}
    #[inline]
    pub(crate) fn message(&self, _: &str, _: bool) {}
    #[inline]
    pub(crate) fn retried(&self, _: &str, _: Priority) {}
    #[inline]
    pub(crate) fn dropped(&self, _: &str, _: Priority, _: DropReason) {}
    #[inline]
    pub(crate) fn deduplicated(&self, _: &str, _: Priority) {}
    #[inline]
    pub(crate) fn debounced(&self, _: &str, _: Priority) {}
    #[inline]
    pub(crate) fn escalation(&self, _: &str) {}
    #[inline]
    pub(crate) fn send_duration(&self, _: &str, _: Duration) {}
    #[inline]
    pub(crate) fn gauges(&self, _: [usize; 3], _: usize) {}
}

//! The outbox and its publisher (issue 19): every new event reaches every
//! target that should get it, at least once across crashes and exactly
//! once per target in effect, within the destination's rate limits.
//!
//! * **Outbox.** `/webhook` commits each new event with one
//!   `publish_outbox` row per target whose static filters want it, in the
//!   same transaction ([`Store::set_outbox_route`]); then it answers.
//!   A crash after the 2xx loses nothing: the rows are in the database.
//! * **Leases.** Each replica's publisher leases due rows of a target
//!   (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas never take the
//!   same row), renews its leases while it holds them, and settles each
//!   row by deleting it in the transaction that records its outcome in
//!   `publish_history`. A replica killed mid-publish leaves its leases to
//!   expire ([`PublishArgs::publish_lease_seconds`]) and another takes the
//!   rows over. A row published but not yet settled when its replica died
//!   is published again: at least once; PagerDuty's dedup key (the
//!   fingerprint) makes that a no-op there.
//! * **Decisions**, per row: an acknowledged firing alert is `filtered`;
//!   in `enriched` mode the alert is classified first (bounded: past
//!   [`Enrichment::bound`] it goes out unclassified and says so), then the
//!   target's `min-confidence` and the filter rules decide (allow, deny,
//!   or delay: held once, dropped if the alert resolved meanwhile); in
//!   `transparent_with_recommendations` nothing is filtered and the
//!   classification runs beside; in `transparent` neither.
//! * **Sending.** Each target has its own keel-notify [`Notifier`] with the
//!   target's one sink: its breaker, its rate limits (Slack 1/s per
//!   channel, PagerDuty 120/min per routing key), capped `Retry-After`,
//!   digests where the sink has them. Dedup and debounce are off (the
//!   outbox already holds each event once) and so is the notifier's spool
//!   (the outbox is the durable queue). A target's rows go in id order;
//!   the notifier sends a higher priority first among what it holds.
//! * **Retention.** Rows not published within
//!   [`PublishArgs::outbox_retention_hours`] are given up and recorded as
//!   `failure` (`expired`); `alert_history_outbox_oldest_age_seconds`
//!   shows a backlog growing long before that.
//!
//! Routes: `GET /publishing/stats`, `POST /webhook/proxy` (synchronous:
//! stores, waits for this delivery's publishing within
//! [`PublishArgs::proxy_timeout_ms`], answers the predecessor's shape) and
//! `GET /alerts/{fingerprint}/publishing` (the alert's publishing history).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel_notify::{DropReason, Notification, Notifier, Priority};
use keel_telemetry::{CancellationToken, Shutdown};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::classify::{Enrichment, EnrichmentMode};
use crate::filters::Filters;
use crate::http::{ApiError, AppState};
use crate::model::Status;
use crate::routing::{AlertView, Classification, Decision, LlmSeverity};
use crate::store::{HistoryEntry, OutboxRow, Store};
use crate::targets::{Target, Targets};

/// Publisher settings.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// Seconds a replica holds the outbox rows it is publishing before
    /// another may take them over (it renews them every third of that
    /// while it lives).
    #[arg(long, env = "PUBLISH_LEASE_SECONDS", default_value_t = 60)]
    pub publish_lease_seconds: u64,

    /// Rows a target's publisher holds at once (leased and handed to its
    /// sender).
    #[arg(long, env = "PUBLISH_BATCH", default_value_t = 50)]
    pub publish_batch: u32,

    /// Milliseconds between looks at the outbox when nothing woke the
    /// publisher (rows written by another replica, delays coming due,
    /// retries).
    #[arg(long, env = "PUBLISH_POLL_MS", default_value_t = 1000)]
    pub publish_poll_ms: u64,

    /// Hours an outbox row may wait for its target before it is given up
    /// (recorded as a `failure`, `expired`).
    #[arg(long, env = "OUTBOX_RETENTION_HOURS", default_value_t = 72)]
    pub outbox_retention_hours: u64,

    /// Milliseconds `POST /webhook/proxy` waits for its alerts' publishing
    /// before it answers with what is known (the rest stays in the outbox).
    #[arg(long, env = "PROXY_TIMEOUT_MS", default_value_t = 10_000)]
    pub proxy_timeout_ms: u64,

    /// This replica's name in outbox leases (default: host name, process
    /// id and a random suffix).
    #[arg(long, env = "PUBLISHER_ID")]
    pub publisher_id: Option<String>,
}

impl Default for PublishArgs {
    fn default() -> Self {
        PublishArgs {
            publish_lease_seconds: 60,
            publish_batch: 50,
            publish_poll_ms: 1000,
            outbox_retention_hours: 72,
            proxy_timeout_ms: 10_000,
            publisher_id: None,
        }
    }
}

impl PublishArgs {
    /// Checks the settings without side effects.
    ///
    /// # Errors
    /// The first invalid variable.
    pub fn validate(&self) -> Result<(), keel_core::ConfigError> {
        use keel_core::ConfigError;
        if !(5..=3600).contains(&self.publish_lease_seconds) {
            return Err(ConfigError::new(
                "PUBLISH_LEASE_SECONDS",
                "must be between 5 and 3600",
            ));
        }
        if !(1..=1000).contains(&self.publish_batch) {
            return Err(ConfigError::new(
                "PUBLISH_BATCH",
                "must be between 1 and 1000",
            ));
        }
        if !(10..=60_000).contains(&self.publish_poll_ms) {
            return Err(ConfigError::new(
                "PUBLISH_POLL_MS",
                "must be between 10 and 60000",
            ));
        }
        if !(1..=24 * 365).contains(&self.outbox_retention_hours) {
            return Err(ConfigError::new(
                "OUTBOX_RETENTION_HOURS",
                "must be between 1 and 8760",
            ));
        }
        if !(100..=120_000).contains(&self.proxy_timeout_ms) {
            return Err(ConfigError::new(
                "PROXY_TIMEOUT_MS",
                "must be between 100 and 120000",
            ));
        }
        if let Some(id) = &self.publisher_id
            && (id.trim().is_empty() || id.len() > 200)
        {
            return Err(ConfigError::new(
                "PUBLISHER_ID",
                "must be 1 to 200 characters",
            ));
        }
        Ok(())
    }

    fn owner(&self) -> String {
        self.publisher_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "host".to_owned());
            format!(
                "{host}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            )
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetStatus {
    target: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

/// The publisher's Prometheus metrics.
#[derive(Debug, Clone, Default)]
struct PublishMetrics {
    outcomes: Family<TargetStatus, Counter>,
    backlog: Family<TargetLabel, Gauge>,
    oldest: Family<TargetLabel, Gauge>,
    unclassified: Counter,
}

/// The outbox publisher; cloning is cheap.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: Store,
    targets: Targets,
    filters: Filters,
    enrichment: Enrichment,
    owner: String,
    lease: Duration,
    batch: usize,
    poll: Duration,
    retention: Duration,
    proxy_timeout: Duration,
    /// Bumped to wake every target's worker (a commit with new rows).
    wake: watch::Sender<u64>,
    /// Bumped after every settle (`/webhook/proxy` waits on it).
    settled: watch::Sender<u64>,
    workers: Mutex<HashMap<String, Worker>>,
    metrics: PublishMetrics,
    stop: CancellationToken,
}

/// One target's publishing.
struct Worker {
    /// The target as it was when the worker started (a change restarts it).
    target: Arc<Target>,
    notifier: Notifier,
    stop: CancellationToken,
    /// The worker's inbox (the notifier's outcomes, acknowledgements).
    inbox: mpsc::UnboundedSender<Told>,
}

/// What the notifier told about one row.
enum Told {
    Accepted {
        row: i64,
    },
    Dropped {
        row: i64,
        reason: DropReason,
    },
    /// The alert was acknowledged: what of it waits in the sender is
    /// cancelled.
    Acked {
        fingerprint: String,
        by: String,
    },
}

/// A row handed to the notifier.
struct InFlight {
    /// Set when an acknowledgement cancelled it.
    acked_by: Option<String>,
    event_id: i64,
    fingerprint: String,
    firing: bool,
    attempt: i64,
    created_at: i64,
}

/// What to do with one leased row.
enum Step {
    Send(Box<Notification>),
    Filtered(String),
    Delay(i64),
    Failed(String),
}

/// Most outcomes settled in one transaction.
const SETTLE_BATCH: usize = 64;

/// Longest an outcome waits to be settled with others.
const SETTLE_DELAY: Duration = Duration::from_millis(20);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn row_key(id: i64) -> String {
    format!("outbox:{id}")
}

fn parse_row_key(key: &str) -> Option<i64> {
    key.strip_prefix("outbox:")?.parse().ok()
}

impl Publisher {
    /// Starts publishing: installs the outbox route on `store` (new events
    /// get a row per target whose static filters want them), starts one
    /// worker per target (and follows target changes), the lease renewal
    /// and the retention sweep, all under `shutdown`.
    pub fn start(
        store: &Store,
        targets: &Targets,
        filters: &Filters,
        enrichment: &Enrichment,
        args: &PublishArgs,
        shutdown: &Shutdown,
    ) -> Publisher {
        let route_targets = targets.clone();
        store.set_outbox_route(Some(Arc::new(move |alert: &AlertView| {
            route_targets
                .current()
                .iter()
                .filter(|t| t.wants(alert))
                .map(|t| Arc::<str>::from(t.name.as_str()))
                .collect()
        })));
        let publisher = Publisher {
            inner: Arc::new(Inner {
                store: store.clone(),
                targets: targets.clone(),
                filters: filters.clone(),
                enrichment: enrichment.clone(),
                owner: args.owner(),
                lease: Duration::from_secs(args.publish_lease_seconds),
                batch: args.publish_batch as usize,
                poll: Duration::from_millis(args.publish_poll_ms),
                retention: Duration::from_secs(args.outbox_retention_hours * 3600),
                proxy_timeout: Duration::from_millis(args.proxy_timeout_ms),
                wake: watch::Sender::new(0),
                settled: watch::Sender::new(0),
                workers: Mutex::new(HashMap::new()),
                metrics: PublishMetrics::default(),
                stop: shutdown.token(),
            }),
        };
        let p = publisher.clone();
        shutdown.spawn(async move { p.follow_targets().await });
        let p = publisher.clone();
        shutdown.spawn(async move { p.housekeeping().await });
        tracing::info!(owner = %publisher.inner.owner, "publisher started");
        publisher
    }

    /// This replica's name in leases.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// An alert was acknowledged: its firing notifications still waiting in
    /// any target's sender are cancelled and recorded as `filtered` (one
    /// being sent at this moment goes out).
    pub fn acknowledged(&self, fingerprint: &str, by: &str) {
        for w in self.inner.workers.lock().values() {
            let _ = w.inbox.send(Told::Acked {
                fingerprint: fingerprint.to_owned(),
                by: by.to_owned(),
            });
        }
    }

    /// Wakes every target's worker (new rows were committed).
    pub fn wake(&self) {
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Registers the publisher's metrics: `publish_outcomes_total{target,
    /// status}`, `outbox_rows{target}`, `outbox_oldest_age_seconds{target}`,
    /// `publish_unclassified_total`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let m = &self.inner.metrics;
        registry.register(
            "publish_outcomes",
            "Outbox rows settled, by target and status (success, failure, filtered, retry)",
            m.outcomes.clone(),
        );
        registry.register(
            "outbox_rows",
            "Outbox rows waiting, by target",
            m.backlog.clone(),
        );
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest outbox row waiting, by target",
            m.oldest.clone(),
        );
        registry.register(
            "publish_unclassified",
            "Alerts published unclassified in enriched mode (the LLM did not answer in time)",
            m.unclassified.clone(),
        );
    }

    /// Starts, restarts and stops workers as targets come, change and go.
    async fn follow_targets(self) {
        let mut changes = self.inner.targets.subscribe();
        loop {
            self.reconcile_workers().await;
            tokio::select! {
                () = self.inner.stop.cancelled() => break,
                changed = changes.changed() => if changed.is_err() { break },
            }
        }
        let workers: Vec<Worker> = self.inner.workers.lock().drain().map(|(_, w)| w).collect();
        for w in workers {
            w.stop.cancel();
            w.notifier.shutdown(Duration::from_secs(2)).await;
        }
    }

    async fn reconcile_workers(&self) {
        let current = self.inner.targets.current();
        let mut stopping = Vec::new();
        {
            let mut workers = self.inner.workers.lock();
            workers.retain(|name, w| {
                let keep = current
                    .iter()
                    .any(|t| &t.name == name && same_target(t, &w.target));
                if !keep {
                    stopping.push((w.stop.clone(), w.notifier.clone()));
                }
                keep
            });
        }
        for (stop, notifier) in stopping {
            stop.cancel();
            notifier.shutdown(Duration::from_secs(2)).await;
        }
        for target in current.iter() {
            if self.inner.workers.lock().contains_key(&target.name) {
                continue;
            }
            match self.spawn_worker(target.clone()) {
                Ok(worker) => {
                    self.inner
                        .workers
                        .lock()
                        .insert(target.name.clone(), worker);
                }
                Err(e) => tracing::error!(
                    target = %target.name,
                    error = %e,
                    "cannot publish to target: its sender refused the settings"
                ),
            }
        }
    }

    fn spawn_worker(&self, target: Arc<Target>) -> Result<Worker, String> {
        let sink = target.sink().map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let accepted = tx.clone();
        let inbox = tx.clone();
        let notifier = Notifier::builder()
            .sink(sink)
            .capacity(self.inner.batch.max(1) * 2)
            // One sender per target: in order, one request at a time (the
            // destinations' rate limits are far below one round trip).
            .workers(1)
            .dedup_window(Duration::ZERO)
            .debounce(Priority::Warning, Duration::ZERO)
            .debounce(Priority::Info, Duration::ZERO)
            .no_spool()
            // A target back after a long outage is probed within 30 s (the
            // notifier's default grows its breaker's open time to 5 min,
            // made for chat alerts that a digest sums up later).
            .sink_breaker(publishing_breaker())
            .on_accepted(move |a| {
                if let Some(row) = parse_row_key(a.key) {
                    let _ = accepted.send(Told::Accepted { row });
                }
            })
            .on_dropped(move |d| {
                if let Some(row) = parse_row_key(d.key) {
                    let _ = tx.send(Told::Dropped {
                        row,
                        reason: d.reason,
                    });
                }
            })
            .build()
            .map_err(|e| e.to_string())?;
        // Every series of the target exists from the start (at 0), so rules
        // over rates and ages see it before its first event.
        let m = &self.inner.metrics;
        for status in ["success", "failure", "filtered", "retry"] {
            let _ = m.outcomes.get_or_create(&TargetStatus {
                target: target.name.clone(),
                status: status.to_owned(),
            });
        }
        let label = TargetLabel {
            target: target.name.clone(),
        };
        let _ = m.backlog.get_or_create(&label);
        let _ = m.oldest.get_or_create(&label);
        let stop = self.inner.stop.child_token();
        let worker = Worker {
            target: target.clone(),
            notifier: notifier.clone(),
            stop: stop.clone(),
            inbox,
        };
        let p = self.clone();
        tokio::spawn(async move { p.run_worker(target, notifier, rx, stop).await });
        Ok(worker)
    }

    /// One target's loop: lease due rows, decide, hand them to the
    /// notifier in id order, settle what it tells.
    async fn run_worker(
        self,
        target: Arc<Target>,
        notifier: Notifier,
        mut told: mpsc::UnboundedReceiver<Told>,
        stop: CancellationToken,
    ) {
        use futures::StreamExt;
        let inner = &self.inner;
        let mut wake = inner.wake.subscribe();
        let mut in_flight: HashMap<i64, InFlight> = HashMap::new();
        // Rows being decided (classification may take up to its bound),
        // handed on in id order as they complete: a slow decision delays
        // the rows behind it, never the claiming of more.
        //
        // Each decision is its own task: a future parked in the queue would
        // not be polled while this loop awaits the database, and one that
        // had checked out a connection would hold it meanwhile (every
        // connection held so, the pool deadlocks).
        let mut deciding: futures::stream::FuturesOrdered<
            tokio::task::JoinHandle<(OutboxRow, Step)>,
        > = futures::stream::FuturesOrdered::new();
        let mut deciding_ids: std::collections::HashSet<i64> = std::collections::HashSet::new();
        // Outcomes are settled in batches (one transaction, one commit for
        // up to SETTLE_BATCH rows, at most SETTLE_DELAY after the first): a
        // commit per row competed with ingest's group commits.
        let mut outcomes: Vec<(i64, HistoryEntry)> = Vec::new();
        let mut flush_at: Option<Instant> = None;
        let mut backoff = Duration::ZERO;
        loop {
            if outcomes.len() >= SETTLE_BATCH || flush_at.is_some_and(|at| Instant::now() >= at) {
                self.settle(std::mem::take(&mut outcomes)).await;
                flush_at = None;
            }
            // Settle what the notifier told first: it frees room.
            let mut news = Vec::new();
            while let Ok(t) = told.try_recv() {
                news.push(t);
            }
            if !news.is_empty() {
                self.settle_told(&target, &notifier, &mut in_flight, news, &mut outcomes)
                    .await;
            }
            if !outcomes.is_empty() && flush_at.is_none() {
                flush_at = Some(Instant::now() + SETTLE_DELAY);
            }
            let room = inner.batch.saturating_sub(in_flight.len() + deciding.len());
            let mut claimed = 0;
            if room > 0 && backoff.is_zero() {
                match inner
                    .store
                    .claim_outbox(
                        &target.name,
                        &inner.owner,
                        now_ms(),
                        inner.lease.as_millis() as i64,
                        room as i64,
                    )
                    .await
                {
                    Ok(rows) => {
                        claimed = rows.len();
                        for row in rows {
                            deciding_ids.insert(row.id);
                            let p = self.clone();
                            let t = target.clone();
                            deciding.push_back(tokio::spawn(async move {
                                let step = p.decide(&t, &row).await;
                                (row, step)
                            }));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(target = %target.name, error = %e, "outbox claim failed");
                        backoff = Duration::from_secs(1);
                    }
                }
            }
            // More due rows right away if the claim was full; otherwise
            // wait for a decision, news, a wake-up or the poll.
            if claimed > 0 && claimed == room {
                continue;
            }
            let pause = if backoff.is_zero() {
                inner.poll
            } else {
                std::mem::take(&mut backoff)
            };
            tokio::select! {
                () = stop.cancelled() => break,
                Some(decided) = deciding.next(), if !deciding.is_empty() => {
                    match decided {
                        Ok((row, step)) => {
                            deciding_ids.remove(&row.id);
                            self.handle(&target, &notifier, &mut in_flight, row, step, &mut outcomes)
                                .await;
                        }
                        // A decision that panicked: its row stays leased and
                        // is taken again when the lease expires.
                        Err(e) => tracing::error!(target = %target.name, error = %e, "an outbox decision failed"),
                    }
                }
                t = told.recv() => match t {
                    Some(t) => {
                        self.settle_told(&target, &notifier, &mut in_flight, vec![t], &mut outcomes)
                            .await;
                    }
                    None => break,
                },
                _ = wake.changed() => {}
                () = tokio::time::sleep(pause) => {}
                () = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {}
            }
            if !outcomes.is_empty() && flush_at.is_none() {
                flush_at = Some(Instant::now() + SETTLE_DELAY);
            }
        }
        self.settle(std::mem::take(&mut outcomes)).await;
        // Give back what this worker still holds: the next owner (this
        // replica's next worker, or another) publishes it.
        let released: Vec<(i64, Option<HistoryEntry>)> = in_flight
            .keys()
            .chain(deciding_ids.iter())
            .map(|&id| (id, None))
            .collect();
        if let Err(e) = inner
            .store
            .release_outbox(&inner.owner, &released, now_ms())
            .await
        {
            tracing::warn!(target = %target.name, error = %e, "releasing outbox rows failed; their leases will expire");
        }
    }

    /// Acts on one decided row: hands it to the notifier, holds it, or
    /// settles it.
    async fn handle(
        &self,
        target: &Arc<Target>,
        notifier: &Notifier,
        in_flight: &mut HashMap<i64, InFlight>,
        row: OutboxRow,
        step: Step,
        outcomes: &mut Vec<(i64, HistoryEntry)>,
    ) {
        let inner = &self.inner;
        let (event_id, fingerprint, firing) =
            row.alert.as_ref().map_or((0, String::new(), false), |a| {
                (
                    a.event_id,
                    a.fingerprint.clone(),
                    a.status == Status::Firing,
                )
            });
        let entry = |status: &'static str, detail: String| HistoryEntry {
            event_id,
            fingerprint: fingerprint.clone(),
            target: target.name.clone(),
            status,
            attempt: row.attempts,
            response_code: None,
            latency_ms: Some(now_ms() - row.created_at),
            detail: Some(detail),
            at: now_ms(),
        };
        match step {
            Step::Send(notification) => {
                in_flight.insert(
                    row.id,
                    InFlight {
                        acked_by: None,
                        event_id,
                        fingerprint: fingerprint.clone(),
                        firing,
                        attempt: row.attempts,
                        created_at: row.created_at,
                    },
                );
                if let Err(e) = notifier.notify(*notification) {
                    // Closed: the worker is stopping; the row goes back.
                    tracing::debug!(error = %e, "notifier closed");
                    in_flight.remove(&row.id);
                    let _ = inner
                        .store
                        .release_outbox(&inner.owner, &[(row.id, None)], now_ms())
                        .await;
                }
            }
            Step::Filtered(why) => outcomes.push((row.id, entry("filtered", why))),
            Step::Failed(why) => outcomes.push((row.id, entry("failure", why))),
            Step::Delay(until) => {
                if let Err(e) = inner.store.delay_outbox(&inner.owner, row.id, until).await {
                    tracing::warn!(error = %e, "holding an outbox row failed; it is retried");
                }
            }
        }
    }

    /// Filters, classifies and builds the notification of one row.
    async fn decide(&self, target: &Target, row: &OutboxRow) -> Step {
        let inner = &self.inner;
        let Some(alert) = &row.alert else {
            return Step::Failed("the event was removed by retention before publishing".into());
        };
        match alert.status {
            Status::Firing => match inner.filters.acked(alert).await {
                Ok(Some(ack)) => {
                    return Step::Filtered(format!("acknowledged by {}: {}", ack.by, ack.reason));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading acknowledgements failed"),
            },
            Status::Resolved => {
                if let Err(e) = inner.filters.resolve_clears_ack(alert).await {
                    tracing::warn!(error = %e, "clearing an acknowledgement failed");
                }
            }
        }
        let mode = inner.enrichment.mode().await;
        let mut unclassified = None;
        let classification = match mode {
            EnrichmentMode::Enriched if inner.enrichment.classification_enabled() => {
                let c = inner
                    .enrichment
                    .classify_bounded(alert, inner.enrichment.bound())
                    .await;
                if c.is_none() {
                    inner.metrics.unclassified.inc();
                    unclassified = Some(format!(
                        "unclassified: the LLM gave no valid answer within {} ms",
                        inner.enrichment.bound().as_millis()
                    ));
                }
                c
            }
            EnrichmentMode::TransparentWithRecommendations
                if inner.enrichment.classification_enabled() =>
            {
                // Recommendations for the record and the dashboard: never
                // waited for, never filtered on.
                let enrichment = inner.enrichment.clone();
                let alert = alert.clone();
                tokio::spawn(async move {
                    let _ = enrichment.classify_bounded(&alert, Duration::ZERO).await;
                });
                None
            }
            _ => None,
        };
        if mode != EnrichmentMode::TransparentWithRecommendations {
            if !target.confident_enough(classification.as_ref()) {
                return Step::Filtered("below the target's min-confidence".into());
            }
            match inner
                .filters
                .decide(alert, classification.as_ref(), &target.name)
            {
                Decision::Allow => {}
                Decision::Deny { rule } => return Step::Filtered(format!("denied by rule {rule}")),
                Decision::Delay { rule, delay } => {
                    if row.delayed_until.is_none() {
                        return Step::Delay(row.created_at + delay.as_millis() as i64);
                    }
                    if alert.status == Status::Firing {
                        match inner.store.alert_state_of(&alert.fingerprint).await {
                            Ok(Some((status, starts_at)))
                                if status == Status::Resolved || starts_at > alert.starts_at =>
                            {
                                return Step::Filtered(format!(
                                    "resolved while held by rule {rule}"
                                ));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "reading the alert's state failed");
                            }
                        }
                    }
                }
            }
        }
        Step::Send(Box::new(notification(
            row.id,
            alert,
            classification.as_ref(),
            unclassified,
        )))
    }

    async fn settle_told(
        &self,
        target: &Target,
        notifier: &Notifier,
        in_flight: &mut HashMap<i64, InFlight>,
        told: Vec<Told>,
        outcomes: &mut Vec<(i64, HistoryEntry)>,
    ) {
        let inner = &self.inner;
        let mut settled = Vec::new();
        let mut released = Vec::new();
        for t in told {
            let (row, outcome) = match t {
                Told::Accepted { row } => (row, None),
                Told::Dropped { row, reason } => (row, Some(reason)),
                Told::Acked { fingerprint, by } => {
                    let rows: Vec<i64> = in_flight
                        .iter()
                        .filter(|(_, f)| f.firing && f.fingerprint == fingerprint)
                        .map(|(&id, _)| id)
                        .collect();
                    for id in rows {
                        if notifier.cancel(&row_key(id)) > 0 {
                            // Told back as a `Cancelled` drop; settled
                            // with the reason now.
                            if let Some(f) = in_flight.get_mut(&id) {
                                f.acked_by = Some(by.clone());
                            }
                        }
                    }
                    continue;
                }
            };
            let Some(f) = in_flight.remove(&row) else {
                continue;
            };
            let entry = |status: &'static str, detail: Option<String>| HistoryEntry {
                event_id: f.event_id,
                fingerprint: f.fingerprint.clone(),
                target: target.name.clone(),
                status,
                attempt: f.attempt,
                response_code: None,
                latency_ms: Some(now_ms() - f.created_at),
                detail,
                at: now_ms(),
            };
            match outcome {
                None => settled.push((row, entry("success", None))),
                Some(DropReason::Cancelled) => settled.push((
                    row,
                    entry(
                        "filtered",
                        Some(format!(
                            "acknowledged by {} while waiting to be sent",
                            f.acked_by.as_deref().unwrap_or("someone")
                        )),
                    ),
                )),
                Some(DropReason::Permanent) => settled.push((
                    row,
                    entry(
                        "failure",
                        Some("the destination rejected it permanently".into()),
                    ),
                )),
                Some(reason) => released.push((
                    row,
                    Some(entry(
                        "retry",
                        Some(format!("not sent ({}); retried", reason.as_str())),
                    )),
                )),
            }
        }
        if !released.is_empty() {
            for (_, e) in &released {
                if let Some(e) = e {
                    inner
                        .metrics
                        .outcomes
                        .get_or_create(&TargetStatus {
                            target: e.target.clone(),
                            status: e.status.to_owned(),
                        })
                        .inc();
                }
            }
            if let Err(e) = inner
                .store
                .release_outbox(&inner.owner, &released, now_ms() + 1000)
                .await
            {
                tracing::warn!(error = %e, "releasing outbox rows failed; their leases will expire");
            }
        }
        outcomes.extend(settled);
    }

    /// Records outcomes and deletes their rows; retried (with backoff) until
    /// the database takes them, since the sends already happened.
    async fn settle(&self, settled: Vec<(i64, HistoryEntry)>) {
        if settled.is_empty() {
            return;
        }
        let inner = &self.inner;
        let mut wait = Duration::from_millis(100);
        loop {
            match inner.store.settle_outbox(&inner.owner, &settled).await {
                Ok(_) => break,
                Err(e) if !inner.stop.is_cancelled() => {
                    tracing::warn!(error = %e, rows = settled.len(), "recording publish outcomes failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    tracing::warn!(error = %e, rows = settled.len(), "recording publish outcomes failed at shutdown; the rows will be published again");
                    return;
                }
            }
        }
        for (_, e) in &settled {
            inner
                .metrics
                .outcomes
                .get_or_create(&TargetStatus {
                    target: e.target.clone(),
                    status: e.status.to_owned(),
                })
                .inc();
        }
        inner.settled.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Renews this replica's leases, refreshes the backlog gauges and gives
    /// up rows past the retention.
    async fn housekeeping(self) {
        let inner = &self.inner;
        let mut renew = tokio::time::interval(inner.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(Duration::from_secs(15));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = inner.stop.cancelled() => break,
                _ = renew.tick() => {
                    let until = now_ms() + inner.lease.as_millis() as i64;
                    if let Err(e) = inner.store.renew_outbox_leases(&inner.owner, until).await {
                        tracing::warn!(error = %e, "renewing outbox leases failed");
                    }
                }
                _ = sweep.tick() => self.sweep().await,
            }
        }
    }

    async fn sweep(&self) {
        let inner = &self.inner;
        let now = now_ms();
        let cutoff = now - inner.retention.as_millis() as i64;
        match inner.store.expire_outbox(cutoff, now).await {
            Ok(0) => {}
            Ok(n) => tracing::error!(
                rows = n,
                retention_hours = inner.retention.as_secs() / 3600,
                "outbox rows not published within the retention were given up"
            ),
            Err(e) => tracing::warn!(error = %e, "outbox retention sweep failed"),
        }
        match inner.store.outbox_backlog().await {
            Ok(backlog) => {
                inner.metrics.backlog.clear();
                inner.metrics.oldest.clear();
                for t in inner.targets.current().iter() {
                    let label = TargetLabel {
                        target: t.name.clone(),
                    };
                    inner.metrics.backlog.get_or_create(&label).set(0);
                    inner.metrics.oldest.get_or_create(&label).set(0);
                }
                for b in backlog {
                    let label = TargetLabel { target: b.target };
                    inner.metrics.backlog.get_or_create(&label).set(b.rows);
                    inner
                        .metrics
                        .oldest
                        .get_or_create(&label)
                        .set((now - b.oldest).max(0) / 1000);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the outbox backlog failed"),
        }
    }
}

/// Each target's sender breaker: opens after one failed round of
/// attempts, probes one at a time, open 1 s growing ×2 up to 30 s.
fn publishing_breaker() -> keel_notify::BreakerConfig {
    keel_notify::BreakerConfig::builder()
        .no_failure_rate()
        .consecutive_failures(1)
        .minimum_calls(1)
        .open_duration(Duration::from_secs(1))
        .open_duration_growth(2.0, Duration::from_secs(30))
        .half_open_max_probes(1)
        .half_open_successes(1)
        .build()
        .expect("the publishing breaker settings are valid")
}

/// Whether a running worker's target is still the same (else restarted).
fn same_target(a: &Target, b: &Target) -> bool {
    a.to_json() == b.to_json() && a.secret == b.secret
}

/// The notification of one outbox row.
fn notification(
    row: i64,
    alert: &AlertView,
    classification: Option<&Classification>,
    unclassified: Option<String>,
) -> Notification {
    let priority = match classification.map(|c| c.severity) {
        Some(LlmSeverity::Critical) => Priority::Critical,
        Some(LlmSeverity::Warning) => Priority::Warning,
        Some(LlmSeverity::Info | LlmSeverity::Noise) => Priority::Info,
        None => match alert
            .severity
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("critical" | "page" | "error" | "high") => Priority::Critical,
            Some("warning" | "warn" | "medium") => Priority::Warning,
            _ => Priority::Info,
        },
    };
    let name = if alert.alertname.is_empty() {
        alert.fingerprint.as_str()
    } else {
        alert.alertname.as_str()
    };
    let title = match alert.status {
        Status::Firing => format!("[FIRING] {name}"),
        Status::Resolved => format!("[RESOLVED] {name}"),
    };
    let text = |key: &str| {
        alert
            .annotations
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let body = [text("summary"), text("description")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n");
    let mut n = Notification::new(row_key(row), priority, title)
        .subject(alert.fingerprint.clone())
        .observed_at(Instant::now())
        .body(body)
        .field("fingerprint", alert.fingerprint.clone());
    for (k, v) in alert
        .labels
        .iter()
        .filter(|(k, _)| k.as_str() != "alertname")
    {
        n = n.field(k.clone(), v.clone());
    }
    if let Some(c) = classification {
        n = n.field(
            "classification",
            format!("{} ({:.2})", c.severity.as_str(), c.confidence),
        );
        if !c.recommendations.is_empty() {
            n = n.field("recommendations", c.recommendations.join("; "));
        }
    } else if let Some(why) = unclassified {
        n = n.field("classification", why);
    }
    if let Some(url) = &alert.generator_url {
        n = n.field("source", url.clone());
    }
    if alert.status == Status::Resolved {
        n = n.resolves();
    }
    n
}

// ---------------------------------------------------------------- routes

/// The routes of this part (`/publishing/stats`, `/webhook/proxy`,
/// `/alerts/{fingerprint}/publishing`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/publishing/stats", get(stats))
        .route("/webhook/proxy", post(proxy))
        .route("/alerts/{fingerprint}/publishing", get(alert_publishing))
}

fn require_read(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.inner.tokens.read_allowed(headers) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid bearer token",
        ))
    }
}

async fn stats(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_read(&state, &headers)?;
    let store = state.store();
    let now = now_ms();
    let backlog = store
        .outbox_backlog()
        .await
        .map_err(|e| ApiError::database(&e))?;
    let outcomes = store
        .publish_outcomes(now - 24 * 3600 * 1000)
        .await
        .map_err(|e| ApiError::database(&e))?;
    let mut targets: BTreeMap<String, Value> = BTreeMap::new();
    for t in state.inner.targets.current().iter() {
        targets.insert(
            t.name.clone(),
            json!({ "format": t.format.as_str(), "backlog": 0, "oldest_age_seconds": null,
                    "last_24h": {} }),
        );
    }
    for b in backlog {
        let entry = targets
            .entry(b.target.clone())
            .or_insert_with(|| json!({ "format": null, "removed": true, "last_24h": {} }));
        entry["backlog"] = json!(b.rows);
        entry["oldest_age_seconds"] = json!((now - b.oldest).max(0) / 1000);
    }
    for o in outcomes {
        let entry = targets
            .entry(o.target.clone())
            .or_insert_with(|| json!({ "format": null, "removed": true, "backlog": 0 }));
        entry["last_24h"][o.status.as_str()] =
            json!({ "count": o.count, "avg_latency_ms": o.avg_latency_ms });
    }
    if let Some(p) = &state.inner.publisher {
        let workers = p.inner.workers.lock();
        for (name, w) in workers.iter() {
            if let Some(entry) = targets.get_mut(name) {
                let s = w.notifier.stats();
                entry["sender"] = json!({
                    "queued": s.queued, "sent": s.sent, "dropped": s.dropped, "retried": s.retried,
                });
                if let Some(b) = w.notifier.breaker(name) {
                    entry["breaker"] = json!(format!("{:?}", b.state()).to_lowercase());
                }
            }
        }
    }
    Ok(axum::Json(json!({
        "publishing": state.inner.publisher.is_some(),
        "owner": state.inner.publisher.as_ref().map(Publisher::owner),
        "targets": targets,
    }))
    .into_response())
}

async fn alert_publishing(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(fingerprint): Path<String>,
) -> Result<Response, ApiError> {
    require_read(&state, &headers)?;
    let history = state
        .store()
        .publish_history_of(&fingerprint, 1000)
        .await
        .map_err(|e| ApiError::database(&e))?;
    Ok(axum::Json(json!({ "fingerprint": fingerprint, "publishing": history })).into_response())
}

/// `POST /webhook/proxy`: stores the delivery like `/webhook`, then waits
/// (bounded) for its new events' outbox rows to settle and answers the
/// predecessor's shape.
async fn proxy(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match proxy_inner(&state, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            state.metrics().webhook_error();
            e.into_response()
        }
    }
}

async fn proxy_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let store = state.store();
    // This delivery's outbox rows are written after this id.
    let after = if state.inner.publisher.is_some() {
        store
            .outbox_max_id()
            .await
            .map_err(|e| ApiError::database(&e))?
    } else {
        0
    };
    let (keys, outcome) = crate::http::receive(state, headers, body).await?;
    let ids = store
        .event_ids(&keys)
        .await
        .map_err(|e| ApiError::database(&e))?;
    let mut pending = 0;
    if let Some(p) = &state.inner.publisher {
        let deadline = started + p.inner.proxy_timeout;
        let mut settled = p.inner.settled.subscribe();
        loop {
            settled.mark_unchanged();
            pending = store
                .outbox_rows_of_events(&ids, after)
                .await
                .map_err(|e| ApiError::database(&e))?;
            if pending == 0 {
                break;
            }
            tokio::select! {
                _ = settled.changed() => {}
                () = tokio::time::sleep_until(deadline) => break,
                // Another replica may settle them: look again now and then.
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
    let history = store
        .publish_history_of_events(&ids)
        .await
        .map_err(|e| ApiError::database(&e))?;
    let mut published = std::collections::HashSet::new();
    let mut filtered = std::collections::HashSet::new();
    for h in &history {
        match h.status.as_str() {
            "success" => {
                published.insert(h.event_id);
            }
            "filtered" => {
                filtered.insert(h.event_id);
            }
            _ => {}
        }
    }
    let filtered_alerts = filtered.difference(&published).count();
    let mut classification_results = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (fingerprint, ..) in &keys {
        if seen.insert(fingerprint.clone())
            && let Some(c) = state.inner.enrichment.stored(fingerprint).await
        {
            classification_results.push(json!({ "fingerprint": fingerprint, "classification": c }));
        }
    }
    let publishing_results: Vec<Value> = history
        .iter()
        .map(|h| {
            json!({
                "fingerprint": h.fingerprint, "target": h.target, "status": h.status,
                "attempt": h.attempt, "latency_ms": h.latency_ms, "detail": h.detail,
            })
        })
        .collect();
    let message = if state.inner.publisher.is_none() {
        "stored; publishing is off (no targets configured)".to_owned()
    } else if pending > 0 {
        format!("stored; {pending} deliveries still in the outbox after the proxy timeout")
    } else {
        "processed".to_owned()
    };
    Ok(axum::Json(json!({
        "message": message,
        "processed_alerts": outcome.processed,
        "saved": outcome.saved,
        "published_alerts": published.len(),
        "filtered_alerts": filtered_alerts,
        "pending_deliveries": pending,
        "classification_results": classification_results,
        "publishing_results": publishing_results,
        "processing_time_ms": started.elapsed().as_millis() as u64,
    }))
    .into_response())
}

//! The alerts the watchdog raises, on top of `keel-notify` (priorities,
//! dedup, debounce, digests, rate limits, retries, spool). Each alert
//! carries when its status change was observed and the VM it is about (its
//! digest subject); the notifier measures "observed → accepted by Telegram"
//! and [`Alerts::configure`] feeds it to the watchdog's metrics.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_notify::{Admitted, Notification, Notifier, NotifierBuilder, TelegramSink};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::status::{VmStatus, human_duration};

/// One open episode of a warning cause: its number (in every key, so the
/// next episode is never taken for a repeat of this one) and the keys
/// raised during it.
#[derive(Debug)]
struct Episode {
    n: u64,
    keys: Vec<String>,
}

#[derive(Debug, Default)]
struct Episodes {
    open: HashMap<String, Episode>,
    /// Episodes ever opened per cause.
    counts: HashMap<String, u64>,
}

/// Builds the watchdog's notifications and hands them to the notifier.
///
/// Alerts come in **episodes**: a cause (`api:compute`, `config`,
/// `web-1:stuck`, `web-1:unreachable`...) opens one when it starts and
/// closes it when it ends. Every key carries the episode number, so dedup
/// and debounce act within one episode only: a second API outage 20 s after
/// the first is a new message. Closing an episode withdraws its warnings
/// still held in the notifier's debounce (the cause ended before anyone had
/// to hear of it: nothing is sent) and otherwise sends one resolved notice,
/// with the same subject, so it never overtakes the warning (keel-notify
/// keeps a subject's states in order).
///
/// VM alerts have the VM as their subject, so a VM that stopped and
/// recovered while the chat's rate limit held both appears once in the
/// digest, with its latest state, and "recovered" never overtakes "is
/// STOPPED".
#[derive(Debug, Clone)]
pub struct Alerts {
    notifier: Notifier,
    episodes: Arc<Mutex<Episodes>>,
    routing: Option<Arc<Mutex<Routing>>>,
    replies: Arc<AtomicU64>,
}

/// What a Telegram sink made by a [`SinkFactory`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SinkFor {
    /// The alerts of VMs whose `topic_id` is this forum topic.
    Topic(i64),
    /// Replies to operator commands sent in this topic (`None`: outside
    /// any topic): no icons, silent, no digests.
    Reply(Option<i64>),
}

impl SinkFor {
    /// The sink's name: `telegram-topic-42`, `telegram-replies`,
    /// `telegram-replies-42`.
    pub fn sink_name(self) -> String {
        match self {
            SinkFor::Topic(t) => format!("telegram-topic-{t}"),
            SinkFor::Reply(None) => REPLY_SINK.to_owned(),
            SinkFor::Reply(Some(t)) => format!("{REPLY_SINK}-{t}"),
        }
    }
}

/// Name (and name prefix) of the sinks that carry command replies; their
/// deliveries are not alerts and are not counted in `alerts_sent_total`.
pub const REPLY_SINK: &str = "telegram-replies";

/// Builds the Telegram sink for a topic or for command replies (same bot,
/// chat and rate limits as the main sink, so every message to the chat
/// shares Telegram's limits).
pub type SinkFactory =
    Arc<dyn Fn(SinkFor) -> Result<TelegramSink, keel_notify::ConfigError> + Send + Sync>;

struct Routing {
    default_sink: String,
    default_topic: Option<i64>,
    factory: SinkFactory,
    vm_sinks: HashMap<String, String>,
    created: HashSet<String>,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing")
            .field("default_sink", &self.default_sink)
            .field("vm_sinks", &self.vm_sinks.len())
            .finish_non_exhaustive()
    }
}

impl Alerts {
    /// Adds the watchdog's accounting to a notifier builder: every alert
    /// Telegram accepts counts in `alerts_sent_total` and its observed →
    /// accepted time goes to `alert_reaction_seconds`.
    pub fn configure(builder: NotifierBuilder, metrics: Metrics) -> NotifierBuilder {
        builder.on_accepted(move |accepted| {
            if accepted.sink.starts_with(REPLY_SINK) {
                return;
            }
            metrics.alert_sent(accepted.priority, Some(accepted.observed_to_accepted));
        })
    }

    /// Alerts through `notifier` (built from [`Alerts::configure`]), to
    /// every sink.
    pub fn new(notifier: Notifier) -> Self {
        Alerts {
            notifier,
            episodes: Arc::default(),
            routing: None,
            replies: Arc::default(),
        }
    }

    /// Routes each VM's alerts to the sink of its topic ([`Alerts::route`])
    /// and everything else to `default_sink` (which posts to
    /// `default_topic`); `factory` makes the topic and reply sinks not among
    /// `existing` (sinks the notifier was built with) when first needed.
    #[must_use]
    pub fn with_routing(
        mut self,
        default_sink: impl Into<String>,
        default_topic: Option<i64>,
        factory: SinkFactory,
        existing: impl IntoIterator<Item = String>,
    ) -> Self {
        self.routing = Some(Arc::new(Mutex::new(Routing {
            default_sink: default_sink.into(),
            default_topic,
            factory,
            vm_sinks: HashMap::new(),
            created: existing.into_iter().collect(),
        })));
        self
    }

    /// The sink for `what`, made and added to the notifier if needed;
    /// `None` without routing or when it cannot be made (logged).
    fn sink_for(&self, what: SinkFor) -> Option<String> {
        let routing = self.routing.as_ref()?;
        let mut routing = routing.lock();
        let name = what.sink_name();
        if routing.created.contains(&name) {
            return Some(name);
        }
        let added = (routing.factory)(what)
            .map_err(|e| e.to_string())
            .and_then(|sink| self.notifier.add_sink(sink).map_err(|e| e.to_string()));
        match added {
            Ok(()) => {
                routing.created.insert(name.clone());
                Some(name)
            }
            Err(error) => {
                tracing::warn!(sink = %name, %error, "cannot add a Telegram sink; using the default one");
                Some(routing.default_sink.clone())
            }
        }
    }

    /// Sends `vm`'s alerts to forum topic `topic` (`None`: the default
    /// topic, `TOPIC_ID`). No effect without routing.
    pub fn route(&self, vm: &str, topic: Option<i64>) {
        let Some(routing) = &self.routing else { return };
        let default = {
            let r = routing.lock();
            (topic.is_none() || topic == r.default_topic).then(|| r.default_sink.clone())
        };
        let sink = match (default, topic) {
            (Some(default), _) => default,
            (None, Some(t)) => match self.sink_for(SinkFor::Topic(t)) {
                Some(sink) => sink,
                None => return,
            },
            (None, None) => return,
        };
        routing.lock().vm_sinks.insert(vm.to_owned(), sink);
    }

    /// Replies `text` to an operator command sent in `thread` (its first
    /// line in bold). Replies go through the notifier, so they share the
    /// chat's rate limits with the alerts; they are critical so that no
    /// debounce delays them, and silent (no notification sound).
    pub fn reply(&self, thread: Option<i64>, text: &str) {
        let n = self.replies.fetch_add(1, Ordering::Relaxed);
        let (title, body) = text.split_once('\n').unwrap_or((text, ""));
        let mut notification = Notification::critical(format!("reply:{n}"), title)
            .body(body)
            .subject(format!("reply:{n}"));
        if let Some(sink) = self.sink_for(SinkFor::Reply(thread)) {
            notification = notification.to(sink);
        }
        match self.notifier.notify(notification) {
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot queue a command reply"),
        }
    }

    /// The notifier (for shutdown and stats).
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Whether `cause` has an open episode.
    pub fn is_open(&self, cause: &str) -> bool {
        self.episodes.lock().open.contains_key(cause)
    }

    fn send(&self, notification: Notification, observed_at: Option<Instant>) {
        let key = notification.key().to_owned();
        let mut notification = match observed_at {
            Some(at) => notification.observed_at(at),
            None => notification,
        };
        if let Some(routing) = &self.routing
            && notification.sinks().is_empty()
        {
            let routing = routing.lock();
            let vm = notification
                .fields()
                .iter()
                .find(|(k, _)| k == "vm")
                .map(|(_, v)| v.as_str());
            let sink = vm
                .and_then(|vm| routing.vm_sinks.get(vm))
                .unwrap_or(&routing.default_sink)
                .clone();
            drop(routing);
            notification = notification.to(sink);
        }
        match self.notifier.notify(notification) {
            Ok(admitted @ (Admitted::Deduplicated | Admitted::Dropped)) => {
                tracing::debug!(key, ?admitted, "alert not queued");
            }
            Ok(admitted) => tracing::debug!(key, ?admitted, "alert admitted"),
            Err(e) => tracing::debug!(key, error = %e, "alert not admitted"),
        }
    }

    /// Raises an alert within `cause`'s episode (opening one if none is
    /// open): `build` gets the key to use (`{cause}#{episode}{suffix}`).
    fn raise(
        &self,
        cause: &str,
        suffix: &str,
        observed_at: Option<Instant>,
        build: impl FnOnce(String) -> Notification,
    ) {
        let key = {
            let mut episodes = self.episodes.lock();
            let Episodes { open, counts } = &mut *episodes;
            let episode = open.entry(cause.to_owned()).or_insert_with(|| {
                let n = counts.entry(cause.to_owned()).or_insert(0);
                *n += 1;
                Episode {
                    n: *n,
                    keys: Vec::new(),
                }
            });
            let key = format!("{cause}#{}{suffix}", episode.n);
            if !episode.keys.contains(&key) {
                episode.keys.push(key.clone());
            }
            key
        };
        self.send(build(key).subject(cause), observed_at);
    }

    /// Ends `cause`'s episode: withdraws its alerts still held in the
    /// debounce and, when one of them was already released, sends
    /// `resolved` (built from its key). Returns whether a notice was sent;
    /// nothing happens when no episode is open.
    fn end(
        &self,
        cause: &str,
        observed_at: Option<Instant>,
        resolved: impl FnOnce(String) -> Notification,
    ) -> bool {
        let Some(episode) = self.episodes.lock().open.remove(cause) else {
            return false;
        };
        let mut released = false;
        for key in &episode.keys {
            if self.notifier.withdraw(key) {
                tracing::debug!(key, "alert withdrawn: its cause ended during the debounce");
            } else {
                released = true;
            }
        }
        if released {
            let key = format!("{cause}#{}:resolved", episode.n);
            self.send(resolved(key).subject(cause).resolves(), observed_at);
        }
        released
    }

    /// Critical: `vm` is `status` (STOPPED, CRASHED, ERROR); starting it.
    pub fn critical_status(&self, vm: &str, status: VmStatus, observed_at: Instant) {
        self.down(vm, status, observed_at, true);
    }

    /// Critical: `vm` is `status`; with `starting` false (`auto_start:
    /// false` in vms.yaml) the body says it is not started.
    pub fn down(&self, vm: &str, status: VmStatus, observed_at: Instant, starting: bool) {
        let body = if starting {
            "Starting it now; polling every few seconds until it is RUNNING."
        } else {
            "auto_start is off for this VM (vms.yaml): it is not started; start it by hand."
        };
        let n = Notification::critical(format!("{vm}:{status}"), format!("VM {vm} is {status}"))
            .body(body)
            .field("vm", vm)
            .field("status", status.as_str())
            .subject(vm);
        self.send(n, Some(observed_at));
    }

    /// Critical: `vm` is still `status` `down_for` after its alert, after
    /// `attempts` start attempts (reminder number `k` of incident `n`).
    pub fn still_down(
        &self,
        vm: &str,
        status: VmStatus,
        down_for: Duration,
        attempts: u32,
        (n, k): (u64, u32),
        observed_at: Instant,
    ) {
        let n = Notification::critical(
            format!("{vm}:still-down:{n}:{k}"),
            format!(
                "VM {vm} still {status} after {} ({attempts} start attempts)",
                human_duration(down_for)
            ),
        )
        .body("The watchdog keeps starting it; it may need a person.")
        .field("vm", vm)
        .field("status", status.as_str())
        .field("attempts", attempts.to_string())
        .subject(vm);
        self.send(n, Some(observed_at));
    }

    /// Critical: `vm` went down `restarts` times within `window`: it is
    /// not restarted for `cool_off`. Ended by [`Alerts::flap_over`].
    pub fn needs_intervention(
        &self,
        vm: &str,
        restarts: usize,
        window: Duration,
        cool_off: Duration,
        observed_at: Instant,
    ) {
        self.raise(&format!("{vm}:flapping"), "", Some(observed_at), |key| {
            Notification::critical(
                key,
                format!(
                    "VM {vm} needs intervention: down {restarts} times in {}",
                    human_duration(window)
                ),
            )
            .body(format!(
                "Not restarting it for {}; restarts resume then.",
                human_duration(cool_off)
            ))
            .field("vm", vm)
        });
    }

    /// Ends `vm`'s flapping episode: restarts resume.
    pub fn flap_over(&self, vm: &str, observed_at: Instant) {
        self.end(&format!("{vm}:flapping"), Some(observed_at), |key| {
            Notification::info(key, format!("VM {vm}: cool-off over, restarting it again"))
                .field("vm", vm)
        });
    }

    /// Info: `vm` is running again after `downtime` (incident number `n`).
    pub fn recovered(&self, vm: &str, downtime: Duration, n: u64, observed_at: Instant) {
        let n = Notification::info(
            format!("{vm}:recovered:{n}"),
            format!("VM {vm} recovered after {}", human_duration(downtime)),
        )
        .field("vm", vm)
        .field("status", VmStatus::Running.as_str())
        .field("downtime", human_duration(downtime))
        .subject(vm)
        .resolves();
        self.send(n, Some(observed_at));
    }

    /// Critical: `vm`'s port probe failed `failures` times in a row while
    /// the cloud API cannot confirm its status (its last known one is
    /// `last_status`). Ended by [`Alerts::confirmed`].
    pub fn unreachable(
        &self,
        vm: &str,
        failures: u32,
        last_status: Option<VmStatus>,
        observed_at: Instant,
    ) {
        let last = last_status.map_or("unknown", VmStatus::as_str);
        self.raise(&format!("{vm}:unreachable"), "", Some(observed_at), |key| {
            Notification::critical(
                key,
                format!("VM {vm} unreachable (API unavailable, cannot confirm status)"),
            )
            .body(format!(
                "The port probe failed {failures} times in a row and the cloud API does not \
                 answer; last status seen: {last} (not current). It is started as soon as the \
                 API confirms it is down."
            ))
            .field("vm", vm)
            .field("last_known_status", last)
        });
    }

    /// Ends `vm`'s "unreachable" episode, if any: the API answered with
    /// `status` (a critical status is alerted as such; its own alert follows
    /// and this notice only says the status is known again).
    pub fn confirmed(&self, vm: &str, status: VmStatus, observed_at: Instant) {
        self.end(&format!("{vm}:unreachable"), Some(observed_at), |key| {
            Notification::info(
                key,
                format!("VM {vm}: status confirmed by the API ({status})"),
            )
            .field("vm", vm)
            .field("status", status.as_str())
        });
    }

    /// Warning: `vm` has been `status` for `stuck_for`. Ended by
    /// [`Alerts::unstuck`].
    pub fn stuck(&self, vm: &str, status: VmStatus, stuck_for: Duration, observed_at: Instant) {
        self.raise(&format!("{vm}:stuck"), "", Some(observed_at), |key| {
            Notification::warning(
                key,
                format!(
                    "VM {vm} stuck in {status} for {}",
                    human_duration(stuck_for)
                ),
            )
            .field("vm", vm)
            .field("status", status.as_str())
        });
    }

    /// Ends `vm`'s "stuck" episode, if any: it left the status it was stuck
    /// in for `status`.
    pub fn unstuck(&self, vm: &str, status: VmStatus, observed_at: Instant) {
        self.end(&format!("{vm}:stuck"), Some(observed_at), |key| {
            Notification::info(key, format!("VM {vm} no longer stuck: now {status}"))
                .field("vm", vm)
                .field("status", status.as_str())
        });
    }

    /// Warning: the API does not know `vm` (404) although it is configured.
    /// Ended by [`Alerts::found`].
    pub fn missing(&self, vm: &str) {
        self.raise(&format!("{vm}:missing"), "", None, |key| {
            Notification::warning(key, format!("VM {vm} not found"))
                .body("The cloud API answers 404 for this VM; check vms.yaml.")
                .field("vm", vm)
        });
    }

    /// Ends `vm`'s "not found" episode, if any.
    pub fn found(&self, vm: &str) {
        self.end(&format!("{vm}:missing"), None, |key| {
            Notification::info(key, format!("VM {vm} found again")).field("vm", vm)
        });
    }

    /// Warning: starting `vm` failed for good (after retries). One per
    /// incident of the VM (`incident`); it ends with the incident.
    pub fn start_failed(&self, vm: &str, incident: u64, error: &str) {
        let n = Notification::warning(
            format!("{vm}:start-failed:{incident}"),
            format!("Could not start VM {vm}"),
        )
        .body(error)
        .field("vm", vm)
        .subject(vm);
        self.send(n, None);
    }

    /// Warning: the circuit breaker of API `group` opened: statuses are kept
    /// as last seen (not presented as current) and checks back off. Ended
    /// by [`Alerts::api_up`].
    pub fn api_down(&self, group: &str) {
        self.raise(&format!("api:{group}"), "", None, |key| {
            Notification::warning(key, format!("Cloud API unavailable ({group})")).body(
                "Its failure rate opened the circuit breaker; the last known statuses are kept \
                 (not current) and checks back off.",
            )
        });
    }

    /// Ends the outage episode of `group`: withdrawn if its warning was
    /// still held, else "available again".
    pub fn api_up(&self, group: &str) {
        self.end(&format!("api:{group}"), None, |key| {
            Notification::info(key, format!("Cloud API available again ({group})"))
        });
    }

    /// Warning: alerts cannot reach Telegram (its breaker opened). It is
    /// delivered, with its resolution, once Telegram takes messages again,
    /// so the chat learns that alerts may have been late.
    pub fn telegram_failing(&self) {
        self.raise("telegram", "", None, |key| {
            Notification::warning(key, "Telegram was failing; alerts were delayed").body(
                "The watchdog could not deliver alerts for a while; check the log and the spool.",
            )
        });
    }

    /// Ends the Telegram-failing episode.
    pub fn telegram_ok(&self) {
        self.end("telegram", None, |key| {
            Notification::info(key, "Telegram delivers again")
        });
    }

    /// Warning: `vms.yaml` changed into something invalid; the running
    /// configuration stays. One per distinct error within the episode;
    /// ended by [`Alerts::config_valid`].
    pub fn config_invalid(&self, error: &str) {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        error.hash(&mut hasher);
        let suffix = format!(":{:016x}", hasher.finish());
        self.raise("config", &suffix, None, |key| {
            Notification::warning(
                key,
                "vms.yaml is invalid; keeping the running configuration",
            )
            .body(error)
        });
    }

    /// Ends the "vms.yaml is invalid" episode: its held warnings are
    /// withdrawn, or "vms.yaml is valid again" goes out.
    pub fn config_valid(&self) {
        self.end("config", None, |key| {
            Notification::info(key, "vms.yaml is valid again; configuration applied")
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use keel_notify::{Message, Priority, Sink, SinkError};
    use parking_lot::Mutex;

    #[derive(Clone, Default)]
    struct Inbox(Arc<Mutex<Vec<String>>>);

    impl Sink for Inbox {
        fn name(&self) -> &str {
            "inbox"
        }

        async fn send(&self, message: &Message) -> Result<(), SinkError> {
            self.0.lock().push(message.display_title());
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn accepted_alerts_feed_the_reaction_metrics() {
        let metrics = Metrics::new();
        let inbox = Inbox::default();
        let notifier = Alerts::configure(Notifier::builder(), metrics.clone())
            .sink(inbox.clone())
            .build()
            .unwrap();
        let alerts = Alerts::new(notifier.clone());
        let observed = Instant::now();
        tokio::time::advance(Duration::from_secs(2)).await;
        alerts.critical_status("vm-1", VmStatus::Stopped, observed);
        assert!(notifier.flush(Duration::from_secs(1)).await);
        assert_eq!(*inbox.0.lock(), ["VM vm-1 is STOPPED"]);
        assert_eq!(metrics.alerts_sent(Priority::Critical), 1);
        let text = metrics_text(&metrics);
        assert!(
            text.contains(r#"alert_reaction_seconds_sum{priority="critical"} 2.0"#),
            "{text}"
        );
    }

    fn metrics_text(metrics: &Metrics) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }
}

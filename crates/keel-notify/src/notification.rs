//! What a caller hands to the notifier ([`Notification`]) and what a sink
//! receives ([`Message`]).

use std::fmt;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How urgent a notification is.
///
/// The queue always sends higher priorities first (critical, then warning,
/// then info; first in, first out within one priority). Critical
/// notifications bypass the dedup window and, by default, the debounce.
///
/// The derived order makes `Critical` the greatest: `Priority::Critical >
/// Priority::Info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Informational (a VM recovered). Debounced 10 s by default.
    Info,
    /// Needs attention soon (a transition is stuck). Debounced 30 s by default.
    Warning,
    /// Needs action now (a VM stopped or crashed). Always goes out.
    Critical,
}

impl Priority {
    /// Every priority, most urgent first (the order the queue serves them).
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Warning, Priority::Info];

    /// A short, stable, lowercase name, usable as a bounded metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Warning => "warning",
            Priority::Info => "info",
        }
    }

    /// 0 for critical, 1 for warning, 2 for info: the queue lane index.
    pub(crate) const fn lane(self) -> usize {
        match self {
            Priority::Critical => 0,
            Priority::Warning => 1,
            Priority::Info => 2,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a notification stands in the life of the incident it reports, for
/// sinks that track incidents (PagerDuty's `event_action`, Rootly's
/// `ended_at`). Chat sinks show every phase the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The problem started (or is still going on). The default.
    #[default]
    Trigger,
    /// Someone is on it.
    Acknowledge,
    /// The problem is over: closes what the triggers of the same subject
    /// opened.
    Resolve,
}

impl Phase {
    /// `"trigger"`, `"acknowledge"` or `"resolve"` (PagerDuty's names).
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Trigger => "trigger",
            Phase::Acknowledge => "acknowledge",
            Phase::Resolve => "resolve",
        }
    }

    fn is_trigger(&self) -> bool {
        *self == Phase::Trigger
    }
}

/// One alert, as the caller describes it.
///
/// * `key` is the dedup key: repeats of the same key inside the dedup window
///   are suppressed and, inside the debounce window, collapsed into one
///   message. Put everything that makes two alerts "the same" in it (for
///   instance `vm-7:STOPPED`).
/// * `title`, `body` and `fields` are plain text: each sink escapes them for
///   its own format.
/// * `sinks` optionally restricts delivery to the named sinks (all sinks when
///   empty).
/// * `subject` (optional) names what the notification is about (a VM): when
///   several notifications wait for one destination and go out as one
///   [`Digest`](crate::Digest), those with the same subject share one line showing the
///   latest state and the count (a VM that stopped and recovered while
///   waiting appears once). Without a subject, the dedup key is used.
/// * `observed_at` is when the program saw the change; the notifier
///   measures "observed → accepted by the sink" from it (default: when
///   [`Notifier::notify`](crate::Notifier::notify) was called). It is not
///   serialised; the spool keeps its age instead.
///
/// Building one costs a few small allocations; it is moved, never copied,
/// through the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    key: String,
    priority: Priority,
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    fields: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sinks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(default, skip_serializing_if = "Phase::is_trigger")]
    phase: Phase,
    #[serde(skip)]
    observed_at: Option<Instant>,
}

impl Notification {
    /// A notification with a dedup key, a priority and a title; no body, no
    /// fields, for every sink.
    pub fn new(key: impl Into<String>, priority: Priority, title: impl Into<String>) -> Self {
        Notification {
            key: key.into(),
            priority,
            title: title.into(),
            body: String::new(),
            fields: Vec::new(),
            sinks: Vec::new(),
            subject: None,
            phase: Phase::Trigger,
            observed_at: None,
        }
    }

    /// Shorthand for [`Notification::new`] with [`Priority::Critical`].
    pub fn critical(key: impl Into<String>, title: impl Into<String>) -> Self {
        Self::new(key, Priority::Critical, title)
    }

    /// Shorthand for [`Notification::new`] with [`Priority::Warning`].
    pub fn warning(key: impl Into<String>, title: impl Into<String>) -> Self {
        Self::new(key, Priority::Warning, title)
    }

    /// Shorthand for [`Notification::new`] with [`Priority::Info`].
    pub fn info(key: impl Into<String>, title: impl Into<String>) -> Self {
        Self::new(key, Priority::Info, title)
    }

    /// Sets the body (plain text; may span lines).
    #[must_use]
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    /// Appends one key/value field. Fields keep the order they were added in.
    #[must_use]
    pub fn field(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.fields.push((key.into(), value.into()));
        self
    }

    /// Restricts delivery to the sink named `sink` (call again to add more).
    /// [`Notifier::notify`](crate::Notifier::notify) rejects a name no sink
    /// has.
    #[must_use]
    pub fn to(mut self, sink: impl Into<String>) -> Self {
        self.sinks.push(sink.into());
        self
    }

    /// Sets what the notification is about (see the type's documentation):
    /// inside a digest, notifications with one subject share one line.
    #[must_use]
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Marks this notification as the end of its subject's incident
    /// ([`Phase::Resolve`]): a paging sink closes what the triggers opened.
    #[must_use]
    pub fn resolves(mut self) -> Self {
        self.phase = Phase::Resolve;
        self
    }

    /// Sets the incident phase (see [`Phase`]).
    #[must_use]
    pub fn with_phase(mut self, phase: Phase) -> Self {
        self.phase = phase;
        self
    }

    /// The incident phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Sets when the program observed the change this notification reports
    /// (tokio's clock). The notifier records "observed → accepted by the
    /// sink" from it.
    #[must_use]
    pub fn observed_at(mut self, at: Instant) -> Self {
        self.observed_at = Some(at);
        self
    }

    /// The dedup key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The subject digests group by: the one set with
    /// [`subject`](Self::subject), else the dedup key.
    pub fn subject_key(&self) -> &str {
        self.subject.as_deref().unwrap_or(&self.key)
    }

    /// When the change was observed, if set (the notifier sets it on
    /// admission when the caller did not).
    pub fn observed(&self) -> Option<Instant> {
        self.observed_at
    }

    pub(crate) fn set_observed_if_unset(&mut self, at: Instant) {
        self.observed_at.get_or_insert(at);
    }

    /// The priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The title (plain text).
    pub fn title(&self) -> &str {
        &self.title
    }

    /// The body (plain text, possibly empty).
    pub fn body_text(&self) -> &str {
        &self.body
    }

    /// The fields, in the order they were added.
    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }

    /// The sinks this notification is restricted to (empty: all sinks).
    pub fn sinks(&self) -> &[String] {
        &self.sinks
    }
}

/// A notification as a sink receives it: the latest state of the
/// notification plus what the queue knows about it.
///
/// `count` is how many notifications the debounce collapsed into this one
/// (1 when nothing was collapsed); [`Message::display_title`] renders it the
/// way every Keel sink shows it, `"title (×4)"`. `id` is unique per delivery
/// (one notification sent to two sinks has two ids) and stays the same across
/// retries and requeues, so a sink that sends one message in several parts can
/// resume where it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub(crate) id: u64,
    pub(crate) notification: Notification,
    pub(crate) count: u32,
}

impl Message {
    /// A message for a sink test or a custom dispatcher: `count` is clamped to
    /// at least 1.
    pub fn new(id: u64, notification: Notification, count: u32) -> Self {
        Message {
            id,
            notification,
            count: count.max(1),
        }
    }

    /// The delivery id: unique per (notification, sink), stable across
    /// retries.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The notification (its latest state when debounced).
    pub fn notification(&self) -> &Notification {
        &self.notification
    }

    /// How many notifications were collapsed into this message (≥ 1).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The dedup key.
    pub fn key(&self) -> &str {
        &self.notification.key
    }

    /// The priority.
    pub fn priority(&self) -> Priority {
        self.notification.priority
    }

    /// The title as given, without the count.
    pub fn title(&self) -> &str {
        &self.notification.title
    }

    /// The body (plain text).
    pub fn body(&self) -> &str {
        &self.notification.body
    }

    /// The fields, in order.
    pub fn fields(&self) -> &[(String, String)] {
        &self.notification.fields
    }

    /// The title with the collapse count: `"VM stuck (×4)"` when four
    /// notifications were collapsed, the bare title when there was one.
    pub fn display_title(&self) -> String {
        if self.count > 1 {
            format!("{} (×{})", self.notification.title, self.count)
        } else {
            self.notification.title.clone()
        }
    }

    /// One line of plain text for a digest: the title with the count, the
    /// body's lines joined with `" / "`, then `key: value` fields joined
    /// with `" · "`. Nothing is cut: a sink that cannot fit a line sends
    /// the message alone.
    pub fn to_line(&self) -> String {
        let mut line = self.display_title();
        let body = self.notification.body.trim();
        if !body.is_empty() {
            line.push_str(" — ");
            line.push_str(&body.lines().map(str::trim).collect::<Vec<_>>().join(" / "));
        }
        for (i, (k, v)) in self.notification.fields.iter().enumerate() {
            line.push_str(if i == 0 { " — " } else { " · " });
            line.push_str(k);
            line.push_str(": ");
            line.push_str(v);
        }
        line
    }

    /// When the change was observed (see [`Notification::observed_at`]).
    pub fn observed_at(&self) -> Option<Instant> {
        self.notification.observed_at
    }

    /// A plain-text rendering (title line, body, then `key: value` lines),
    /// for sinks without markup.
    pub fn to_plain_text(&self) -> String {
        let mut text = self.display_title();
        if !self.notification.body.is_empty() {
            text.push('\n');
            text.push_str(&self.notification.body);
        }
        if !self.notification.fields.is_empty() {
            text.push('\n');
            for (k, v) in &self.notification.fields {
                text.push('\n');
                text.push_str(k);
                text.push_str(": ");
                text.push_str(v);
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_order_and_names() {
        assert!(Priority::Critical > Priority::Warning && Priority::Warning > Priority::Info);
        assert_eq!(
            Priority::ALL.map(Priority::lane),
            [0, 1, 2],
            "lanes follow the serving order"
        );
        assert_eq!(Priority::Warning.to_string(), "warning");
        assert_eq!(
            serde_json::to_string(&Priority::Critical).unwrap(),
            "\"critical\""
        );
    }

    #[test]
    fn message_renders_count_and_fields() {
        let n = Notification::warning("vm-1:stuck", "VM stuck")
            .body("STARTING for 5m")
            .field("vm", "vm-1")
            .field("zone", "ru-central1-a");
        let one = Message::new(1, n.clone(), 0);
        assert_eq!(one.count(), 1);
        assert_eq!(one.display_title(), "VM stuck");
        let four = Message::new(2, n, 4);
        assert_eq!(four.display_title(), "VM stuck (×4)");
        assert_eq!(
            four.to_plain_text(),
            "VM stuck (×4)\nSTARTING for 5m\n\nvm: vm-1\nzone: ru-central1-a"
        );
    }

    #[test]
    fn notification_serde_round_trip_keeps_field_order() {
        let n = Notification::info("k", "t")
            .field("b", "2")
            .field("a", "1")
            .to("ops");
        let json = serde_json::to_string(&n).unwrap();
        let back: Notification = serde_json::from_str(&json).unwrap();
        assert_eq!(back, n);
        assert_eq!(back.fields()[0].0, "b");
    }
}

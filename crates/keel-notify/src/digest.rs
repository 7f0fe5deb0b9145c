//! [`Digest`]: several waiting messages for one destination sent as one.
//!
//! When messages for a sink wait behind its rate limit (or while it was
//! down), the next send takes everything waiting for it, merges the
//! messages that share a subject ([`Notification::subject`]) into one entry
//! carrying the latest state and the summed count, and asks the sink how
//! many entries fit in one message ([`Sink::digest_fit`]). Those go out as
//! one digest; the rest stay queued, in order, for the next send. Entries
//! are in serving order: critical first, then warning, then info, first in
//! first out within a priority; a merged entry keeps the place of its most
//! urgent member, so a "down" is never overtaken by its "recovered".
//!
//! [`Notification::subject`]: crate::Notification::subject
//! [`Sink::digest_fit`]: crate::Sink::digest_fit

use std::collections::HashMap;

use crate::notification::{Message, Priority};
use crate::queue::Delivery;

/// Several messages for one destination, sent as one (see the module
/// documentation). Built by the notifier; a sink renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    id: u64,
    entries: Vec<Message>,
}

impl Digest {
    /// A digest of `entries` (in the order they are shown), for a sink test
    /// or a custom dispatcher. `id` is stable across retries.
    pub fn new(id: u64, entries: Vec<Message>) -> Self {
        Digest { id, entries }
    }

    /// The delivery id: the id of the first entry when built by the
    /// notifier; stable across retries of the same digest.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The entries, one line each, most urgent first.
    pub fn entries(&self) -> &[Message] {
        &self.entries
    }

    /// How many events the digest stands for: the sum of the entries'
    /// counts (a merged or debounced entry counts every notification in
    /// it).
    pub fn events(&self) -> u32 {
        self.entries
            .iter()
            .fold(0u32, |n, m| n.saturating_add(m.count()))
    }

    /// Events per priority, in [`Priority::ALL`] order (critical, warning,
    /// info).
    pub fn events_by_priority(&self) -> [u32; 3] {
        let mut out = [0u32; 3];
        for m in &self.entries {
            let lane = m.priority().lane();
            out[lane] = out[lane].saturating_add(m.count());
        }
        out
    }

    /// The most urgent priority among the entries.
    pub fn priority(&self) -> Priority {
        self.entries
            .iter()
            .map(Message::priority)
            .max()
            .unwrap_or(Priority::Info)
    }

    /// The header line every Keel sink shows: `"12 alerts: 3 critical, 9
    /// info"`.
    pub fn header(&self) -> String {
        let events = self.events();
        let mut out = format!("{events} alert{}", if events == 1 { "" } else { "s" });
        let parts: Vec<String> = Priority::ALL
            .iter()
            .zip(self.events_by_priority())
            .filter(|(_, n)| *n > 0)
            .map(|(p, n)| format!("{n} {p}"))
            .collect();
        if !parts.is_empty() {
            out.push_str(": ");
            out.push_str(&parts.join(", "));
        }
        out
    }

    /// A plain-text rendering: the header, then one line per entry
    /// (`"[critical] VM vm-3 is STOPPED — vm: vm-3"`).
    pub fn to_plain_text(&self) -> String {
        let mut out = self.header();
        for m in &self.entries {
            out.push('\n');
            out.push_str(&plain_line(m));
        }
        out
    }
}

/// One entry of [`Digest::to_plain_text`].
pub fn plain_line(message: &Message) -> String {
    format!("[{}] {}", message.priority(), message.to_line())
}

/// How many items fit under `limit` when the message costs `header` plus
/// the sum of the items' costs (`costs`, in order). At least the items that
/// fit, possibly 0.
pub fn fit_by_cost(limit: usize, header: usize, costs: impl IntoIterator<Item = usize>) -> usize {
    let mut used = header;
    let mut n = 0;
    for c in costs {
        used = used.saturating_add(c);
        if used > limit {
            break;
        }
        n += 1;
    }
    n
}

/// One line of a digest being assembled: the merged message and the
/// deliveries it stands for.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) message: Message,
    pub(crate) deliveries: Vec<Delivery>,
}

/// Merges deliveries (in serving order) by subject: one entry per subject,
/// at the place of its first (most urgent) delivery, carrying the content
/// of its latest delivery (the highest sequence number: queued last) and
/// the summed count.
pub(crate) fn merge(deliveries: Vec<Delivery>) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::with_capacity(deliveries.len());
    let mut by_subject: HashMap<String, usize> = HashMap::new();
    for d in deliveries {
        let subject = d.message.notification().subject_key().to_owned();
        match by_subject.get(&subject) {
            Some(&i) => {
                let e = &mut entries[i];
                let latest = e.deliveries.iter().map(Delivery::seq).max().unwrap_or(0);
                if d.seq() > latest {
                    e.message.notification = d.message.notification.clone();
                }
                e.message.count = e.message.count.saturating_add(d.message.count);
                e.deliveries.push(d);
            }
            None => {
                by_subject.insert(subject, entries.len());
                entries.push(Entry {
                    message: d.message.clone(),
                    deliveries: vec![d],
                });
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::Notification;
    use tokio::time::Instant;

    fn delivery(seq: u64, n: Notification) -> Delivery {
        Delivery {
            sink: 0,
            message: Message::new(seq, n, 1),
            queued_at: Instant::now(),
            attempts: 0,
            solo: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn merge_keeps_the_first_place_and_the_latest_state() {
        let down = Notification::critical("vm-7:STOPPED", "VM vm-7 is STOPPED").subject("vm-7");
        let other = Notification::critical("vm-8:STOPPED", "VM vm-8 is STOPPED").subject("vm-8");
        let up = Notification::info("vm-7:recovered:1", "VM vm-7 recovered").subject("vm-7");
        // Serving order: criticals, then the info.
        let entries = merge(vec![delivery(1, down), delivery(2, other), delivery(3, up)]);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].message.display_title(), "VM vm-7 recovered (×2)");
        assert_eq!(entries[0].message.id(), 1, "the place of the first");
        assert_eq!(entries[0].deliveries.len(), 2);
        assert_eq!(entries[1].message.title(), "VM vm-8 is STOPPED");
    }

    #[test]
    fn header_counts_events_by_priority() {
        let d = Digest::new(
            1,
            vec![
                Message::new(1, Notification::critical("a", "A").field("vm", "a"), 2),
                Message::new(2, Notification::info("b", "B").body("x\ny"), 1),
            ],
        );
        assert_eq!(d.events(), 3);
        assert_eq!(d.events_by_priority(), [2, 0, 1]);
        assert_eq!(d.priority(), Priority::Critical);
        assert_eq!(
            d.to_plain_text(),
            "3 alerts: 2 critical, 1 info\n[critical] A (×2) — vm: a\n[info] B — x / y"
        );
    }

    #[test]
    fn fit_by_cost_stops_before_the_limit() {
        assert_eq!(fit_by_cost(100, 10, [30, 30, 30, 30]), 3);
        assert_eq!(fit_by_cost(100, 10, [91]), 0);
        assert_eq!(fit_by_cost(100, 10, []), 0);
    }
}

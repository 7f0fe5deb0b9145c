//! Label values that cannot break the exposition, and a label family whose
//! cardinality is bounded.
//!
//! prometheus-client writes label values as they are: a value holding `"`
//! ends the value early and makes the whole `/metrics` page unparsable, and
//! a newline injects a line of the attacker's choosing. Every value that
//! comes from outside the program (an alert name, a VM name from a file, a
//! route) goes through [`LabelValue`] or [`LabelFamily`], which cap its
//! length and escape it as the text format requires.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use keel_core::{Clock, ConfigError};
use parking_lot::Mutex;
use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelSetEncoder, LabelValueEncoder,
    MetricEncoder,
};
use prometheus_client::metrics::family::MetricConstructor;
use prometheus_client::metrics::{MetricType, TypedMetric};
use tokio::time::Instant;

/// Longest label value kept, in bytes: longer values are cut on the last
/// character boundary at or below it. Prometheus has no limit, but a 1 MB
/// alert name would make every scrape carry it.
pub const MAX_LABEL_VALUE_LEN: usize = 256;

/// The value that replaces the label values of a set that found no free
/// slot in a [`LabelFamily`].
pub const OTHER: &str = "other";

/// Distinct label sets a [`LabelFamily`] keeps unless told otherwise.
pub const DEFAULT_MAX_SETS: usize = 1000;

/// How long a label set must go unused before it gives its slot to a new
/// one, unless told otherwise.
pub const DEFAULT_IDLE_AFTER: Duration = Duration::from_secs(3600);

/// `value` cut to at most [`MAX_LABEL_VALUE_LEN`] bytes, on a character
/// boundary. Free when the value is short enough.
pub fn cap_label_value(value: &str) -> &str {
    if value.len() <= MAX_LABEL_VALUE_LEN {
        return value;
    }
    let mut end = MAX_LABEL_VALUE_LEN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// Writes `value` escaped as the Prometheus and OpenMetrics text formats
/// require inside a quoted label value: `\` → `\\`, `"` → `\"`, newline →
/// `\n`. Every other character (NUL and other control characters included)
/// is valid UTF-8 in a label value and is written as is.
pub fn write_escaped_label_value<W: fmt::Write + ?Sized>(out: &mut W, value: &str) -> fmt::Result {
    let mut start = 0;
    for (i, byte) in value.bytes().enumerate() {
        let escaped = match byte {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            b'\n' => "\\n",
            _ => continue,
        };
        out.write_str(&value[start..i])?;
        out.write_str(escaped)?;
        start = i + 1;
    }
    out.write_str(&value[start..])
}

/// A label value safe to put in any label set: capped at
/// [`MAX_LABEL_VALUE_LEN`] bytes when made, escaped when encoded.
///
/// Use it as the field type of a `#[derive(EncodeLabelSet)]` struct for
/// values the program does not control but whose number is bounded some
/// other way (VM names from a configuration file). For values whose number
/// is not bounded, use a [`LabelFamily`].
///
/// ```
/// use keel_telemetry::LabelValue;
/// use keel_telemetry::prometheus_client::encoding::EncodeLabelSet;
/// use keel_telemetry::prometheus_client::metrics::counter::Counter;
/// use keel_telemetry::prometheus_client::metrics::family::Family;
/// use keel_telemetry::prometheus_client::registry::Registry;
///
/// #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
/// struct VmLabels {
///     vm: LabelValue,
/// }
///
/// let checks = Family::<VmLabels, Counter>::default();
/// let mut registry = Registry::default();
/// registry.register("checks", "Checks", checks.clone());
/// checks.get_or_create(&VmLabels { vm: "web \"1\"".into() }).inc();
/// let mut text = String::new();
/// keel_telemetry::prometheus_client::encoding::text::encode(&mut text, &registry)?;
/// assert!(text.contains(r#"checks_total{vm="web \"1\""} 1"#));
/// # Ok::<(), std::fmt::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelValue(Arc<str>);

impl LabelValue {
    /// `value`, capped.
    pub fn new(value: &str) -> Self {
        LabelValue(cap_label_value(value).into())
    }

    /// The (capped, unescaped) value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for LabelValue {
    fn from(value: &str) -> Self {
        LabelValue::new(value)
    }
}

impl From<String> for LabelValue {
    fn from(value: String) -> Self {
        if value.len() <= MAX_LABEL_VALUE_LEN {
            LabelValue(value.into())
        } else {
            LabelValue::new(&value)
        }
    }
}

impl fmt::Display for LabelValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        write_escaped_label_value(encoder, &self.0)
    }
}

/// A metric family whose label values come from outside the program, with
/// the number of series bounded.
///
/// * At most `max_sets` distinct label sets get their own series. A new set
///   that finds every slot taken is counted under the **overflow set**: its
///   values replaced by [`OTHER`], except those of the labels named in
///   [`LabelFamilyBuilder::keep`] (bounded values the program controls,
///   such as `status="firing"`). Overflow sets take no slot and are never
///   dropped.
/// * A set not used for `idle_after` gives its slot back when a new set
///   needs one: its series disappears from the exposition (as a Prometheus
///   exporter's TTL does); if it comes back later it starts from zero, which
///   `rate()` reads as a counter reset. Idle sets are looked for only when a
///   new set finds the family full, and at most once every `idle_after /
///   60`, so a flood of new sets costs one scan per period, not one per
///   sample.
/// * Values are capped at [`MAX_LABEL_VALUE_LEN`] bytes and escaped when
///   encoded, so no value can break the page or inject a sample.
///
/// `N` is the number of labels, checked at compile time by
/// [`get_or_create`](Self::get_or_create). `M` is any prometheus-client
/// metric that is cheap to clone and shares its value between clones
/// (`Counter`, `Gauge`, `Histogram`); `C` makes new metrics (a function
/// returning a histogram with its buckets, say).
///
/// Cost: one mutex and one hash of the values per
/// [`get_or_create`](Self::get_or_create), no allocation for a set already
/// present; encoding copies the list of series (reference counts) under
/// the mutex and encodes without holding it.
///
/// Cloning is cheap and shares the family: register one clone, record
/// through another.
///
/// ```
/// use std::time::Duration;
/// use keel_telemetry::LabelFamily;
/// use keel_telemetry::prometheus_client::metrics::counter::Counter;
/// use keel_telemetry::prometheus_client::registry::Registry;
///
/// let events = LabelFamily::<Counter, 3>::builder(["alertname", "namespace", "status"])
///     .max_sets(2)
///     .idle_after(Duration::from_secs(3600))
///     .keep(["status"])
///     .build()?;
/// let mut registry = Registry::with_prefix("alert_history");
/// registry.register("webhook_events", "Alerts received", events.clone());
///
/// events.get_or_create(["Disk \"root\" full", "prod", "firing"]).inc();
/// events.get_or_create(["Down", "prod", "firing"]).inc();
/// events.get_or_create(["Third", "dev", "firing"]).inc(); // no slot left
///
/// let mut text = String::new();
/// keel_telemetry::prometheus_client::encoding::text::encode(&mut text, &registry)?;
/// assert!(text.contains(r#"alertname="Disk \"root\" full",namespace="prod",status="firing"} 1"#));
/// assert!(text.contains(r#"alertname="other",namespace="other",status="firing"} 1"#));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LabelFamily<M, const N: usize, C = fn() -> M> {
    inner: Arc<Inner<M, N, C>>,
}

struct Inner<M, const N: usize, C> {
    names: [&'static str; N],
    keep: [bool; N],
    max_sets: usize,
    idle_after: Duration,
    sweep_every: Duration,
    clock: Clock,
    constructor: C,
    hasher: RandomState,
    state: Mutex<State<M, N>>,
}

struct Entry<M, const N: usize> {
    values: Arc<[Box<str>; N]>,
    metric: M,
    last_seen: Instant,
    overflow: bool,
}

struct State<M, const N: usize> {
    /// Entries by the hash of their values; a bucket almost always holds
    /// one entry.
    buckets: HashMap<u64, Vec<Entry<M, N>>>,
    /// Entries holding a slot (overflow sets excluded).
    slots: usize,
    last_sweep: Option<Instant>,
}

impl<M, const N: usize> State<M, N> {
    fn find(&mut self, hash: u64, values: &[&str; N]) -> Option<&mut Entry<M, N>> {
        self.buckets.get_mut(&hash)?.iter_mut().find(|e| {
            e.values
                .iter()
                .zip(values)
                .all(|(have, want)| **have == *cap_label_value(want))
        })
    }

    fn insert(&mut self, hash: u64, entry: Entry<M, N>) {
        if !entry.overflow {
            self.slots += 1;
        }
        self.buckets.entry(hash).or_default().push(entry);
    }

    fn sweep(&mut self, now: Instant, idle_after: Duration) -> usize {
        self.last_sweep = Some(now);
        let before = self.slots;
        let mut freed = 0;
        self.buckets.retain(|_, entries| {
            entries.retain(|e| {
                let idle = !e.overflow && now.saturating_duration_since(e.last_seen) >= idle_after;
                freed += usize::from(idle);
                !idle
            });
            !entries.is_empty()
        });
        self.slots = before - freed;
        freed
    }
}

/// Builder for [`LabelFamily`]; [`LabelFamilyBuilder::build`] validates it.
#[must_use]
pub struct LabelFamilyBuilder<M, const N: usize, C> {
    names: [&'static str; N],
    keep: Vec<&'static str>,
    max_sets: usize,
    idle_after: Duration,
    clock: Clock,
    constructor: C,
    _metric: std::marker::PhantomData<fn() -> M>,
}

impl<M: Default, const N: usize> LabelFamily<M, N> {
    /// A family with labels `names`, whose metrics are made by
    /// `M::default()`.
    pub fn builder(names: [&'static str; N]) -> LabelFamilyBuilder<M, N, fn() -> M> {
        LabelFamily::builder_with_constructor(names, M::default)
    }
}

impl<M, const N: usize, C: MetricConstructor<M>> LabelFamily<M, N, C> {
    /// A family with labels `names`, whose metrics are made by
    /// `constructor` (for histograms with their own buckets).
    pub fn builder_with_constructor(
        names: [&'static str; N],
        constructor: C,
    ) -> LabelFamilyBuilder<M, N, C> {
        LabelFamilyBuilder {
            names,
            keep: Vec::new(),
            max_sets: DEFAULT_MAX_SETS,
            idle_after: DEFAULT_IDLE_AFTER,
            clock: Clock::default(),
            constructor,
            _metric: std::marker::PhantomData,
        }
    }
}

impl<M, const N: usize, C> LabelFamilyBuilder<M, N, C> {
    /// At most this many label sets get their own series (default
    /// [`DEFAULT_MAX_SETS`]).
    pub fn max_sets(mut self, max_sets: usize) -> Self {
        self.max_sets = max_sets;
        self
    }

    /// A set unused this long gives its slot back when a new set needs it
    /// (default [`DEFAULT_IDLE_AFTER`]).
    pub fn idle_after(mut self, idle_after: Duration) -> Self {
        self.idle_after = idle_after;
        self
    }

    /// Labels whose values the overflow set keeps instead of replacing them
    /// with [`OTHER`]. Their values must be bounded by the program: each
    /// distinct kept value makes one more overflow series.
    pub fn keep<const K: usize>(mut self, labels: [&'static str; K]) -> Self {
        self.keep.extend(labels);
        self
    }

    /// The clock that says when a set was last used (default: tokio's, so
    /// paused-time tests control it).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Validates and builds the family.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `max_sets` (zero), `idle_after` (zero),
    /// `labels` (a name that is not a Prometheus label name, or repeated) or
    /// `keep` (a label the family does not have).
    pub fn build(self) -> Result<LabelFamily<M, N, C>, ConfigError> {
        if self.max_sets == 0 {
            return Err(ConfigError::new("max_sets", "must be at least 1"));
        }
        if self.idle_after.is_zero() {
            return Err(ConfigError::new("idle_after", "must be above zero"));
        }
        for (i, name) in self.names.iter().enumerate() {
            let mut chars = name.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with("__");
            if !valid {
                return Err(ConfigError::new(
                    "labels",
                    format!(
                        "`{name}` is not a label name (ASCII letters, digits and `_`, not starting with a digit or `__`)"
                    ),
                ));
            }
            if self.names[..i].contains(name) {
                return Err(ConfigError::new(
                    "labels",
                    format!("`{name}` appears twice"),
                ));
            }
        }
        let mut keep = [false; N];
        for label in &self.keep {
            match self.names.iter().position(|n| n == label) {
                Some(i) => keep[i] = true,
                None => {
                    return Err(ConfigError::new(
                        "keep",
                        format!("`{label}` is not one of the family's labels"),
                    ));
                }
            }
        }
        Ok(LabelFamily {
            inner: Arc::new(Inner {
                names: self.names,
                keep,
                max_sets: self.max_sets,
                idle_after: self.idle_after,
                sweep_every: (self.idle_after / 60).max(Duration::from_millis(1)),
                clock: self.clock,
                constructor: self.constructor,
                hasher: RandomState::new(),
                state: Mutex::new(State {
                    buckets: HashMap::new(),
                    slots: 0,
                    last_sweep: None,
                }),
            }),
        })
    }
}

impl<M: Clone, const N: usize, C: MetricConstructor<M>> LabelFamily<M, N, C> {
    /// The metric of the set `values` (in the order of the label names),
    /// made if new; the overflow set's when the family is full. Values are
    /// capped at [`MAX_LABEL_VALUE_LEN`] bytes, so two values that differ
    /// only past the cap share a series.
    pub fn get_or_create(&self, values: [&str; N]) -> M {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let hash = self.hash(&values);
        let mut state = inner.state.lock();
        if let Some(entry) = state.find(hash, &values) {
            entry.last_seen = now;
            return entry.metric.clone();
        }
        if state.slots >= inner.max_sets
            && state
                .last_sweep
                .is_none_or(|at| now.saturating_duration_since(at) >= inner.sweep_every)
        {
            let freed = state.sweep(now, inner.idle_after);
            if freed > 0 {
                tracing::debug!(freed, "idle label sets gave their slots back");
            }
        }
        let (values, hash, overflow) = if state.slots < inner.max_sets {
            (values, hash, false)
        } else {
            let mut other = values;
            for (value, keep) in other.iter_mut().zip(inner.keep) {
                if !keep {
                    *value = OTHER;
                }
            }
            let hash = self.hash(&other);
            if let Some(entry) = state.find(hash, &other) {
                entry.last_seen = now;
                return entry.metric.clone();
            }
            (other, hash, true)
        };
        let metric = inner.constructor.new_metric();
        state.insert(
            hash,
            Entry {
                values: Arc::new(values.map(|v| Box::from(cap_label_value(v)))),
                metric: metric.clone(),
                last_seen: now,
                overflow,
            },
        );
        metric
    }

    /// The metric of the set `values` if it has its own series (the
    /// overflow set's only when asked for by its values).
    pub fn get(&self, values: [&str; N]) -> Option<M> {
        let hash = self.hash(&values);
        let mut state = self.inner.state.lock();
        state.find(hash, &values).map(|e| e.metric.clone())
    }

    /// Drops the series of `values` and frees its slot; `false` when there
    /// was none.
    pub fn remove(&self, values: [&str; N]) -> bool {
        let hash = self.hash(&values);
        let mut state = self.inner.state.lock();
        let Some(bucket) = state.buckets.get_mut(&hash) else {
            return false;
        };
        let Some(i) = bucket.iter().position(|e| {
            e.values
                .iter()
                .zip(&values)
                .all(|(have, want)| **have == *cap_label_value(want))
        }) else {
            return false;
        };
        let entry = bucket.swap_remove(i);
        if bucket.is_empty() {
            state.buckets.remove(&hash);
        }
        if !entry.overflow {
            state.slots -= 1;
        }
        true
    }
}

impl<M, const N: usize, C> LabelFamily<M, N, C> {
    /// Label sets holding a slot (at most `max_sets`).
    pub fn len(&self) -> usize {
        self.inner.state.lock().slots
    }

    /// `true` when no set holds a slot.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The label names, in order.
    pub fn label_names(&self) -> &[&'static str; N] {
        &self.inner.names
    }

    fn hash(&self, values: &[&str; N]) -> u64 {
        let mut hasher = self.inner.hasher.build_hasher();
        for value in values {
            cap_label_value(value).hash(&mut hasher);
        }
        hasher.finish()
    }
}

impl<M, const N: usize, C> Clone for LabelFamily<M, N, C> {
    fn clone(&self) -> Self {
        LabelFamily {
            inner: self.inner.clone(),
        }
    }
}

impl<M, const N: usize, C> fmt::Debug for LabelFamily<M, N, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabelFamily")
            .field("labels", &self.inner.names)
            .field("max_sets", &self.inner.max_sets)
            .field("idle_after", &self.inner.idle_after)
            .field("sets", &self.len())
            .finish_non_exhaustive()
    }
}

/// One label set as encoded: names paired with escaped values.
struct LabelSet<'a, const N: usize> {
    names: &'a [&'static str; N],
    values: &'a [Box<str>; N],
}

impl<const N: usize> EncodeLabelSet for LabelSet<'_, N> {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        for (name, value) in self.names.iter().zip(self.values.iter()) {
            let mut label = encoder.encode_label();
            let mut key = label.encode_label_key()?;
            key.write_str(name)?;
            let mut value_encoder = key.encode_label_value()?;
            write_escaped_label_value(&mut value_encoder, value)?;
            value_encoder.finish()?;
        }
        Ok(())
    }
}

impl<M, const N: usize, C> EncodeMetric for LabelFamily<M, N, C>
where
    M: EncodeMetric + TypedMetric + Clone,
{
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        let series: Vec<(Arc<[Box<str>; N]>, M)> = {
            let state = self.inner.state.lock();
            state
                .buckets
                .values()
                .flatten()
                .map(|e| (e.values.clone(), e.metric.clone()))
                .collect()
        };
        for (values, metric) in &series {
            let labels = LabelSet {
                names: &self.inner.names,
                values,
            };
            metric.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    use super::*;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        encode(&mut out, registry).unwrap();
        out
    }

    fn escaped(value: &str) -> String {
        let mut out = String::new();
        write_escaped_label_value(&mut out, value).unwrap();
        out
    }

    #[test]
    fn escaping_follows_the_text_format() {
        assert_eq!(escaped("plain"), "plain");
        assert_eq!(escaped(r#"Disk "root" full"#), r#"Disk \"root\" full"#);
        assert_eq!(escaped("a\\b"), "a\\\\b");
        assert_eq!(escaped("line\nbreak"), "line\\nbreak");
        assert_eq!(escaped("nul\0é"), "nul\0é");
        assert_eq!(escaped("\"\\\n"), "\\\"\\\\\\n");
    }

    #[test]
    fn values_are_capped_on_a_char_boundary() {
        let long = "é".repeat(200); // 400 bytes
        let capped = cap_label_value(&long);
        assert!(capped.len() <= MAX_LABEL_VALUE_LEN);
        assert_eq!(capped.len(), 256);
        let odd = format!("a{}", "é".repeat(200));
        assert_eq!(cap_label_value(&odd).len(), 255);
        assert_eq!(cap_label_value("short"), "short");
        assert_eq!(LabelValue::from("x".repeat(1000)).as_str().len(), 256);
        assert_eq!(LabelValue::from(String::from("y")).to_string(), "y");
    }

    fn family(max: usize) -> LabelFamily<Counter, 2> {
        LabelFamily::builder(["alertname", "status"])
            .max_sets(max)
            .idle_after(Duration::from_secs(60 * 60))
            .keep(["status"])
            .build()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn sets_past_the_cap_go_to_other_keeping_the_kept_labels() {
        let f = family(2);
        let mut registry = Registry::default();
        registry.register("events", "Events", f.clone());
        for name in ["A", "B", "C", "D"] {
            f.get_or_create([name, "firing"]).inc();
        }
        f.get_or_create(["E", "resolved"]).inc();
        f.get_or_create(["A", "firing"]).inc();
        assert_eq!(f.len(), 2);
        let out = text(&registry);
        assert!(
            out.contains(r#"events_total{alertname="A",status="firing"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"events_total{alertname="other",status="firing"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"events_total{alertname="other",status="resolved"} 1"#),
            "{out}"
        );
        assert!(!out.contains("\"C\""), "{out}");
        assert_eq!(f.get(["B", "firing"]).map(|c| c.get()), Some(1));
        assert!(f.get(["C", "firing"]).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_sets_give_their_slot_back() {
        const MIN: Duration = Duration::from_secs(60);
        let f = family(2);
        f.get_or_create(["A", "firing"]).inc();
        f.get_or_create(["B", "firing"]).inc();
        tokio::time::advance(50 * MIN).await;
        f.get_or_create(["B", "firing"]).inc();
        tokio::time::advance(9 * MIN).await;
        // Full, nothing idle for an hour yet: C is other.
        f.get_or_create(["C", "firing"]).inc();
        assert!(f.get(["C", "firing"]).is_none());
        tokio::time::advance(2 * MIN).await;
        // A has been idle for 61 min: its series goes, C takes the slot and
        // starts from zero.
        f.get_or_create(["C", "firing"]).inc();
        assert!(f.get(["A", "firing"]).is_none());
        assert_eq!(f.get(["C", "firing"]).map(|c| c.get()), Some(1));
        assert_eq!(f.get(["B", "firing"]).map(|c| c.get()), Some(2));
        assert_eq!(f.len(), 2);
        // The overflow set is never dropped.
        assert_eq!(f.get(["other", "firing"]).map(|c| c.get()), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn sweeps_are_rate_limited() {
        let f = family(1);
        f.get_or_create(["A", "firing"]);
        tokio::time::advance(Duration::from_secs(3600)).await;
        // A is idle for exactly the hour: the sweep frees it.
        f.get_or_create(["B", "firing"]);
        assert!(f.get(["B", "firing"]).is_some());
        tokio::time::advance(Duration::from_secs(3600)).await;
        f.get_or_create(["B", "firing"]); // B used again just now
        f.get_or_create(["C", "firing"]); // sweep finds nothing idle
        tokio::time::advance(Duration::from_secs(3599)).await;
        // B idle for 3599 s: the sweep frees nothing, D is other.
        f.get_or_create(["D", "firing"]);
        assert!(f.get(["D", "firing"]).is_none());
        tokio::time::advance(Duration::from_secs(30)).await;
        // B now idle for over an hour, but the last sweep was 30 s ago.
        f.get_or_create(["D", "firing"]);
        assert!(f.get(["D", "firing"]).is_none());
        tokio::time::advance(Duration::from_secs(30)).await;
        f.get_or_create(["D", "firing"]);
        assert!(f.get(["D", "firing"]).is_some());
        assert!(f.get(["B", "firing"]).is_none());
    }

    #[test]
    fn remove_frees_the_slot() {
        let f = family(1);
        f.get_or_create(["A", "firing"]);
        assert!(f.remove(["A", "firing"]));
        assert!(!f.remove(["A", "firing"]));
        assert!(f.is_empty());
        f.get_or_create(["B", "firing"]);
        assert!(f.get(["B", "firing"]).is_some());
        // The overflow set can be removed too, and takes no slot.
        f.get_or_create(["C", "firing"]);
        assert!(f.remove(["other", "firing"]));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn values_differing_past_the_cap_share_a_series() {
        let f = family(10);
        let a = format!("{}a", "x".repeat(MAX_LABEL_VALUE_LEN));
        let b = format!("{}b", "x".repeat(MAX_LABEL_VALUE_LEN));
        f.get_or_create([&a, "firing"]).inc();
        f.get_or_create([&b, "firing"]).inc();
        assert_eq!(f.len(), 1);
        assert_eq!(f.get([&a, "firing"]).unwrap().get(), 2);
    }

    #[test]
    fn histograms_use_the_constructor() {
        fn buckets() -> Histogram {
            Histogram::new([0.1, 1.0])
        }
        let f = LabelFamily::<Histogram, 1>::builder_with_constructor(
            ["route"],
            buckets as fn() -> Histogram,
        )
        .build()
        .unwrap();
        let mut registry = Registry::default();
        registry.register("latency", "Latency", f.clone());
        f.get_or_create(["/a"]).observe(0.5);
        let out = text(&registry);
        assert!(
            out.contains(r#"latency_bucket{le="1.0",route="/a"} 1"#),
            "{out}"
        );
        assert!(out.contains("# TYPE latency histogram"), "{out}");
    }

    mod prop {
        use std::collections::HashMap;

        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Advance(u64),
            Use(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u64..=7_200).prop_map(Op::Advance),
                (0u8..12).prop_map(Op::Use),
            ]
        }

        proptest! {
            /// Bounded; a set used within `idle_after` keeps its series; a
            /// new set gets a slot whenever some holder has been idle for
            /// `idle_after` plus one sweep period.
            #[test]
            fn slots_are_bounded_and_only_idle_sets_lose_them(
                max in 1usize..6,
                ops in proptest::collection::vec(op(), 1..200),
            ) {
                let idle = Duration::from_secs(3_600);
                let sweep = idle / 60;
                let (clock, hand) = Clock::manual();
                let f: LabelFamily<Counter, 1> = LabelFamily::builder(["name"])
                    .max_sets(max)
                    .idle_after(idle)
                    .clock(clock)
                    .build()
                    .unwrap();
                // Holders of a slot and when they were last used.
                let mut holders: HashMap<String, Duration> = HashMap::new();
                for op in ops {
                    match op {
                        Op::Advance(secs) => hand.advance(Duration::from_secs(secs)),
                        Op::Use(i) => {
                            let name = format!("n{i}");
                            let now = hand.elapsed();
                            let stale = holders
                                .values()
                                .any(|&at| now.saturating_sub(at) >= idle + sweep);
                            let had = holders.contains_key(&name);
                            let metric = f.get_or_create([&name]);
                            metric.inc();
                            // Holders the family dropped were idle.
                            holders.retain(|held, at| {
                                let kept = f.get([held]).is_some();
                                if !kept {
                                    assert!(now.saturating_sub(*at) >= idle, "{held} dropped while in use");
                                }
                                kept
                            });
                            match f.get([&name]) {
                                Some(own) => {
                                    own.inc();
                                    prop_assert_eq!(own.get(), metric.get());
                                    holders.insert(name, now);
                                }
                                None => {
                                    prop_assert!(!had, "a holder lost its slot on use");
                                    prop_assert!(!stale || holders.len() < max, "a stale holder blocked a new set");
                                    let other = f.get([OTHER]).unwrap();
                                    prop_assert_eq!(other.get(), metric.get());
                                }
                            }
                            prop_assert!(f.len() <= max);
                            prop_assert_eq!(f.len(), holders.len());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_builder_names_what_is_wrong() {
        let field =
            |r: Result<LabelFamily<Counter, 2>, ConfigError>| r.unwrap_err().field().to_owned();
        assert_eq!(
            field(LabelFamily::builder(["a", "b"]).max_sets(0).build()),
            "max_sets"
        );
        assert_eq!(
            field(
                LabelFamily::builder(["a", "b"])
                    .idle_after(Duration::ZERO)
                    .build()
            ),
            "idle_after"
        );
        assert_eq!(field(LabelFamily::builder(["a", "a"]).build()), "labels");
        assert_eq!(field(LabelFamily::builder(["a", "9"]).build()), "labels");
        assert_eq!(field(LabelFamily::builder(["a", "__x"]).build()), "labels");
        assert_eq!(
            field(LabelFamily::builder(["a", "b"]).keep(["c"]).build()),
            "keep"
        );
        let f: LabelFamily<Counter, 2> = LabelFamily::builder(["a", "b"]).build().unwrap();
        assert_eq!(f.label_names(), &["a", "b"]);
        assert!(format!("{f:?}").contains("max_sets: 1000"));
    }
}

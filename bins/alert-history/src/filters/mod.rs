//! Filter rules and acknowledgements (issue 19).
//!
//! * Filter rules ([`RuleSpec`]) are stored in the database (`filter_rules`)
//!   and cached in memory; [`Filters::decide`] evaluates the cached rules in
//!   (priority, name) order without I/O: the first enabled rule that
//!   matches the alert for the target decides, no match allows. A change
//!   through this replica's API applies at once; other replicas poll the
//!   one-row `filter_versions` counter every [`POLL_INTERVAL`]
//!   ([`Filters::watch`]) and reload what changed, so a change made
//!   elsewhere applies within that interval (plus one query).
//! * An acknowledgement ([`Ack`]) covers one firing episode of one alert:
//!   the firing events with the same fingerprint and the same `startsAt` as
//!   the alert's state when it was acknowledged. [`Filters::acked`] says
//!   whether a firing event is covered (resolved events never are: the
//!   resolve must reach PagerDuty and the like);
//!   [`Filters::resolve_clears_ack`] removes the ack when its episode (or a
//!   later one) resolves; a later `startsAt` is a new episode, not covered.
//!
//! Routes ([`routes`]): `POST /proxy/filters/rules` (admin; create or
//! replace by name), `DELETE /proxy/filters/rules/{name}` (admin),
//! `GET /proxy/filters/rules` and `GET /proxy/filters/rules/{name}` (read),
//! `POST /proxy/filters/test` (read; evaluates an alert against the rules),
//! `POST|DELETE /alerts/{fingerprint}/ack` (admin), `GET
//! /alerts/{fingerprint}/ack` (read).

mod api;
mod db;
mod rule;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use keel_telemetry::CancellationToken;
use parking_lot::{Mutex, RwLock};

pub use api::{MAX_ACK_BY, MAX_ACK_REASON};
pub use rule::{
    Action, Conditions, Invalid, MAX_DELAY_SECONDS, MAX_NAME_LEN, MAX_RULES, PRIORITY_BOUND, Rule,
    RuleSet, RuleSpec,
};

use crate::http::AppState;
use crate::model::Status;
use crate::routing::{AlertView, Classification, Decision};
use crate::store::Store;

/// How often [`Filters::watch`] asks the database whether another replica
/// changed the rules or the acknowledgements (one single-row read).
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Most acknowledgement lookups remembered (the cache starts over beyond).
const ACK_CACHE_MAX: usize = 100_000;

/// An acknowledgement of one alert's firing episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The alert.
    pub fingerprint: String,
    /// Who acknowledged it.
    pub by: String,
    /// Why.
    pub reason: String,
    /// When, epoch ms.
    pub acked_at_ms: i64,
    /// The `startsAt` (epoch ms) of the firing episode it covers.
    pub starts_at: i64,
}

impl Ack {
    /// Whether it covers `alert`: a firing event of the same alert and the
    /// same episode (same `startsAt`).
    pub fn covers(&self, alert: &AlertView) -> bool {
        alert.status == Status::Firing
            && alert.fingerprint == self.fingerprint
            && alert.starts_at == self.starts_at
    }
}

/// The filter rules in effect and the acknowledgements, shared by the
/// routes and the publisher. Cloning is cheap (one `Arc`).
///
/// [`Filters::default`] has no rules and no store: it allows everything,
/// and acknowledgements are looked up once a route of this module has run
/// on a state (which lends it the state's store).
#[derive(Clone, Default)]
pub struct Filters {
    shared: Arc<Shared>,
}

struct Shared {
    store: OnceLock<Store>,
    rules: RwLock<Arc<RuleSet>>,
    /// The `filter_versions.rules` the cached rules were read at.
    rules_version: tokio::sync::watch::Sender<i64>,
    /// The `filter_versions.acks` the ack cache is valid for.
    acks_version: Mutex<i64>,
    /// Fingerprint → its ack (or none), as last read from the database.
    acks: Mutex<HashMap<String, Option<Ack>>>,
    /// Bumped on every invalidation, so a lookup that raced one does not
    /// cache what it read before it.
    acks_generation: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            store: OnceLock::new(),
            rules: RwLock::new(Arc::new(RuleSet::default())),
            rules_version: tokio::sync::watch::Sender::new(-1),
            acks_version: Mutex::new(-1),
            acks: Mutex::new(HashMap::new()),
            acks_generation: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filters")
            .field("rules", &self.shared.rules.read().rules().len())
            .field("rules_version", &*self.shared.rules_version.borrow())
            .field("store", &self.shared.store.get().map(Store::backend_name))
            .finish_non_exhaustive()
    }
}

impl Filters {
    /// Loads the stored rules.
    ///
    /// # Errors
    /// The database error.
    pub async fn load(store: &crate::Store) -> Result<Filters, crate::Error> {
        let filters = Filters::default();
        let _ = filters.shared.store.set(store.clone());
        filters.reload_rules(store).await?;
        *filters.shared.acks_version.lock() = db::versions(store).await?.1;
        Ok(filters)
    }

    /// The store, lending it `fallback`'s when this has none yet.
    fn store_or(&self, fallback: &Store) -> Store {
        self.shared.store.get_or_init(|| fallback.clone()).clone()
    }

    /// The rules in effect, in evaluation order.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.shared.rules.read().clone()
    }

    /// What the rules decide for `alert` on `target`: the first enabled rule
    /// (by priority, then name) whose target is `"*"` or `target` and whose
    /// conditions all hold decides; no such rule: [`Decision::Allow`].
    /// Pure and in memory.
    pub fn decide(
        &self,
        alert: &AlertView,
        classification: Option<&Classification>,
        target: &str,
    ) -> Decision {
        self.rules().decide(alert, classification, target).0
    }

    /// The `filter_versions.rules` counter the cached rules were read at,
    /// as a watch (tests and operators wait on it).
    pub fn rules_version(&self) -> tokio::sync::watch::Receiver<i64> {
        self.shared.rules_version.subscribe()
    }

    async fn reload_rules(&self, store: &Store) -> Result<(), sqlx::Error> {
        let (version, rules) = db::load_rules(store).await?;
        self.install(version, rules);
        Ok(())
    }

    /// Puts `rules`, read at `version`, in effect unless newer ones are.
    fn install(&self, version: i64, rules: Vec<Arc<Rule>>) {
        let rules = Arc::new(RuleSet::new(rules));
        // Under the watch's lock, and never back to an older version: a
        // poll that read before this replica's own change cannot undo it.
        self.shared.rules_version.send_if_modified(|current| {
            if version < *current {
                return false;
            }
            *self.shared.rules.write() = rules;
            let changed = version != *current;
            *current = version;
            changed
        });
    }

    fn invalidate_acks(&self, fingerprint: Option<&str>) {
        self.shared.acks_generation.fetch_add(1, Ordering::SeqCst);
        let mut acks = self.shared.acks.lock();
        match fingerprint {
            Some(fp) => {
                acks.remove(fp);
            }
            None => acks.clear(),
        }
    }

    /// Asks the database whether the rules or acknowledgements changed
    /// (another replica) and reloads what did; whether anything had.
    ///
    /// # Errors
    /// The database error (the cache is kept as it was).
    pub async fn reload_now(&self) -> Result<bool, crate::Error> {
        let Some(store) = self.shared.store.get().cloned() else {
            return Ok(false);
        };
        let (rules, acks) = db::versions(&store).await?;
        let mut changed = false;
        if rules != *self.shared.rules_version.borrow() {
            self.reload_rules(&store).await?;
            changed = true;
        }
        let mut known = self.shared.acks_version.lock();
        if acks != *known {
            *known = acks;
            drop(known);
            self.invalidate_acks(None);
            changed = true;
        }
        Ok(changed)
    }

    /// Polls for changes made by other replicas every `every` until `stop`
    /// (spawn it under the service's shutdown). A failed poll is logged and
    /// tried again at the next tick.
    pub async fn watch(self, every: Duration, stop: CancellationToken) {
        keel_telemetry::every(every, stop, move || {
            let filters = self.clone();
            async move {
                match filters.reload_now().await {
                    Ok(true) => tracing::info!(
                        rules = filters.rules().rules().len(),
                        "filter rules or acknowledgements changed elsewhere: reloaded"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "filter rules poll failed"),
                }
            }
        })
        .await;
    }

    /// The acknowledgement that covers `alert` (see [`Ack::covers`]), if
    /// any. Read from an in-memory cache of the database, invalidated at
    /// once by this replica's changes and within [`POLL_INTERVAL`] by
    /// other replicas' (through [`Filters::watch`]).
    ///
    /// # Errors
    /// The database error.
    pub async fn acked(&self, alert: &AlertView) -> Result<Option<Ack>, crate::Error> {
        if alert.status != Status::Firing {
            return Ok(None);
        }
        let ack = self.lookup_ack(&alert.fingerprint).await?;
        Ok(ack.filter(|a| a.covers(alert)))
    }

    async fn lookup_ack(&self, fingerprint: &str) -> Result<Option<Ack>, crate::Error> {
        if let Some(cached) = self.shared.acks.lock().get(fingerprint) {
            return Ok(cached.clone());
        }
        let Some(store) = self.shared.store.get() else {
            return Ok(None);
        };
        let generation = self.shared.acks_generation.load(Ordering::SeqCst);
        let ack = db::get_ack(store, fingerprint).await?;
        let mut acks = self.shared.acks.lock();
        if self.shared.acks_generation.load(Ordering::SeqCst) == generation {
            if acks.len() >= ACK_CACHE_MAX {
                acks.clear();
            }
            acks.insert(fingerprint.to_owned(), ack.clone());
        }
        Ok(ack)
    }

    /// For a resolved event: removes the alert's acknowledgement when it
    /// covers this episode or an earlier one (its `startsAt` at or before
    /// the event's); whether one was removed. A firing event changes
    /// nothing (false). Reads the database (not the cache) first, so the
    /// common case, no ack, writes nothing.
    ///
    /// # Errors
    /// The database error.
    pub async fn resolve_clears_ack(&self, alert: &AlertView) -> Result<bool, crate::Error> {
        if alert.status != Status::Resolved {
            return Ok(false);
        }
        let Some(store) = self.shared.store.get() else {
            return Ok(false);
        };
        match db::get_ack(store, &alert.fingerprint).await? {
            Some(ack) if ack.starts_at <= alert.starts_at => {}
            _ => return Ok(false),
        }
        let cleared = db::delete_ack(store, &alert.fingerprint, Some(alert.starts_at)).await?;
        self.invalidate_acks(Some(&alert.fingerprint));
        Ok(cleared)
    }
}

/// The routes of this part (`/proxy/filters/...`, `/alerts/{fp}/ack`).
pub fn routes() -> Router<AppState> {
    api::routes()
}

/// The acknowledgement of `fingerprint` as the alert's JSON shows it
/// (`null` when none; `active`: it covers the alert's current firing
/// episode), for `GET /alerts/{fingerprint}`.
pub(crate) async fn ack_json(
    state: &AppState,
    fingerprint: &str,
) -> Result<serde_json::Value, sqlx::Error> {
    let filters = &state.inner.filters;
    let store = filters.store_or(&state.inner.store);
    let Some(ack) = db::get_ack(&store, fingerprint).await? else {
        return Ok(serde_json::Value::Null);
    };
    let current = db::alert_state(&store, fingerprint).await?;
    Ok(api::ack_body(
        &ack,
        current.as_ref().map(|(s, t)| (s.as_str(), *t)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poll that read the rules before this replica's own change, and
    /// installs them after it, leaves the newer rules in effect.
    #[tokio::test]
    async fn a_stale_read_never_replaces_newer_rules() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("f.db").display());
        let store = Store::connect(&url, 2).await.unwrap();
        let filters = Filters::load(&store).await.unwrap();
        let (stale_version, stale) = db::load_rules(&store).await.unwrap();
        let spec: RuleSpec =
            serde_json::from_value(serde_json::json!({"name": "r", "action": "deny"})).unwrap();
        db::put_rule(&store, &spec, 1).await.unwrap();
        filters.reload_rules(&store).await.unwrap();
        assert_eq!(filters.rules().rules().len(), 1);
        filters.install(stale_version, stale);
        assert_eq!(filters.rules().rules().len(), 1);
        assert_eq!(*filters.rules_version().borrow(), stale_version + 1);
        store.close().await;
    }
}

//! The state a journal's records fold into.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::{AuditRecord, Change, ChangeOp, Document, Record, TxId, TxStatus};
use crate::saga::{SagaEvent, SagaReport};

/// How much finished history the fold keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Finished audit records kept per resource (oldest dropped first).
    pub audit_per_resource: usize,
    /// Finished sagas kept (oldest dropped first). Running sagas are always
    /// kept.
    pub finished_sagas: usize,
}

impl Default for Retention {
    /// 1000 audit records per resource, 10 000 finished sagas.
    fn default() -> Self {
        Retention {
            audit_per_resource: 1000,
            finished_sagas: 10_000,
        }
    }
}

/// Everything a journal knows: committed documents, open transactions, the
/// audit trail per resource and saga progress.
///
/// It is the fold of the journal's records ([`JournalState::apply`]), which
/// every backend replays the same way, so a restarted process sees exactly
/// what was durable. Checkpoints store it whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JournalState {
    /// Committed document per resource.
    pub documents: BTreeMap<String, Document>,
    /// Transactions begun and not yet committed or rolled back.
    pub open: BTreeMap<TxId, AuditRecord>,
    /// Finished transactions per resource, oldest first.
    pub history: BTreeMap<String, VecDeque<AuditRecord>>,
    /// Sagas by id.
    pub sagas: BTreeMap<String, SagaReport>,
    /// Finished saga ids, oldest first (for retention).
    #[serde(default)]
    finished_sagas: VecDeque<String>,
    #[serde(skip)]
    retention: Retention,
}

impl JournalState {
    /// An empty state that keeps `retention` worth of history.
    pub fn with_retention(retention: Retention) -> Self {
        JournalState {
            retention,
            ..JournalState::default()
        }
    }

    /// The retention limits in force.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Sets the retention limits and drops what they no longer keep.
    pub fn set_retention(&mut self, retention: Retention) {
        self.retention = retention;
        for entries in self.history.values_mut() {
            while entries.len() > retention.audit_per_resource {
                entries.pop_front();
            }
        }
        while self.finished_sagas.len() > retention.finished_sagas {
            if let Some(old) = self.finished_sagas.pop_front() {
                self.sagas.remove(&old);
            }
        }
    }

    /// The committed document of `resource`.
    pub fn document(&self, resource: &str) -> Option<&Document> {
        self.documents.get(resource)
    }

    /// The version of `resource` (0 if never written).
    pub fn version(&self, resource: &str) -> u64 {
        self.documents.get(resource).map_or(0, |d| d.version)
    }

    /// Folds one record into the state.
    ///
    /// Records about transactions that are not open (already committed or
    /// rolled back) change nothing: a rollback decided during recovery wins
    /// over anything the stopped process wrote after it.
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Begin {
                tx,
                resource,
                operation,
                owner,
                trace_id,
                base_version,
                at,
            } => {
                self.open.insert(
                    tx,
                    AuditRecord {
                        tx,
                        resource,
                        operation,
                        owner,
                        trace_id,
                        base_version,
                        started_at: at,
                        finished_at: None,
                        changes: Vec::new(),
                        status: TxStatus::Open,
                    },
                );
            }
            Record::Change { tx, index, change } => {
                if let Some(open) = self.open.get_mut(&tx) {
                    let index = usize::try_from(index).unwrap_or(usize::MAX);
                    open.changes.truncate(index);
                    open.changes.push(change);
                }
            }
            Record::Commit {
                tx,
                resource,
                version,
                document,
                changes,
                at,
            } => {
                if let Some(mut audit) = self.open.remove(&tx) {
                    audit
                        .changes
                        .truncate(usize::try_from(changes).unwrap_or(usize::MAX));
                    audit.status = TxStatus::Committed { version };
                    audit.finished_at = Some(at);
                    self.documents.insert(
                        resource.clone(),
                        Document {
                            version,
                            value: document,
                        },
                    );
                    self.push_history(resource, audit);
                }
            }
            Record::Rollback {
                tx,
                resource,
                cause,
                reason,
                at,
            } => {
                if let Some(mut audit) = self.open.remove(&tx) {
                    audit.status = TxStatus::RolledBack { cause, reason };
                    audit.finished_at = Some(at);
                    self.push_history(resource, audit);
                }
            }
            Record::Put {
                tx,
                resource,
                version,
                document,
                at,
            } => {
                let previous = self.documents.get(&resource);
                let audit = AuditRecord {
                    tx,
                    resource: resource.clone(),
                    operation: "put".to_owned(),
                    owner: String::new(),
                    trace_id: String::new(),
                    base_version: previous.map_or(0, |d| d.version),
                    started_at: at,
                    finished_at: Some(at),
                    changes: vec![Change {
                        op: ChangeOp::Set,
                        path: String::new(),
                        patch: None,
                        before: previous.map(|d| d.value.clone()),
                        after: Some(document.clone()),
                    }],
                    status: TxStatus::Committed { version },
                };
                self.documents.insert(
                    resource.clone(),
                    Document {
                        version,
                        value: document,
                    },
                );
                self.push_history(resource, audit);
            }
            Record::Saga { saga_id, at, event } => self.apply_saga(saga_id, at, event),
        }
    }

    fn push_history(&mut self, resource: String, audit: AuditRecord) {
        let limit = self.retention.audit_per_resource;
        let entries = self.history.entry(resource).or_default();
        entries.push_back(audit);
        while entries.len() > limit {
            entries.pop_front();
        }
    }

    fn apply_saga(&mut self, saga_id: String, at: chrono::DateTime<chrono::Utc>, event: SagaEvent) {
        if let SagaEvent::Started {
            steps,
            input,
            options,
        } = event
        {
            // A saga id names one saga for good: a second start is ignored.
            self.sagas
                .entry(saga_id.clone())
                .or_insert_with(|| SagaReport::started(saga_id, steps, input, options, at));
            return;
        }
        let Some(saga) = self.sagas.get_mut(&saga_id) else {
            return;
        };
        let was_finished = saga.is_finished();
        saga.apply(event, at);
        if !was_finished && saga.is_finished() {
            self.finished_sagas.push_back(saga_id);
            while self.finished_sagas.len() > self.retention.finished_sagas {
                if let Some(old) = self.finished_sagas.pop_front() {
                    self.sagas.remove(&old);
                }
            }
        }
    }

    /// Open transactions on `resource`.
    pub fn open_on<'a>(&'a self, resource: &'a str) -> impl Iterator<Item = &'a AuditRecord> + 'a {
        self.open.values().filter(move |a| a.resource == resource)
    }

    /// A clone of the committed document value, or `Value::Null`.
    pub(crate) fn document_value(&self, resource: &str) -> Value {
        self.documents
            .get(resource)
            .map_or(Value::Null, |d| d.value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RollbackCause;
    use chrono::Utc;
    use serde_json::json;

    fn begin(tx: TxId, resource: &str, base: u64) -> Record {
        Record::Begin {
            tx,
            resource: resource.into(),
            operation: "op".into(),
            owner: "me".into(),
            trace_id: "t".into(),
            base_version: base,
            at: Utc::now(),
        }
    }

    fn set(tx: TxId, index: u32, path: &str, after: Value) -> Record {
        Record::Change {
            tx,
            index,
            change: Change {
                op: ChangeOp::Set,
                path: path.into(),
                patch: None,
                before: None,
                after: Some(after),
            },
        }
    }

    #[test]
    fn commit_keeps_and_rollback_discards() {
        let mut state = JournalState::default();
        let a = TxId::new();
        state.apply(begin(a, "r", 0));
        state.apply(set(a, 0, "/x", json!(1)));
        state.apply(Record::Commit {
            tx: a,
            resource: "r".into(),
            version: 1,
            document: json!({"x": 1}),
            changes: 1,
            at: Utc::now(),
        });
        let b = TxId::new();
        state.apply(begin(b, "r", 1));
        state.apply(set(b, 0, "/x", json!(2)));
        assert_eq!(state.open_on("r").count(), 1);
        state.apply(Record::Rollback {
            tx: b,
            resource: "r".into(),
            cause: RollbackCause::Requested,
            reason: "no".into(),
            at: Utc::now(),
        });
        // A commit after the rollback (a fenced writer) changes nothing.
        state.apply(Record::Commit {
            tx: b,
            resource: "r".into(),
            version: 2,
            document: json!({"x": 2}),
            changes: 1,
            at: Utc::now(),
        });
        assert_eq!(state.document("r").unwrap().value, json!({"x": 1}));
        assert_eq!(state.version("r"), 1);
        let history = &state.history["r"];
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].status, TxStatus::Committed { version: 1 });
        assert!(matches!(
            history[1].status,
            TxStatus::RolledBack {
                cause: RollbackCause::Requested,
                ..
            }
        ));
        assert_eq!(history[1].changes.len(), 1);
    }

    #[test]
    fn change_index_overwrites_and_commit_truncates() {
        let mut state = JournalState::default();
        let a = TxId::new();
        state.apply(begin(a, "r", 0));
        state.apply(set(a, 0, "/x", json!(1)));
        state.apply(set(a, 1, "/y", json!("lost")));
        state.apply(set(a, 1, "/y", json!("kept")));
        state.apply(set(a, 2, "/z", json!("never applied")));
        state.apply(Record::Commit {
            tx: a,
            resource: "r".into(),
            version: 1,
            document: json!({"x": 1, "y": "kept"}),
            changes: 2,
            at: Utc::now(),
        });
        let changes = &state.history["r"][0].changes;
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[1].after, Some(json!("kept")));
    }

    #[test]
    fn history_is_bounded_per_resource() {
        let mut state = JournalState::with_retention(Retention {
            audit_per_resource: 3,
            finished_sagas: 1,
        });
        for version in 1..=5 {
            state.apply(Record::Put {
                tx: TxId::new(),
                resource: "r".into(),
                version,
                document: json!(version),
                at: Utc::now(),
            });
        }
        let history = &state.history["r"];
        assert_eq!(history.len(), 3);
        assert_eq!(history[0].status, TxStatus::Committed { version: 3 });
        assert_eq!(history[2].changes[0].before, Some(json!(4)));
        assert_eq!(state.version("r"), 5);
    }

    #[test]
    fn lowering_retention_trims_at_once() {
        let mut state = JournalState::default();
        for version in 1..=5 {
            state.apply(Record::Put {
                tx: TxId::new(),
                resource: "r".into(),
                version,
                document: json!(version),
                at: Utc::now(),
            });
        }
        state.set_retention(Retention {
            audit_per_resource: 2,
            finished_sagas: 10,
        });
        assert_eq!(state.history["r"].len(), 2);
        assert_eq!(
            state.history["r"][1].status,
            TxStatus::Committed { version: 5 }
        );
    }

    #[test]
    fn checkpoint_round_trips_through_json() {
        let mut state = JournalState::default();
        let a = TxId::new();
        state.apply(begin(a, "r", 0));
        state.apply(set(a, 0, "/x", Value::Null));
        let text = serde_json::to_string(&state).unwrap();
        let back: JournalState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);
    }
}

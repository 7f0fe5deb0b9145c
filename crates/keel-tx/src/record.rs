//! The vocabulary stored in the journal: transaction ids, changes, audit
//! records, documents and journal records.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::saga::SagaEvent;

/// A transaction's id (a random UUID), unique across processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TxId(uuid::Uuid);

impl TxId {
    /// A fresh random id (a version-4 UUID).
    ///
    /// The bits come from a lock-free SplitMix64 stream seeded once per
    /// process from the OS (128 bits: 64 seed the stream, 64 are mixed into
    /// every id), so ids never repeat within a process and collide across
    /// processes with negligible probability, without a `getrandom` system
    /// call per transaction.
    pub fn new() -> Self {
        static SOURCE: std::sync::OnceLock<(keel_core::Rng, u64)> = std::sync::OnceLock::new();
        let (rng, salt) = SOURCE.get_or_init(|| {
            let seed = uuid::Uuid::new_v4().as_u64_pair();
            (keel_core::Rng::with_seed(seed.0), seed.1)
        });
        let high = rng.next_u64();
        let low = rng.next_u64() ^ salt;
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&high.to_be_bytes());
        bytes[8..].copy_from_slice(&low.to_be_bytes());
        TxId(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }
}

impl Default for TxId {
    fn default() -> Self {
        TxId::new()
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for TxId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(TxId)
    }
}

/// The kind of a recorded change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    /// Put a value at a path (add or replace, JSON Patch placement).
    Set,
    /// Remove the value at a path.
    Delete,
    /// Apply an RFC 7396 merge patch to the value at a path.
    Merge,
}

/// One change inside a transaction, with the values before and after it.
///
/// `before`/`after` are `None` when the location held (or holds) no value,
/// which is different from holding JSON `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// What was done.
    pub op: ChangeOp,
    /// The JSON Pointer it was done at (`-` resolved to the array index).
    pub path: String,
    /// The merge patch, for [`ChangeOp::Merge`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some_value"
    )]
    pub patch: Option<Value>,
    /// The value at `path` before the change.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some_value"
    )]
    pub before: Option<Value>,
    /// The value at `path` after the change.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some_value"
    )]
    pub after: Option<Value>,
}

/// A present field is `Some`, even when it holds `null`; a missing one is
/// `None` (through `#[serde(default)]`).
fn some_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Why a transaction was rolled back.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackCause {
    /// The owner called `rollback`.
    Requested,
    /// The reaper rolled it back after the transaction timeout.
    TimedOut,
    /// The handle was dropped without commit or rollback.
    Dropped,
    /// Found open in the journal when the manager started (the previous
    /// process stopped before committing).
    Recovery,
    /// The journal failed while committing.
    JournalFailure,
    /// The write to the store of record in
    /// [`Transaction::commit_through`](crate::Transaction::commit_through)
    /// failed (the reason is its error message).
    ExternalWrite,
}

impl RollbackCause {
    /// A short, stable name (also the metrics label value).
    pub fn as_str(&self) -> &'static str {
        match self {
            RollbackCause::Requested => "requested",
            RollbackCause::TimedOut => "timed_out",
            RollbackCause::Dropped => "dropped",
            RollbackCause::Recovery => "recovery",
            RollbackCause::JournalFailure => "journal_failure",
            RollbackCause::ExternalWrite => "external_write",
        }
    }
}

impl fmt::Display for RollbackCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a transaction stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TxStatus {
    /// Still open.
    Open,
    /// Committed; the document is now at `version`.
    Committed {
        /// The document version the commit produced.
        version: u64,
    },
    /// Rolled back; the document kept its snapshot.
    RolledBack {
        /// Who or what rolled it back.
        cause: RollbackCause,
        /// The reason given.
        reason: String,
    },
}

/// The audit trail of one transaction (or of one `put` outside a
/// transaction, recorded with operation `"put"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The transaction.
    pub tx: TxId,
    /// The resource it changed.
    pub resource: String,
    /// What the owner said it was doing (`"scaleUp"`).
    pub operation: String,
    /// Who did it.
    pub owner: String,
    /// The trace it belongs to.
    pub trace_id: String,
    /// The document version the transaction started from.
    pub base_version: u64,
    /// When it began (wall clock).
    pub started_at: DateTime<Utc>,
    /// When it was committed or rolled back.
    pub finished_at: Option<DateTime<Utc>>,
    /// Every change, in order, with before and after values.
    pub changes: Vec<Change>,
    /// How it ended (or [`TxStatus::Open`]).
    pub status: TxStatus,
}

/// A resource's committed document and its version.
///
/// Version 0 means the resource has never been written; every commit or
/// `put` adds one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// The version.
    pub version: u64,
    /// The JSON document.
    pub value: Value,
}

/// One journal record. Journals store these in order; replaying them with
/// [`JournalState::apply`](crate::JournalState::apply) rebuilds the state.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// A transaction began.
    Begin {
        /// The transaction.
        tx: TxId,
        /// The resource it holds.
        resource: String,
        /// Its operation name.
        operation: String,
        /// Its owner.
        owner: String,
        /// Its trace id.
        trace_id: String,
        /// The document version it started from.
        base_version: u64,
        /// When.
        at: DateTime<Utc>,
    },
    /// A change inside an open transaction. `index` numbers the changes of a
    /// transaction from 0; a record with an index already seen replaces it
    /// (a change whose caller gave up mid-write is overwritten by the next).
    Change {
        /// The transaction.
        tx: TxId,
        /// The change's position in the transaction.
        index: u32,
        /// The change.
        change: Change,
    },
    /// The commit marker: the transaction's first `changes` changes took
    /// effect and the resource is now `document` at `version`.
    Commit {
        /// The transaction.
        tx: TxId,
        /// The resource.
        resource: String,
        /// The new version.
        version: u64,
        /// The new document.
        document: Value,
        /// How many changes the commit includes.
        changes: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// The transaction was rolled back; the document keeps its snapshot.
    Rollback {
        /// The transaction.
        tx: TxId,
        /// The resource.
        resource: String,
        /// Why.
        cause: RollbackCause,
        /// The reason given.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// A write outside any transaction (optimistic, by version).
    Put {
        /// An id for the audit trail.
        tx: TxId,
        /// The resource.
        resource: String,
        /// The new version.
        version: u64,
        /// The new document.
        document: Value,
        /// When.
        at: DateTime<Utc>,
    },
    /// Progress of a saga.
    Saga {
        /// The saga.
        saga_id: String,
        /// When.
        at: DateTime<Utc>,
        /// What happened.
        event: SagaEvent,
    },
}

impl Record {
    /// The resource a transaction record is about (`None` for sagas).
    pub fn resource(&self) -> Option<&str> {
        match self {
            Record::Begin { resource, .. }
            | Record::Commit { resource, .. }
            | Record::Rollback { resource, .. }
            | Record::Put { resource, .. } => Some(resource),
            Record::Change { .. } | Record::Saga { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tx_ids_are_distinct_v4_uuids() {
        let ids: std::collections::HashSet<TxId> = (0..10_000).map(|_| TxId::new()).collect();
        assert_eq!(ids.len(), 10_000);
        let id = TxId::new();
        assert_eq!(id.0.get_version_num(), 4);
        assert_eq!(id.to_string().parse::<TxId>().unwrap(), id);
    }

    #[test]
    fn absent_and_null_values_survive_a_round_trip() {
        let change = Change {
            op: ChangeOp::Set,
            path: "/a".into(),
            patch: None,
            before: None,
            after: Some(Value::Null),
        };
        let text = serde_json::to_string(&change).unwrap();
        assert_eq!(text, r#"{"op":"set","path":"/a","after":null}"#);
        let back: Change = serde_json::from_str(&text).unwrap();
        assert_eq!(back, change);
    }

    #[test]
    fn records_are_tagged_json_lines() {
        let tx = TxId::new();
        let record = Record::Rollback {
            tx,
            resource: "cluster-a".into(),
            cause: RollbackCause::TimedOut,
            reason: "timed out".into(),
            at: Utc::now(),
        };
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.starts_with(r#"{"type":"rollback","tx":""#), "{text}");
        assert!(!text.contains('\n'));
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.resource(), Some("cluster-a"));
        let commit = Record::Commit {
            tx,
            resource: "r".into(),
            version: 2,
            document: json!({"a": [1, null]}),
            changes: 1,
            at: Utc::now(),
        };
        let back: Record = serde_json::from_str(&serde_json::to_string(&commit).unwrap()).unwrap();
        assert_eq!(back, commit);
    }
}

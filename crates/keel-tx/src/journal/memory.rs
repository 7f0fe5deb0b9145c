use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::{Durability, Journal};
use crate::error::{JournalError, JournalErrorKind};
use crate::record::Record;
use crate::state::{JournalState, Retention};

/// A journal kept in process memory.
///
/// It folds every record into a [`JournalState`] as it arrives, so a new
/// manager or saga executor over the same `Arc<MemoryJournal>` recovers
/// exactly like one over a file journal after a restart: this is how tests
/// simulate a crash without a second process. Nothing survives the process.
///
/// Cost: each append clones its records (the commit record holds the whole
/// document) under one mutex. [`MemoryJournal::recording`] also keeps every
/// record, without bound.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: JournalState,
    records: Option<Vec<Record>>,
    fail_appends: bool,
}

impl MemoryJournal {
    /// An empty journal with the default [`Retention`].
    pub fn new() -> Self {
        MemoryJournal::default()
    }

    /// An empty journal that keeps `retention` worth of history.
    pub fn with_retention(retention: Retention) -> Self {
        MemoryJournal {
            inner: Mutex::new(Inner {
                state: JournalState::with_retention(retention),
                ..Inner::default()
            }),
        }
    }

    /// An empty journal that also keeps every record ([`MemoryJournal::records`]).
    pub fn recording() -> Self {
        MemoryJournal {
            inner: Mutex::new(Inner {
                records: Some(Vec::new()),
                ..Inner::default()
            }),
        }
    }

    /// Every record appended so far, for a journal made by
    /// [`MemoryJournal::recording`] (empty otherwise).
    pub fn records(&self) -> Vec<Record> {
        self.inner.lock().records.clone().unwrap_or_default()
    }

    /// Makes every later append fail with [`JournalErrorKind::Io`] (`true`) or
    /// succeed again (`false`): for testing how callers handle a failing
    /// journal.
    pub fn fail_appends(&self, fail: bool) {
        self.inner.lock().fail_appends = fail;
    }
}

impl Journal for MemoryJournal {
    fn append<'a>(
        &'a self,
        records: &'a [Record],
        _durability: Durability,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        let mut inner = self.inner.lock();
        let result = if inner.fail_appends {
            Err(JournalError::new(
                JournalErrorKind::Io,
                "memory journal set to fail appends",
            ))
        } else {
            for record in records {
                inner.state.apply(record.clone());
            }
            if let Some(log) = &mut inner.records {
                log.extend(records.iter().cloned());
            }
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }

    fn load(&self) -> BoxFuture<'_, Result<JournalState, JournalError>> {
        let state = self.inner.lock().state.clone();
        Box::pin(std::future::ready(Ok(state)))
    }
}

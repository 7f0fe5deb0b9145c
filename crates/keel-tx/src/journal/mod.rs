//! Durable journals: where transactions and sagas write ahead.
//!
//! A [`Journal`] stores [`Record`]s in order and gives back the
//! [`JournalState`] they fold into. Three backends ship:
//!
//! * [`MemoryJournal`]: in process, for tests and for state that may be lost.
//! * [`FileJournal`]: append-only, checksummed JSON lines in a directory,
//!   `fsync`ed at commit points ([`SyncPolicy`]), with atomic checkpoints;
//!   the default for one process.
//! * `PostgresJournal` (feature `postgres`): for several replicas sharing one
//!   state, with the resource lock and the document version enforced by the
//!   database.

use futures::future::BoxFuture;

use crate::error::JournalError;
use crate::record::{Document, Record};
use crate::state::JournalState;

mod file;
pub(crate) mod format;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;

pub use file::{FileJournal, FileJournalBuilder, SyncPolicy};
pub use memory::MemoryJournal;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresJournal, PostgresJournalBuilder};

/// How durable an append must be before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Handed to the storage (the OS page cache for the file journal): it
    /// survives the process being killed, not necessarily a power loss.
    /// Used for begin and change records.
    Buffered,
    /// On stable storage (`fsync`, or a committed database transaction).
    /// Used for commit points: commits, rollbacks, puts and saga progress.
    /// A [`FileJournal`] opened with [`SyncPolicy::Normal`] treats these as
    /// [`Buffered`](Self::Buffered), by the operator's choice.
    Durable,
}

/// Where transactions and sagas write ahead.
///
/// Implementations must keep records in the order they were appended and
/// replay them through [`JournalState::apply`] in [`Journal::load`], so that
/// every backend recovers the same way. The futures are boxed so a journal
/// can be chosen at run time (`Arc<dyn Journal>`); that costs one allocation
/// per call.
///
/// A shared backend may refuse an append that would break a rule another
/// process relies on, with [`JournalErrorKind::ResourceLocked`],
/// [`JournalErrorKind::VersionMismatch`] or [`JournalErrorKind::Fenced`]
/// (see [`crate::JournalErrorKind`]); the whole append then has no effect.
///
/// [`JournalErrorKind::ResourceLocked`]: crate::JournalErrorKind::ResourceLocked
/// [`JournalErrorKind::VersionMismatch`]: crate::JournalErrorKind::VersionMismatch
/// [`JournalErrorKind::Fenced`]: crate::JournalErrorKind::Fenced
pub trait Journal: Send + Sync + 'static {
    /// Appends `records`, in order, and returns once they have the requested
    /// durability.
    fn append<'a>(
        &'a self,
        records: &'a [Record],
        durability: Durability,
    ) -> BoxFuture<'a, Result<(), JournalError>>;

    /// Everything the journal holds: its last checkpoint with every later
    /// record applied.
    fn load(&self) -> BoxFuture<'_, Result<JournalState, JournalError>>;

    /// The committed document of one resource, as the journal has it now.
    ///
    /// The default loads the whole state; shared backends answer from their
    /// document table. A manager calls it after a
    /// [`JournalErrorKind::VersionMismatch`](crate::JournalErrorKind::VersionMismatch)
    /// to catch up with a write made by another process.
    fn load_document<'a>(
        &'a self,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<Option<Document>, JournalError>> {
        Box::pin(async move { Ok(self.load().await?.documents.remove(resource)) })
    }

    /// Folds the log into a checkpoint so that it stops growing. Backends
    /// that compact on their own may do nothing here.
    fn compact(&self) -> BoxFuture<'_, Result<(), JournalError>> {
        Box::pin(async { Ok(()) })
    }
}

// Object safety guard: the manager and the saga executor hold `Arc<dyn Journal>`.
fn _object_safe(_: &dyn Journal) {}

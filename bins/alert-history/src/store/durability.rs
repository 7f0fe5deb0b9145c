//! Whether a write made now would be durable: the service's readiness.
//!
//! `SELECT 1` answering says nothing about writes: a full disk, a database
//! file deleted under the running process (SQLite goes on writing to the
//! unlinked inode, and everything is lost at restart) or a dropped schema
//! all leave reads working. So readiness is three facts:
//!
//! * the last write succeeded ([`Durability::record`]). A failure keeps
//!   readiness red until a delivery is stored again or, once the failure is
//!   [`PROBE_AFTER`] old, until a probe write succeeds: readiness then
//!   commits 64 KiB to `alert_history_write_probe` (and clears it in the
//!   same transaction). So a replica that no longer gets traffic because it
//!   is not ready still turns ready once space is back, and a fresh failure
//!   is not hidden by a small write that happens to fit;
//! * SQLite: the path still names the file that was opened (same device and
//!   inode), checked after every commit too, so a delivery written to a
//!   deleted file is answered 503, never 200;
//! * the schema is there (`alert_events` can be read).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::time::Duration;

use parking_lot::Mutex;
use thiserror::Error;
use tokio::time::Instant;

/// How old a write failure must be before readiness probes whether writes
/// work again (until then it reports the failure).
pub(crate) const PROBE_AFTER: Duration = Duration::from_secs(10);

/// Why writes are not durable now (the readiness check's error).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NotDurable {
    /// The SQLite database file was deleted or replaced since it was opened:
    /// writes would go to the old, unlinked file. Restart the service (it
    /// creates or opens the file at the path again).
    #[error(
        "database file {path} was removed or replaced after start; writes would be lost (restart the service)"
    )]
    FileReplaced {
        /// The database path.
        path: String,
    },
    /// The last write failed and a probe write fails too.
    #[error("writes are failing: {reason}")]
    WritesFailing {
        /// The database's message.
        reason: String,
    },
    /// The tables are gone (a dropped schema or database).
    #[error("schema missing: {reason}")]
    SchemaMissing {
        /// The database's message.
        reason: String,
    },
}

/// The identity of the SQLite database file when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileIdentity {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// Shared by the store's writers and its readiness check.
#[derive(Debug, Default)]
pub(crate) struct Durability {
    /// The last write's error and when it happened; `None` when it
    /// succeeded.
    last_failure: Mutex<Option<(String, Instant)>>,
    /// SQLite only: the file that was opened.
    file: Option<FileIdentity>,
}

impl Durability {
    /// Durability of a database with no file to watch (PostgreSQL, or an
    /// in-memory SQLite database).
    pub(crate) fn new() -> Self {
        Durability::default()
    }

    /// Durability of the SQLite database file at `path`, as it is now.
    ///
    /// # Errors
    /// The error of `stat` on `path`.
    pub(crate) fn for_file(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Durability {
            last_failure: Mutex::new(None),
            file: Some(FileIdentity {
                path: path.to_owned(),
                dev: meta.dev(),
                ino: meta.ino(),
            }),
        })
    }

    /// Whether the path still names the file that was opened.
    ///
    /// # Errors
    /// [`NotDurable::FileReplaced`] when it was deleted or replaced.
    pub(crate) fn check_file(&self) -> Result<(), NotDurable> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        match std::fs::metadata(&file.path) {
            Ok(meta) if meta.dev() == file.dev && meta.ino() == file.ino => Ok(()),
            _ => Err(NotDurable::FileReplaced {
                path: file.path.display().to_string(),
            }),
        }
    }

    /// Records a write's outcome.
    pub(crate) fn record<T, E: std::fmt::Display>(&self, result: &Result<T, E>) {
        let mut last = self.last_failure.lock();
        match result {
            Ok(_) => *last = None,
            Err(e) => *last = Some((e.to_string(), Instant::now())),
        }
    }

    /// The last write's error, if it failed, and how long ago.
    pub(crate) fn last_failure(&self) -> Option<(String, Duration)> {
        self.last_failure
            .lock()
            .as_ref()
            .map(|(e, at)| (e.clone(), at.elapsed()))
    }

    /// Makes the last failure `by` older (tests of the probe).
    #[cfg(test)]
    pub(crate) fn age_failure(&self, by: Duration) {
        if let Some((_, at)) = self.last_failure.lock().as_mut() {
            *at -= by;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"one").unwrap();
        let d = Durability::for_file(&path).unwrap();
        d.check_file().unwrap();
        // Created while the first still exists, so another inode.
        let other = dir.path().join("other");
        std::fs::write(&other, b"two").unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            d.check_file(),
            Err(NotDurable::FileReplaced { .. })
        ));
        // A new file at the same path.
        std::fs::rename(&other, &path).unwrap();
        assert!(d.check_file().is_err());
        Durability::new().check_file().unwrap();
    }

    #[test]
    fn the_last_outcome_wins() {
        let d = Durability::new();
        assert_eq!(d.last_failure(), None);
        d.record::<(), _>(&Err("disk is full"));
        assert_eq!(d.last_failure().unwrap().0, "disk is full");
        d.record::<_, String>(&Ok(()));
        assert_eq!(d.last_failure(), None);
    }
}

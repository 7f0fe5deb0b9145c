use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use nix::fcntl::{Flock, FlockArg};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::format::{self, Encoded, Format, HEADER, ParsedLog, parse_log};
use super::{Durability, Journal};
use crate::error::{ConfigError, JournalError, JournalErrorKind, TxError};
use crate::record::Record;
use crate::state::{JournalState, Retention};

const CHECKPOINT: &str = "checkpoint.json";
const CHECKPOINT_TMP: &str = "checkpoint.json.tmp";
const LOCK: &str = "LOCK";

/// When a [`FileJournal`] waits for the disk: the journal's durability, as
/// a stated choice (the names follow SQLite's `PRAGMA synchronous`).
///
/// | policy | a commit acknowledged survives | a commit costs |
/// |---|---|---|
/// | [`Full`](Self::Full) (default) | the process being killed, an OS crash, a power loss | `write(2)` + `fdatasync` (shared by concurrent commits) |
/// | [`Normal`](Self::Normal) | the process being killed; after an OS crash or power loss the last few seconds of commits may be gone | `write(2)` |
///
/// Under both, a record is either read back whole or not at all: every line
/// carries a CRC, a torn tail is cut off when the journal opens and damage
/// before the end refuses the open ([`JournalErrorKind::Corrupt`], naming the
/// byte offset). Checkpoints and new log files are always `fsync`ed and
/// their directory too, whatever the policy: losing a checkpoint would lose
/// everything before it, and they are rare (one per
/// [`compact_after_bytes`](FileJournalBuilder::compact_after_bytes)).
///
/// `Full` is the default because a commit is a promise the caller acts on
/// (it tells a user, or writes to a store of record with
/// [`commit_through`](crate::Transaction::commit_through)): after a power
/// loss the journal must not disagree with what was done. Choose `Normal`
/// where the state can be rebuilt (from the store of record, or by
/// reconciling) and commit latency matters more; the measured cost of
/// `Full` is in `docs/PERFORMANCE.md`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SyncPolicy {
    /// [`Durability::Durable`] appends (commit points) wait for
    /// `fdatasync`: acknowledged commits survive an OS crash or power loss.
    #[default]
    Full,
    /// Every append is written (the OS page cache) and not synced:
    /// acknowledged commits survive the process being killed, not an OS
    /// crash or power loss.
    Normal,
}

/// A journal in a directory: append-only, checksummed JSON lines, `fsync`ed
/// at commit points, folded into an atomically replaced checkpoint when the
/// log grows.
///
/// Layout: `journal-<generation>.jsonl` (a header line, then one [`Record`]
/// per line behind a CRC-32 that chains from line to line: the format is
/// described in `src/journal/format.rs`), `checkpoint.json` (the
/// [`JournalState`] of every earlier generation with its CRC, written to a
/// temporary file, `fsync`ed, renamed over the old one and the directory
/// `fsync`ed) and `LOCK` (an exclusive `flock`, so two processes never
/// write the same journal; the kernel releases it when the process dies).
///
/// Durability ([`SyncPolicy`], default [`SyncPolicy::Full`]):
/// [`Durability::Buffered`] appends are written to the file (the OS page
/// cache) before returning, so they survive the process being killed;
/// [`Durability::Durable`] appends also wait for `fdatasync` under
/// `SyncPolicy::Full`. Concurrent durable appends share one `fdatasync`
/// (group commit), which runs on tokio's blocking pool. An append of several
/// records is atomic per record, not as a group: after a crash a prefix of
/// it may be read back.
///
/// Crash tolerance: a torn tail (the process or machine stopped in the
/// middle of a write) is cut off when the journal is opened and never
/// replayed; a line that fails its CRC with a record after it is reported
/// as [`JournalErrorKind::Corrupt`] with the file and byte offset, and the
/// journal does not open, rather than skip a record that may have been
/// committed. After a failed write or `fdatasync` the journal refuses further
/// writes ([`JournalErrorKind::Failed`]): what reached the disk is only known
/// by reopening it.
///
/// Format 1 logs (bare JSON lines, written before the CRC) are still read:
/// [`FileJournalBuilder::open`] folds one into a new checkpoint and starts a
/// format-2 log, so nothing needs migrating by hand (and an older build
/// cannot read the new format: it reports the header as damage).
///
/// Cost: a buffered append is one `write(2)` under a mutex (plus a CRC of the
/// encoded record, about a microsecond per kilobyte); a durable one under
/// `SyncPolicy::Full` adds a blocking-pool hop and an `fdatasync`
/// (milliseconds on most disks, see `docs/PERFORMANCE.md`). [`Journal::load`]
/// reads the checkpoint and the log from disk.
#[derive(Debug, Clone)]
pub struct FileJournal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    log: Mutex<LogFile>,
    /// Logical position (bytes ever written by this process) known durable.
    synced: Mutex<u64>,
    failed: AtomicBool,
    compact_after_bytes: u64,
    retention: Retention,
    sync: SyncPolicy,
    _lock: Flock<File>,
}

#[derive(Debug)]
struct LogFile {
    file: Arc<File>,
    generation: u64,
    /// Bytes written by this process, across generations.
    written: u64,
    /// Length of the current generation's file.
    len: u64,
    /// The CRC chain after the last line written (see `format`).
    crc: u32,
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    format: u32,
    generation: u64,
    state: JournalState,
}

/// Configures a [`FileJournal`].
#[derive(Debug, Clone)]
pub struct FileJournalBuilder {
    dir: PathBuf,
    compact_after_bytes: u64,
    retention: Retention,
    sync: SyncPolicy,
}

impl FileJournalBuilder {
    /// Folds the log into a new checkpoint once it is larger than `bytes`
    /// (default 16 MiB). Must be greater than zero.
    pub fn compact_after_bytes(mut self, bytes: u64) -> Self {
        self.compact_after_bytes = bytes;
        self
    }

    /// How much finished history checkpoints keep (default
    /// [`Retention::default`]).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// When commits wait for the disk (default [`SyncPolicy::Full`]; see
    /// [`SyncPolicy`] for what each guarantees).
    pub fn sync(mut self, policy: SyncPolicy) -> Self {
        self.sync = policy;
        self
    }

    /// Opens (creating if needed) the journal directory, takes its lock,
    /// cuts a torn tail off the log and checks the rest.
    ///
    /// A format-1 log (written before records carried a CRC) is migrated
    /// here: its records are folded into a new checkpoint and a format-2
    /// log starts, as a compaction does.
    ///
    /// This does blocking file I/O: call it at start-up, or from
    /// `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// [`JournalErrorKind::Corrupt`] when the log or checkpoint is damaged
    /// anywhere but a torn tail (the message names the file and byte
    /// offset), [`JournalErrorKind::Locked`] when another process holds the
    /// journal, [`JournalErrorKind::Io`], or a [`ConfigError`].
    pub fn open(self) -> Result<FileJournal, TxError> {
        if self.compact_after_bytes == 0 {
            return Err(
                ConfigError::new("compact_after_bytes", "must be greater than zero").into(),
            );
        }
        if self.retention.audit_per_resource == 0 {
            return Err(ConfigError::new(
                "retention.audit_per_resource",
                "must be greater than zero",
            )
            .into());
        }
        let dir = self.dir;
        fs::create_dir_all(&dir).map_err(|e| io_error("create journal directory", &dir, e))?;
        let lock_path = dir.join(LOCK);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error("open journal lock", &lock_path, e))?;
        let lock =
            Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
                JournalError::with_source(
                    JournalErrorKind::Locked,
                    format!(
                        "journal directory {} is locked by another process",
                        dir.display()
                    ),
                    errno,
                )
            })?;

        let (mut generation, mut state) = read_checkpoint(&dir, self.retention)?;
        let mut log_path = log_path(&dir, generation);
        let parsed = match fs::read(&log_path) {
            Ok(bytes) => {
                let parsed = parse_log(&bytes, &log_path)?;
                if parsed.valid_len < bytes.len() {
                    tracing::warn!(
                        path = %log_path.display(),
                        kept = parsed.valid_len,
                        dropped = bytes.len() - parsed.valid_len,
                        "cutting a torn record off the end of the journal"
                    );
                }
                Some(parsed)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error("read journal", &log_path, e).into()),
        };
        let (file, len, crc) = match parsed {
            Some(ParsedLog {
                format: Format::Framed,
                valid_len,
                crc,
                ..
            }) => {
                let file = open_log(&log_path)?;
                let valid = valid_len as u64;
                let on_disk = file
                    .metadata()
                    .map_err(|e| io_error("stat journal", &log_path, e))?
                    .len();
                if on_disk != valid {
                    file.set_len(valid)
                        .and_then(|()| file.sync_all())
                        .map_err(|e| io_error("truncate torn journal tail", &log_path, e))?;
                }
                (file, valid, crc)
            }
            Some(ParsedLog {
                format: Format::Legacy,
                records,
                ..
            }) => {
                // Format 1: fold it into a checkpoint, continue in format 2.
                for record in records {
                    state.apply(record);
                }
                generation += 1;
                write_checkpoint(&dir, generation, state)?;
                log_path = self::log_path(&dir, generation);
                tracing::info!(
                    path = %log_path.display(),
                    "journal migrated from format 1 (no checksums) to format 2"
                );
                let (file, len) = create_log(&dir, &log_path)?;
                (file, len, format::header_crc())
            }
            Some(ParsedLog {
                format: Format::Empty,
                ..
            })
            | None => {
                let (file, len) = create_log(&dir, &log_path)?;
                (file, len, format::header_crc())
            }
        };
        remove_stale_logs(&dir, generation)?;
        Ok(FileJournal {
            inner: Arc::new(Inner {
                dir,
                log: Mutex::new(LogFile {
                    file: Arc::new(file),
                    generation,
                    written: 0,
                    len,
                    crc,
                }),
                synced: Mutex::new(0),
                failed: AtomicBool::new(false),
                compact_after_bytes: self.compact_after_bytes,
                retention: self.retention,
                sync: self.sync,
                _lock: lock,
            }),
        })
    }
}

impl FileJournal {
    /// A builder for a journal in `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> FileJournalBuilder {
        FileJournalBuilder {
            dir: dir.into(),
            compact_after_bytes: 16 * 1024 * 1024,
            retention: Retention::default(),
            sync: SyncPolicy::default(),
        }
    }

    /// Opens the journal in `dir` with default settings (see
    /// [`FileJournalBuilder::open`]).
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileJournal, TxError> {
        FileJournal::builder(dir).open()
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The sync policy it was opened with.
    pub fn sync_policy(&self) -> SyncPolicy {
        self.inner.sync
    }

    /// The log file records are appended to now.
    pub fn log_path(&self) -> PathBuf {
        log_path(&self.inner.dir, self.inner.log.lock().generation)
    }
}

impl Inner {
    fn check_failed(&self) -> Result<(), JournalError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(JournalError::new(
                JournalErrorKind::Failed,
                "journal refuses writes after an earlier failure; reopen it to recover",
            ));
        }
        Ok(())
    }

    fn fail(&self, error: JournalError) -> JournalError {
        self.failed.store(true, Ordering::Release);
        tracing::error!(dir = %self.dir.display(), error = %error, "journal write failed; refusing further writes");
        error
    }

    /// Seals `encoded` onto the CRC chain, writes it and returns the
    /// logical position after it.
    fn write(&self, encoded: &mut Encoded) -> Result<u64, JournalError> {
        self.check_failed()?;
        let mut log = self.log.lock();
        let mut crc = log.crc;
        encoded.seal(&mut crc);
        if let Err(e) = (&*log.file).write_all(&encoded.bytes) {
            let path = log_path(&self.dir, log.generation);
            return Err(self.fail(io_error("append to journal", &path, e)));
        }
        let n = encoded.bytes.len() as u64;
        log.written += n;
        log.len += n;
        log.crc = crc;
        Ok(log.written)
    }

    fn needs_compaction(&self) -> bool {
        self.log.lock().len >= self.compact_after_bytes
    }

    /// Makes everything up to logical position `target` durable, sharing the
    /// `fdatasync` with every append that waits at the same time.
    fn sync_to(&self, target: u64) -> Result<(), JournalError> {
        let mut synced = self.synced.lock();
        if *synced >= target {
            return Ok(());
        }
        self.check_failed()?;
        let (file, upto, generation) = {
            let log = self.log.lock();
            (log.file.clone(), log.written, log.generation)
        };
        if let Err(e) = file.sync_data() {
            let path = log_path(&self.dir, generation);
            return Err(self.fail(io_error("fdatasync journal", &path, e)));
        }
        *synced = upto;
        Ok(())
    }

    fn durable_append(&self, encoded: &mut Encoded) -> Result<(), JournalError> {
        let end = self.write(encoded)?;
        self.sync_to(end)?;
        if self.needs_compaction() {
            self.compact()?;
        }
        Ok(())
    }

    fn read_state(&self, generation: u64) -> Result<JournalState, JournalError> {
        let (checkpoint_generation, mut state) = read_checkpoint(&self.dir, self.retention)?;
        debug_assert_eq!(checkpoint_generation, generation);
        let path = log_path(&self.dir, generation);
        match fs::read(&path) {
            Ok(bytes) => {
                for record in parse_log(&bytes, &path)?.records {
                    state.apply(record);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("read journal", &path, e)),
        }
        Ok(state)
    }

    /// Writes a checkpoint of everything and starts a new, empty log.
    fn compact(&self) -> Result<(), JournalError> {
        let mut synced = self.synced.lock();
        self.check_failed()?;
        let mut log = self.log.lock();
        let state = self.read_state(log.generation)?;
        let next = log.generation + 1;
        let result = (|| {
            write_checkpoint(&self.dir, next, state)?;
            // From here the checkpoint names generation `next`: a failure
            // below must stop appends to the old log, which is now ignored.
            let path = log_path(&self.dir, next);
            create_log(&self.dir, &path)
        })();
        let (file, len) = result.map_err(|e| self.fail(e))?;
        let old = log_path(&self.dir, log.generation);
        if let Err(e) = fs::remove_file(&old) {
            tracing::warn!(path = %old.display(), error = %e, "could not remove compacted journal");
        }
        log.file = Arc::new(file);
        log.generation = next;
        log.len = len;
        log.crc = format::header_crc();
        *synced = log.written;
        tracing::debug!(dir = %self.dir.display(), generation = next, "journal compacted");
        Ok(())
    }
}

fn interrupted(e: tokio::task::JoinError) -> JournalError {
    if e.is_panic() {
        std::panic::resume_unwind(e.into_panic());
    }
    JournalError::with_source(
        JournalErrorKind::Interrupted,
        "journal write interrupted",
        e,
    )
}

impl Journal for FileJournal {
    fn append<'a>(
        &'a self,
        records: &'a [Record],
        durability: Durability,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            let mut encoded = Encoded::new(records)?;
            match (durability, self.inner.sync) {
                (Durability::Durable, SyncPolicy::Full) => {
                    // The blocking task finishes even if this future is dropped,
                    // so a commit marker is never half-decided by cancellation.
                    let inner = self.inner.clone();
                    tokio::task::spawn_blocking(move || inner.durable_append(&mut encoded))
                        .await
                        .map_err(interrupted)?
                }
                // A page-cache write is short enough to do on the runtime.
                (Durability::Buffered, _) => self.inner.write(&mut encoded).map(drop),
                (Durability::Durable, _) => {
                    self.inner.write(&mut encoded)?;
                    if self.inner.needs_compaction() {
                        let inner = self.inner.clone();
                        tokio::task::spawn_blocking(move || inner.compact())
                            .await
                            .map_err(interrupted)??;
                    }
                    Ok(())
                }
            }
        })
    }

    fn load(&self) -> BoxFuture<'_, Result<JournalState, JournalError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                // Holding the log lock: no append is half-written while we read.
                let log = inner.log.lock();
                inner.read_state(log.generation)
            })
            .await
            .map_err(interrupted)?
        })
    }

    fn compact(&self) -> BoxFuture<'_, Result<(), JournalError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || inner.compact())
                .await
                .map_err(interrupted)?
        })
    }
}

fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal-{generation:08}.jsonl"))
}

fn io_error(what: &str, path: &Path, e: io::Error) -> JournalError {
    JournalError::with_source(
        JournalErrorKind::Io,
        format!("{what} {}", path.display()),
        e,
    )
}

fn open_log(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new()
        .append(true)
        .read(true)
        .open(path)
        .map_err(|e| io_error("open journal", path, e))
}

/// Creates (or empties) the log at `path` with its header, durably: the
/// header and the directory entry are synced whatever the policy, so a new
/// log never comes back as a torn header after a crash. Returns the file
/// and its length.
fn create_log(dir: &Path, path: &Path) -> Result<(File, u64), JournalError> {
    let mut file = File::create(path).map_err(|e| io_error("create journal", path, e))?;
    file.write_all(HEADER)
        .and_then(|()| file.sync_data())
        .map_err(|e| io_error("write journal header", path, e))?;
    drop(file);
    let file = open_log(path)?;
    sync_dir(dir)?;
    Ok((file, HEADER.len() as u64))
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("fsync journal directory", dir, e))
}

fn read_checkpoint(dir: &Path, retention: Retention) -> Result<(u64, JournalState), JournalError> {
    let path = dir.join(CHECKPOINT);
    match fs::read(&path) {
        Ok(bytes) => {
            let damaged = |why: String| {
                JournalError::new(
                    JournalErrorKind::Corrupt,
                    format!("journal checkpoint {} is damaged: {why}", path.display()),
                )
            };
            let (json, checked) = format::open_checkpoint(&bytes).map_err(damaged)?;
            let checkpoint: Checkpoint = serde_json::from_slice(json).map_err(|e| {
                JournalError::with_source(
                    JournalErrorKind::Corrupt,
                    format!("journal checkpoint {} is damaged", path.display()),
                    e,
                )
            })?;
            // Format 2 always carries its CRC; a CRC line lost to damage
            // must not pass the rest off as format 1.
            let expected = if checked { 2 } else { 1 };
            if checkpoint.format != expected {
                return Err(damaged(format!(
                    "format {} {} a checksum",
                    checkpoint.format,
                    if checked { "with" } else { "without" }
                )));
            }
            let mut state = checkpoint.state;
            state.set_retention(retention);
            Ok((checkpoint.generation, state))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok((0, JournalState::with_retention(retention)))
        }
        Err(e) => Err(io_error("read journal checkpoint", &path, e)),
    }
}

fn write_checkpoint(dir: &Path, generation: u64, state: JournalState) -> Result<(), JournalError> {
    let tmp = dir.join(CHECKPOINT_TMP);
    let checkpoint = Checkpoint {
        format: 2,
        generation,
        state,
    };
    let bytes = serde_json::to_vec(&checkpoint).map_err(|e| {
        JournalError::with_source(
            JournalErrorKind::Encoding,
            "could not encode journal checkpoint",
            e,
        )
    })?;
    let bytes = format::seal_checkpoint(bytes);
    let mut file = File::create(&tmp).map_err(|e| io_error("create checkpoint", &tmp, e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("write checkpoint", &tmp, e))?;
    drop(file);
    let path = dir.join(CHECKPOINT);
    fs::rename(&tmp, &path).map_err(|e| io_error("install checkpoint", &path, e))?;
    sync_dir(dir)
}

fn remove_stale_logs(dir: &Path, generation: u64) -> Result<(), JournalError> {
    let current = log_path(dir, generation);
    let entries = fs::read_dir(dir).map_err(|e| io_error("list journal directory", dir, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_log = name.starts_with("journal-") && name.ends_with(".jsonl");
        if (is_log && path != current) || name == CHECKPOINT_TMP {
            // Logs of other generations are folded into the checkpoint (a
            // crash during compaction can leave the old one behind).
            fs::remove_file(&path).map_err(|e| io_error("remove stale journal", &path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::TxId;
    use chrono::Utc;
    use serde_json::json;

    fn put(resource: &str, version: u64) -> Record {
        Record::Put {
            tx: TxId::new(),
            resource: resource.into(),
            version,
            document: json!({"v": version}),
            at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = FileJournal::open(dir.path()).unwrap();
            journal
                .append(&[put("a", 1)], Durability::Durable)
                .await
                .unwrap();
            journal
                .append(&[put("a", 2), put("b", 1)], Durability::Buffered)
                .await
                .unwrap();
        }
        let journal = FileJournal::open(dir.path()).unwrap();
        let state = journal.load().await.unwrap();
        assert_eq!(state.version("a"), 2);
        assert_eq!(state.document("b").unwrap().value, json!({"v": 1}));
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = FileJournal::open(dir.path()).unwrap();
        let Err(TxError::Journal(err)) = FileJournal::open(dir.path()) else {
            panic!("second open must fail");
        };
        assert_eq!(err.kind(), JournalErrorKind::Locked);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let journal = FileJournal::open(dir.path()).unwrap();
            journal
                .append(&[put("a", 1)], Durability::Durable)
                .await
                .unwrap();
            journal.log_path()
        };
        let good_len = fs::metadata(&path).unwrap().len();
        // Half of a record, as a kill in the middle of write(2) leaves it.
        let torn = serde_json::to_string(&put("a", 2)).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&torn.as_bytes()[..torn.len() / 2]).unwrap();
        drop(file);

        let journal = FileJournal::open(dir.path()).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            good_len,
            "torn tail truncated"
        );
        assert_eq!(journal.load().await.unwrap().version("a"), 1);
        // Appends after the cut start on a clean line.
        journal
            .append(&[put("a", 2)], Durability::Durable)
            .await
            .unwrap();
        drop(journal);
        let journal = FileJournal::open(dir.path()).unwrap();
        assert_eq!(journal.load().await.unwrap().version("a"), 2);
    }

    #[tokio::test]
    async fn damage_before_the_end_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let journal = FileJournal::open(dir.path()).unwrap();
            journal
                .append(&[put("a", 1)], Durability::Durable)
                .await
                .unwrap();
            journal.log_path()
        };
        let mut bytes = fs::read(&path).unwrap();
        let good = bytes.clone();
        bytes.splice(0..0, b"{not json\n".iter().copied());
        bytes.extend_from_slice(&good);
        fs::write(&path, bytes).unwrap();
        let Err(TxError::Journal(err)) = FileJournal::open(dir.path()) else {
            panic!("corruption must be reported");
        };
        assert_eq!(err.kind(), JournalErrorKind::Corrupt);
    }

    #[tokio::test]
    async fn compaction_keeps_state_and_shrinks_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let journal = FileJournal::builder(dir.path())
            .compact_after_bytes(2_000)
            .open()
            .unwrap();
        for version in 1..=100 {
            journal
                .append(&[put("a", version)], Durability::Durable)
                .await
                .unwrap();
        }
        let path = journal.log_path();
        assert!(fs::metadata(&path).unwrap().len() < 2_000);
        assert!(dir.path().join(CHECKPOINT).exists());
        assert_eq!(journal.load().await.unwrap().version("a"), 100);
        drop(journal);
        let journal = FileJournal::open(dir.path()).unwrap();
        let state = journal.load().await.unwrap();
        assert_eq!(state.version("a"), 100);
        assert_eq!(state.history["a"].len(), 100);
        let logs = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("journal-")
            })
            .count();
        assert_eq!(logs, 1, "old generations removed");
    }

    #[tokio::test]
    async fn a_crash_between_checkpoint_and_new_log_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = FileJournal::open(dir.path()).unwrap();
            journal
                .append(&[put("a", 1), put("a", 2)], Durability::Durable)
                .await
                .unwrap();
        }
        // Simulate compaction stopped right after the checkpoint rename: the
        // checkpoint names generation 1, the generation-0 log is still there.
        let mut state = JournalState::default();
        state.apply(put("a", 1));
        state.apply(put("a", 2));
        write_checkpoint(dir.path(), 1, state).unwrap();
        let journal = FileJournal::open(dir.path()).unwrap();
        assert_eq!(journal.load().await.unwrap().version("a"), 2);
        assert!(!log_path(dir.path(), 0).exists(), "stale log removed");
        assert_eq!(journal.log_path(), log_path(dir.path(), 1));
    }

    #[tokio::test]
    async fn normal_sync_keeps_records_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let journal = FileJournal::builder(dir.path())
            .sync(SyncPolicy::Normal)
            .compact_after_bytes(2_000)
            .open()
            .unwrap();
        assert_eq!(journal.sync_policy(), SyncPolicy::Normal);
        for version in 1..=50 {
            journal
                .append(&[put("a", version)], Durability::Durable)
                .await
                .unwrap();
        }
        assert!(fs::metadata(journal.log_path()).unwrap().len() < 2_000);
        drop(journal);
        let journal = FileJournal::open(dir.path()).unwrap();
        assert_eq!(journal.sync_policy(), SyncPolicy::Full, "the default");
        assert_eq!(journal.load().await.unwrap().version("a"), 50);
    }

    #[tokio::test]
    async fn a_format_1_journal_is_migrated_at_open() {
        let dir = tempfile::tempdir().unwrap();
        // What the journal wrote before records carried a CRC.
        let mut old = String::new();
        for version in 1..=3 {
            old.push_str(&serde_json::to_string(&put("a", version)).unwrap());
            old.push('\n');
        }
        fs::write(log_path(dir.path(), 0), &old).unwrap();
        let journal = FileJournal::open(dir.path()).unwrap();
        assert_eq!(journal.log_path(), log_path(dir.path(), 1));
        assert!(
            !log_path(dir.path(), 0).exists(),
            "the old log is folded in"
        );
        assert_eq!(fs::read(journal.log_path()).unwrap(), HEADER);
        journal
            .append(&[put("a", 4)], Durability::Durable)
            .await
            .unwrap();
        drop(journal);
        let journal = FileJournal::open(dir.path()).unwrap();
        let state = journal.load().await.unwrap();
        assert_eq!(state.version("a"), 4);
        assert_eq!(state.history["a"].len(), 4);
    }

    #[tokio::test]
    async fn a_damaged_checkpoint_refuses_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = JournalState::default();
        state.apply(put("a", 1));
        write_checkpoint(dir.path(), 1, state).unwrap();
        let path = dir.path().join(CHECKPOINT);
        let good = fs::read(&path).unwrap();
        // A digit of the version: still valid JSON, caught by the CRC.
        let at = good
            .windows(11)
            .position(|w| w == b"\"version\":1")
            .unwrap()
            + 10;
        let mut bad = good.clone();
        bad[at] = b'7';
        fs::write(&path, &bad).unwrap();
        let Err(TxError::Journal(err)) = FileJournal::open(dir.path()) else {
            panic!("a damaged checkpoint must be reported");
        };
        assert_eq!(err.kind(), JournalErrorKind::Corrupt);
        // Its CRC line cut off: not mistaken for a format-1 checkpoint.
        fs::write(&path, &good[..good.len() - 9]).unwrap();
        assert!(FileJournal::open(dir.path()).is_err());
        fs::write(&path, &good).unwrap();
        let journal = FileJournal::open(dir.path()).unwrap();
        assert_eq!(journal.load().await.unwrap().version("a"), 1);
    }

    #[tokio::test]
    async fn a_bit_flip_in_a_committed_record_refuses_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let journal = FileJournal::open(dir.path()).unwrap();
            for version in 1..=3 {
                journal
                    .append(&[put("a", version)], Durability::Durable)
                    .await
                    .unwrap();
            }
            journal.log_path()
        };
        let mut bytes = fs::read(&path).unwrap();
        let second = bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(1)
            .unwrap()
            .0
            + 1;
        bytes[second + 40] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let Err(TxError::Journal(err)) = FileJournal::open(dir.path()) else {
            panic!("a flipped bit must be reported");
        };
        assert_eq!(err.kind(), JournalErrorKind::Corrupt);
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string())
                && message.contains(&format!("at byte {second}")),
            "{message}"
        );
    }
}

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use nix::fcntl::{Flock, FlockArg};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Durability, Journal};
use crate::error::{ConfigError, JournalError, JournalErrorKind, TxError};
use crate::record::Record;
use crate::state::{JournalState, Retention};

const CHECKPOINT: &str = "checkpoint.json";
const CHECKPOINT_TMP: &str = "checkpoint.json.tmp";
const LOCK: &str = "LOCK";

/// A journal in a directory: append-only JSON lines, `fsync`ed at commit
/// points, folded into an atomically replaced checkpoint when the log grows.
///
/// Layout: `journal-<generation>.jsonl` (one [`Record`] per line),
/// `checkpoint.json` (the [`JournalState`] of every earlier generation,
/// written to a temporary file, `fsync`ed and renamed over the old one) and
/// `LOCK` (an exclusive `flock`, so two processes never write the same
/// journal; the kernel releases it when the process dies).
///
/// Durability: [`Durability::Buffered`] appends are written to the file
/// (the OS page cache) before returning, so they survive the process being
/// killed; [`Durability::Durable`] appends also wait for `fdatasync`.
/// Concurrent durable appends share one `fdatasync` (group commit), which
/// runs on tokio's blocking pool.
///
/// Crash tolerance: a torn last line (the process or machine stopped in the
/// middle of a write) is cut off when the journal is opened; damage anywhere
/// else is reported as [`JournalErrorKind::Corrupt`] rather than guessed
/// around. After a failed write or `fdatasync` the journal refuses further
/// writes ([`JournalErrorKind::Failed`]): what reached the disk is only known
/// by reopening it.
///
/// Cost: a buffered append is one `write(2)` under a mutex; a durable one
/// adds a blocking-pool hop and an `fdatasync` (milliseconds on most disks,
/// see `docs/PERFORMANCE.md`). [`Journal::load`] reads the checkpoint and the
/// log from disk.
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

    /// Opens (creating if needed) the journal directory, takes its lock,
    /// cuts a torn last line off the log and checks the rest.
    ///
    /// This does blocking file I/O: call it at start-up, or from
    /// `spawn_blocking`.
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

        let (generation, mut state) = read_checkpoint(&dir, self.retention)?;
        let log_path = log_path(&dir, generation);
        let valid = match fs::read(&log_path) {
            Ok(bytes) => {
                let parsed = parse_log(&bytes, &log_path)?;
                for record in parsed.records {
                    state.apply(record);
                }
                if parsed.valid_len < bytes.len() {
                    tracing::warn!(
                        path = %log_path.display(),
                        kept = parsed.valid_len,
                        dropped = bytes.len() - parsed.valid_len,
                        "cutting a torn record off the end of the journal"
                    );
                }
                Some(parsed.valid_len)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error("read journal", &log_path, e).into()),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&log_path)
            .map_err(|e| io_error("open journal", &log_path, e))?;
        let len = match valid {
            Some(valid) => {
                let valid = valid as u64;
                let on_disk = file
                    .metadata()
                    .map_err(|e| io_error("stat journal", &log_path, e))?
                    .len();
                if on_disk != valid {
                    file.set_len(valid)
                        .and_then(|()| file.sync_all())
                        .map_err(|e| io_error("truncate torn journal tail", &log_path, e))?;
                }
                valid
            }
            None => {
                sync_dir(&dir)?;
                0
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
                }),
                synced: Mutex::new(0),
                failed: AtomicBool::new(false),
                compact_after_bytes: self.compact_after_bytes,
                retention: self.retention,
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

    /// Writes `bytes` and returns the logical position after them.
    fn write(&self, bytes: &[u8]) -> Result<u64, JournalError> {
        self.check_failed()?;
        let mut log = self.log.lock();
        if let Err(e) = (&*log.file).write_all(bytes) {
            let path = log_path(&self.dir, log.generation);
            return Err(self.fail(io_error("append to journal", &path, e)));
        }
        let n = bytes.len() as u64;
        log.written += n;
        log.len += n;
        Ok(log.written)
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

    fn durable_append(&self, bytes: &[u8]) -> Result<(), JournalError> {
        let end = self.write(bytes)?;
        self.sync_to(end)?;
        let needs_compaction = self.log.lock().len >= self.compact_after_bytes;
        if needs_compaction {
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
            // Truncates what a failed earlier compaction may have left.
            File::create(&path).map_err(|e| io_error("create journal", &path, e))?;
            let file = OpenOptions::new()
                .append(true)
                .read(true)
                .open(&path)
                .map_err(|e| io_error("open journal", &path, e))?;
            sync_dir(&self.dir)?;
            Ok(file)
        })();
        let file = result.map_err(|e| self.fail(e))?;
        let old = log_path(&self.dir, log.generation);
        if let Err(e) = fs::remove_file(&old) {
            tracing::warn!(path = %old.display(), error = %e, "could not remove compacted journal");
        }
        log.file = Arc::new(file);
        log.generation = next;
        log.len = 0;
        *synced = log.written;
        tracing::debug!(dir = %self.dir.display(), generation = next, "journal compacted");
        Ok(())
    }
}

fn encode(records: &[Record]) -> Result<Vec<u8>, JournalError> {
    let mut bytes = Vec::with_capacity(256 * records.len());
    for record in records {
        serde_json::to_writer(&mut bytes, record).map_err(|e| {
            JournalError::with_source(
                JournalErrorKind::Encoding,
                "could not encode journal record",
                e,
            )
        })?;
        bytes.push(b'\n');
    }
    Ok(bytes)
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
            let bytes = encode(records)?;
            match durability {
                // A page-cache write is short enough to do on the runtime.
                Durability::Buffered => self.inner.write(&bytes).map(drop),
                Durability::Durable => {
                    // The blocking task finishes even if this future is dropped,
                    // so a commit marker is never half-decided by cancellation.
                    let inner = self.inner.clone();
                    tokio::task::spawn_blocking(move || inner.durable_append(&bytes))
                        .await
                        .map_err(interrupted)?
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

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("fsync journal directory", dir, e))
}

fn read_checkpoint(dir: &Path, retention: Retention) -> Result<(u64, JournalState), JournalError> {
    let path = dir.join(CHECKPOINT);
    match fs::read(&path) {
        Ok(bytes) => {
            let checkpoint: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| {
                JournalError::with_source(
                    JournalErrorKind::Corrupt,
                    format!("journal checkpoint {} is damaged", path.display()),
                    e,
                )
            })?;
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
        format: 1,
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

struct ParsedLog {
    records: Vec<Record>,
    /// Bytes up to and including the last good line.
    valid_len: usize,
}

/// Parses JSON lines. A bad or unterminated final stretch (a torn write) is
/// left out of `valid_len`; a bad line followed by a good one is corruption.
fn parse_log(bytes: &[u8], path: &Path) -> Result<ParsedLog, JournalError> {
    let mut records = Vec::new();
    let mut valid_len = 0;
    let mut offset = 0;
    let mut first_bad: Option<(usize, serde_json::Error)> = None;
    let mut line_no = 0;
    while offset < bytes.len() {
        line_no += 1;
        let Some(newline) = bytes[offset..].iter().position(|&b| b == b'\n') else {
            // Unterminated: the write was torn.
            break;
        };
        let line = &bytes[offset..offset + newline];
        let next = offset + newline + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            if first_bad.is_none() {
                valid_len = next;
            }
            offset = next;
            continue;
        }
        match serde_json::from_slice::<Record>(line) {
            Ok(record) => {
                if let Some((bad_line, error)) = first_bad.take() {
                    return Err(JournalError::with_source(
                        JournalErrorKind::Corrupt,
                        format!("journal {} is damaged at line {bad_line}", path.display()),
                        error,
                    ));
                }
                records.push(record);
                valid_len = next;
            }
            Err(error) => {
                if first_bad.is_none() {
                    first_bad = Some((line_no, error));
                }
            }
        }
        offset = next;
    }
    Ok(ParsedLog { records, valid_len })
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

    #[test]
    fn parse_log_distinguishes_torn_tail_from_corruption() {
        let line = serde_json::to_string(&put("a", 1)).unwrap();
        let path = Path::new("x");
        let ok = format!("{line}\n{line}\n");
        assert_eq!(parse_log(ok.as_bytes(), path).unwrap().records.len(), 2);
        let torn = format!("{line}\n{}", &line[..10]);
        let parsed = parse_log(torn.as_bytes(), path).unwrap();
        assert_eq!(
            (parsed.records.len(), parsed.valid_len),
            (1, line.len() + 1)
        );
        let torn_with_newline = format!("{line}\n\0\0\0\n");
        assert_eq!(
            parse_log(torn_with_newline.as_bytes(), path)
                .unwrap()
                .valid_len,
            line.len() + 1
        );
        let corrupt = format!("{line}\n{{bad\n{line}\n");
        assert!(parse_log(corrupt.as_bytes(), path).is_err());
    }
}

//! The spool: queued messages kept across a restart, as JSON lines.
//!
//! One line per record, in serving order:
//!
//! ```text
//! {"v":1,"sink":"telegram","count":1,"attempts":2,"notification":{"key":"vm-1:STOPPED","priority":"critical","title":"VM stopped","body":"","fields":[["vm","vm-1"]]}}
//! {"v":1,"sink":null,"count":3,"attempts":0,"notification":{...}}
//! ```
//!
//! `sink` names the sink a queued delivery was going to; `null` marks a
//! notification that was still held by the debounce (it fans out to its sinks
//! again when loaded). The file is replaced atomically: written to a
//! temporary file in the same directory, synced, then renamed over the old
//! one, so a crash mid-write leaves the previous spool intact.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::debug;

use crate::error::NotifyError;
use crate::notification::Notification;

pub(crate) const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SpoolRecord {
    pub(crate) v: u32,
    pub(crate) sink: Option<String>,
    pub(crate) count: u32,
    #[serde(default)]
    pub(crate) attempts: u32,
    /// How long before the write the change was observed (the
    /// notification's `observed_at` does not survive a restart as an
    /// instant); the restart's own downtime is not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) observed_ms_ago: Option<u64>,
    pub(crate) notification: Notification,
}

impl SpoolRecord {
    /// A record of `notification` (for `sink`, or held when `None`).
    pub(crate) fn new(
        sink: Option<String>,
        notification: Notification,
        count: u32,
        attempts: u32,
        now: Instant,
    ) -> Self {
        let observed_ms_ago = notification.observed().map(|at| {
            u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX)
        });
        SpoolRecord {
            v: VERSION,
            sink,
            count,
            attempts,
            observed_ms_ago,
            notification,
        }
    }

    /// The notification, its observation time restored relative to `now`.
    pub(crate) fn into_notification(self, now: Instant) -> Notification {
        match self.observed_ms_ago {
            Some(ms) => {
                let at = now.checked_sub(Duration::from_millis(ms)).unwrap_or(now);
                self.notification.observed_at(at)
            }
            None => self.notification,
        }
    }
}

/// A notifier's spool file: snapshots written in the order they were taken
/// (a write of an older snapshot that finishes after a newer one is
/// skipped), off the async threads.
#[derive(Debug)]
pub(crate) struct Spool {
    path: PathBuf,
    /// Generation of the latest snapshot, taken under the notifier's state
    /// lock so generations follow the state's history.
    generation: AtomicU64,
    /// The generation last written. Locked by the blocking writer itself,
    /// so a write outlives a cancelled caller and an older snapshot never
    /// overwrites a newer one.
    written: Arc<Mutex<u64>>,
}

impl Spool {
    pub(crate) fn new(path: PathBuf) -> Self {
        Spool {
            path,
            generation: AtomicU64::new(1),
            written: Arc::new(Mutex::new(0)),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The generation of a snapshot being taken now (call under the lock
    /// that guards what is snapshotted).
    pub(crate) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed)
    }

    fn error(&self, source: io::Error) -> NotifyError {
        NotifyError::Spool {
            path: self.path.clone(),
            source,
        }
    }

    /// Replaces the file with `records` (atomically: temporary file,
    /// fsync, rename over), unless a newer snapshot is already on disk.
    /// Returns how many records the snapshot held.
    pub(crate) async fn write(
        &self,
        records: Vec<SpoolRecord>,
        generation: u64,
    ) -> Result<usize, NotifyError> {
        let n = records.len();
        let path = self.path.clone();
        let written = self.written.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut last = written.lock();
            if *last > generation {
                return Ok(());
            }
            write(&path, &records)?;
            *last = generation;
            Ok(())
        })
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join.to_string())));
        result.map_err(|e| self.error(e))?;
        debug!(path = %self.path.display(), records = n, "spool written");
        Ok(n)
    }

    /// Reads the file (none: empty), for loading at start.
    pub(crate) fn read(&self) -> Result<(Vec<SpoolRecord>, Vec<BadLine>), NotifyError> {
        read(&self.path).map_err(|e| self.error(e))
    }

    /// Removes the file once its records live in memory.
    pub(crate) fn remove(&self) -> Result<(), NotifyError> {
        remove(&self.path).map_err(|e| self.error(e))
    }
}

/// A line that could not be read back.
#[derive(Debug)]
pub(crate) struct BadLine {
    pub(crate) line: usize,
    pub(crate) error: String,
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "spool".into());
    // Unique per write: two notifiers of one process never share a file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(name)
}

/// Replaces the spool at `path` with `records` (atomically). An empty list
/// removes the file.
pub(crate) fn write(path: &Path, records: &[SpoolRecord]) -> io::Result<()> {
    if records.is_empty() {
        return remove(path);
    }
    write_via(path, &temp_path(path), records)
}

fn write_via(path: &Path, tmp: &Path, records: &[SpoolRecord]) -> io::Result<()> {
    let result = (|| {
        let mut out = BufWriter::new(File::create(tmp)?);
        for r in records {
            serde_json::to_writer(&mut out, r)?;
            out.write_all(b"\n")?;
        }
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        fs::rename(tmp, path)?;
        // Make the rename itself durable; not every platform can open a
        // directory, so this is best effort.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

/// Reads the spool at `path` (none: empty). Lines that do not parse are
/// returned apart, so the caller can report them.
pub(crate) fn read(path: &Path) -> io::Result<(Vec<SpoolRecord>, Vec<BadLine>)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e),
    };
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<SpoolRecord>(&line) {
            Ok(r) if r.v == VERSION => records.push(r),
            Ok(r) => bad.push(BadLine {
                line: i + 1,
                error: format!("unsupported spool version {}", r.v),
            }),
            Err(e) => bad.push(BadLine {
                line: i + 1,
                error: e.to_string(),
            }),
        }
    }
    Ok((records, bad))
}

/// Removes the spool after it was loaded (its records now live in memory).
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u32, sink: Option<&str>) -> SpoolRecord {
        SpoolRecord {
            v: VERSION,
            sink: sink.map(str::to_owned),
            count: i,
            attempts: 0,
            observed_ms_ago: None,
            notification: Notification::critical(format!("k{i}"), "t <b>\"é\"\n").field("a", "b"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn snapshots_write_in_generation_order_and_keep_the_observed_age() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("notify.spool"));
        let old = spool.next_generation();
        let new = spool.next_generation();
        tokio::time::advance(Duration::from_secs(10)).await;
        let observed = Instant::now() - Duration::from_secs(4);
        let n = Notification::critical("k", "t").observed_at(observed);
        let rec = SpoolRecord::new(Some("s".into()), n, 1, 0, Instant::now());
        assert_eq!(rec.observed_ms_ago, Some(4_000));
        assert_eq!(spool.write(vec![rec.clone()], new).await.unwrap(), 1);
        // The older snapshot finishes later: skipped, the newer stays.
        spool.write(vec![record(9, None)], old).await.unwrap();
        let (back, bad) = spool.read().unwrap();
        assert!(bad.is_empty());
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].notification.key(), "k", "the newer snapshot");
        assert_eq!(back[0].observed_ms_ago, Some(4_000));
        assert_eq!(
            back[0].notification.observed(),
            None,
            "an instant is not written"
        );
        drop(rec);
        tokio::time::advance(Duration::from_secs(60)).await;
        let restored = back
            .into_iter()
            .next()
            .unwrap()
            .into_notification(Instant::now());
        assert_eq!(
            restored.observed(),
            Some(Instant::now() - Duration::from_secs(4)),
            "the age carries over a restart"
        );
        spool.remove().unwrap();
        assert!(spool.read().unwrap().0.is_empty());
    }

    #[test]
    fn round_trip_and_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.spool");
        assert!(read(&path).unwrap().0.is_empty(), "missing file is empty");
        let records = vec![record(1, Some("telegram")), record(2, None)];
        write(&path, &records).unwrap();
        let (back, bad) = read(&path).unwrap();
        assert_eq!(back, records);
        assert!(bad.is_empty());
        let files: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            files,
            ["notify.spool"],
            "the temporary file was renamed away"
        );

        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("{not json\n{\"v\":9,\"sink\":null,\"count\":1,\"notification\":{\"key\":\"k\",\"priority\":\"info\",\"title\":\"t\"}}\n");
        fs::write(&path, text).unwrap();
        let (back, bad) = read(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [3, 4]);

        write(&path, &[]).unwrap();
        assert!(!path.exists(), "an empty spool removes the file");
        remove(&path).unwrap();
    }

    #[test]
    fn failed_write_keeps_the_old_spool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.spool");
        write(&path, &[record(1, Some("a"))]).unwrap();
        // A directory where the temporary file should go makes the write
        // fail before the rename.
        let tmp = dir.path().join("blocked");
        fs::create_dir(&tmp).unwrap();
        assert!(write_via(&path, &tmp, &[record(2, Some("b"))]).is_err());
        assert_eq!(read(&path).unwrap().0, vec![record(1, Some("a"))]);
    }
}

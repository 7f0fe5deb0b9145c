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

use serde::{Deserialize, Serialize};

use crate::notification::Notification;

pub(crate) const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SpoolRecord {
    pub(crate) v: u32,
    pub(crate) sink: Option<String>,
    pub(crate) count: u32,
    #[serde(default)]
    pub(crate) attempts: u32,
    pub(crate) notification: Notification,
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
            notification: Notification::critical(format!("k{i}"), "t <b>\"é\"\n").field("a", "b"),
        }
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

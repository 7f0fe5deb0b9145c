//! The spool: queued messages kept across a restart, as checksummed JSON
//! lines.
//!
//! A header, one line per record in serving order, an end marker:
//!
//! ```text
//! keel-spool v2
//! 3f1c09a2 {"v":1,"sink":"telegram","count":1,"attempts":2,"notification":{"key":"vm-1:STOPPED","priority":"critical","title":"VM stopped","body":"","fields":[["vm","vm-1"]]}}
//! 9b0e6d14 {"v":1,"sink":null,"count":3,"attempts":0,"notification":{...}}
//! 51d2c7e0 end 2
//! ```
//!
//! `sink` names the sink a queued delivery was going to; `null` marks a
//! notification that was still held by the debounce (it fans out to its sinks
//! again when loaded). Each line after the header starts with a CRC-32
//! (IEEE) that continues from the line before (`crc32(header ‖ payload₁ ‖ …
//! ‖ payloadᵢ)`, newlines left out), so a line checks its bytes and its
//! place; the end marker counts the lines and closes the chain, so a file
//! cut short is noticed.
//!
//! **Replacement** is atomic: the snapshot is written to a temporary file in
//! the same directory, then renamed over the old one, so a crash mid-write
//! leaves the previous spool whole (and a stray temporary file, removed at
//! the next load). With [`SpoolSync::Full`] (the default) the temporary file
//! is `fsync`ed before the rename and the directory after it.
//!
//! **Reading** never delivers what was not written and never panics: a line
//! that fails its CRC, does not decode or comes after the end marker is
//! skipped and reported (the notifier logs it at `error` and counts it as
//! dropped); the lines around it still load, since the chain resumes from
//! the stored CRC. A missing end marker (the file was cut short) is
//! reported the same way, after loading the lines that check. Files of
//! format 1 (bare JSON lines, before the CRC) still load, line by line.

use std::fs::{self, File};
use std::io::{self, Write};
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

/// When a spool snapshot waits for the disk: the spool's durability, as a
/// stated choice (the names follow SQLite's `PRAGMA synchronous`).
///
/// | policy | a snapshot written (`save_spool` returned) survives | a snapshot costs |
/// |---|---|---|
/// | [`Full`](Self::Full) (default) | the process being killed, an OS crash, a power loss | write + `fsync` of the file + rename + `fsync` of the directory |
/// | [`Normal`](Self::Normal) | the process being killed; after an OS crash the file may be the previous snapshot, or cut short (reported at load, the lines that check still load) | write + rename |
///
/// Under both, the old spool is replaced by renaming a complete temporary
/// file over it, and a damaged line is never delivered. `Full` is the
/// default because a snapshot is written rarely (at shutdown, every
/// [`spool_interval`](crate::NotifierBuilder::spool_interval)) and what it
/// holds is alerts nobody has seen yet; `Normal` suits a spool interval short
/// enough that the `fsync`s would cost (see `docs/PERFORMANCE.md`).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SpoolSync {
    /// `fsync` the snapshot before renaming it over the old one, and the
    /// directory after.
    #[default]
    Full,
    /// Write and rename; no `fsync`.
    Normal,
}

/// The first line of a format-2 spool.
const HEADER: &[u8] = b"keel-spool v2";
/// What an end marker's payload starts with.
const END: &[u8] = b"end ";
/// `"xxxxxxxx "` before each payload.
const FRAME: usize = 9;

/// CRC-32 (IEEE, as zlib computes it), one byte at a time from a table built
/// at compile time. A spool is written seldom and is small, so this is fast
/// enough (hundreds of MB/s), and keel-notify needs no dependency for it.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        #[allow(clippy::cast_possible_truncation)]
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// The CRC-32 of what `prev` covered followed by `bytes` (`prev` = 0 for
/// none).
fn crc32(prev: u32, bytes: &[u8]) -> u32 {
    let mut c = !prev;
    for &b in bytes {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

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
    sync: SpoolSync,
    /// Generation of the latest snapshot, taken under the notifier's state
    /// lock so generations follow the state's history.
    generation: AtomicU64,
    /// The generation last written. Locked by the blocking writer itself,
    /// so a write outlives a cancelled caller and an older snapshot never
    /// overwrites a newer one.
    written: Arc<Mutex<u64>>,
}

impl Spool {
    pub(crate) fn new(path: PathBuf, sync: SpoolSync) -> Self {
        Spool {
            path,
            sync,
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
        let sync = self.sync;
        let result = tokio::task::spawn_blocking(move || {
            let mut last = written.lock();
            if *last > generation {
                return Ok(());
            }
            write(&path, &records, sync)?;
            *last = generation;
            Ok(())
        })
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join.to_string())));
        result.map_err(|e| self.error(e))?;
        debug!(path = %self.path.display(), records = n, "spool written");
        Ok(n)
    }

    /// Reads the file (none: empty), for loading at start, and removes the
    /// temporary files a crash in the middle of a write left behind.
    pub(crate) fn read(&self) -> Result<(Vec<SpoolRecord>, Vec<BadLine>), NotifyError> {
        remove_stale_temps(&self.path);
        read(&self.path).map_err(|e| self.error(e))
    }

    /// Removes the file once its records live in memory.
    pub(crate) fn remove(&self) -> Result<(), NotifyError> {
        remove(&self.path).map_err(|e| self.error(e))
    }
}

/// A line that could not be read back (line 0: the file as a whole).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadLine {
    pub(crate) line: usize,
    pub(crate) error: String,
}

/// What temporary files of the spool at `path` are named: `{name}.tmp-`
/// followed by the process id and a counter.
fn temp_prefix(path: &Path) -> std::ffi::OsString {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "spool".into());
    name.push(".tmp-");
    name
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = temp_prefix(path);
    // Unique per write: two notifiers of one process never share a file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    name.push(format!("{}-{n}", std::process::id()));
    path.with_file_name(name)
}

/// Removes temporary files of the spool at `path` that a process killed in
/// the middle of a write left behind (best effort: they are only litter).
fn remove_stale_temps(path: &Path) {
    let prefix = temp_prefix(path);
    let prefix = prefix.as_encoded_bytes();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().as_encoded_bytes().starts_with(prefix) {
            debug!(path = %entry.path().display(), "removing a spool temporary file left by a crash");
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Replaces the spool at `path` with `records` (atomically). An empty list
/// removes the file.
pub(crate) fn write(path: &Path, records: &[SpoolRecord], sync: SpoolSync) -> io::Result<()> {
    if records.is_empty() {
        return remove(path);
    }
    write_via(path, &temp_path(path), records, sync)
}

/// The bytes of a spool holding `records` (see the module docs).
pub(crate) fn encode(records: &[SpoolRecord]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64 + 256 * records.len());
    out.extend_from_slice(HEADER);
    out.push(b'\n');
    let mut crc = crc32(0, HEADER);
    let mut line = Vec::with_capacity(256);
    let mut push = |out: &mut Vec<u8>, payload: &[u8]| {
        crc = crc32(crc, payload);
        out.extend_from_slice(format!("{crc:08x} ").as_bytes());
        out.extend_from_slice(payload);
        out.push(b'\n');
    };
    for r in records {
        line.clear();
        serde_json::to_writer(&mut line, r)?;
        push(&mut out, &line);
    }
    push(&mut out, format!("end {}", records.len()).as_bytes());
    Ok(out)
}

fn write_via(path: &Path, tmp: &Path, records: &[SpoolRecord], sync: SpoolSync) -> io::Result<()> {
    let result = (|| {
        let bytes = encode(records)?;
        let mut file = File::create(tmp)?;
        file.write_all(&bytes)?;
        if sync == SpoolSync::Full {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(tmp, path)?;
        if sync == SpoolSync::Full {
            sync_parent(path)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

/// Makes a rename in `path`'s directory durable.
#[cfg(unix)]
fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Other platforms cannot open a directory to sync it; their rename is as
/// durable as the file system makes it.
#[cfg(not(unix))]
fn sync_parent(_: &Path) -> io::Result<()> {
    Ok(())
}

/// Reads the spool at `path` (none: empty). Lines that cannot be trusted
/// are returned apart, so the caller can report them.
pub(crate) fn read(path: &Path) -> io::Result<(Vec<SpoolRecord>, Vec<BadLine>)> {
    match fs::read(path) {
        Ok(bytes) => Ok(parse(&bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((Vec::new(), Vec::new())),
        Err(e) => Err(e),
    }
}

/// A line's stored CRC and payload, if it has the frame's shape.
fn frame(line: &[u8]) -> Option<(u32, &[u8])> {
    if line.len() < FRAME || line[FRAME - 1] != b' ' {
        return None;
    }
    let crc = line[..FRAME - 1].iter().try_fold(0u32, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u32::from(v))
    })?;
    Some((crc, &line[FRAME..]))
}

/// Reads a spool's bytes (see the module docs): the records that check, in
/// order, and what could not be trusted.
pub(crate) fn parse(bytes: &[u8]) -> (Vec<SpoolRecord>, Vec<BadLine>) {
    if bytes.is_empty() {
        // The spool is never written empty (no records: no file).
        let error = "the spool file is empty (cut short by a crash)".to_owned();
        return (Vec::new(), vec![BadLine { line: 0, error }]);
    }
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // Text after the last newline is an unterminated line; none is "".
    let unterminated = lines.pop().filter(|last| !last.is_empty());
    if bytes.starts_with(HEADER) || lines.iter().any(|l| frame(l).is_some()) {
        parse_framed(&lines, unterminated)
    } else {
        parse_legacy(&lines, unterminated)
    }
}

fn parse_framed(lines: &[&[u8]], unterminated: Option<&[u8]>) -> (Vec<SpoolRecord>, Vec<BadLine>) {
    let mut records = Vec::new();
    let mut bad = Vec::new();
    let mut fail = |line: usize, error: String| bad.push(BadLine { line, error });
    if lines.first() != Some(&HEADER) {
        fail(1, "damaged spool header".to_owned());
    }
    let mut crc = crc32(0, HEADER);
    let mut ended = false;
    for (i, line) in lines.iter().enumerate().skip(1) {
        let line_no = i + 1;
        if ended {
            fail(line_no, "a line after the end marker".to_owned());
            continue;
        }
        let Some((stored, payload)) = frame(line) else {
            fail(line_no, "not a checksummed spool line".to_owned());
            continue;
        };
        let computed = crc32(crc, payload);
        // Resume from what the line says, so one damaged line costs one
        // line (its successor checks against the stored CRC).
        crc = stored;
        if computed != stored {
            fail(
                line_no,
                format!("checksum mismatch (stored {stored:08x}, computed {computed:08x})"),
            );
            continue;
        }
        if let Some(count) = payload.strip_prefix(END) {
            ended = true;
            let lines_between = i - 1;
            if std::str::from_utf8(count).ok().and_then(|c| c.parse().ok()) != Some(lines_between) {
                fail(
                    line_no,
                    format!(
                        "the end marker counts {:?} records, the file has {lines_between} lines",
                        String::from_utf8_lossy(count)
                    ),
                );
            }
            continue;
        }
        match serde_json::from_slice::<SpoolRecord>(payload) {
            Ok(r) if r.v == VERSION => records.push(r),
            Ok(r) => fail(line_no, format!("unsupported spool version {}", r.v)),
            Err(e) => fail(line_no, e.to_string()),
        }
    }
    let last = lines.len() + 1;
    if unterminated.is_some() {
        fail(
            last,
            "an unterminated line (cut short by a crash)".to_owned(),
        );
    }
    if !ended {
        fail(
            last,
            "no end marker: the file was cut short, records after the last line read are lost"
                .to_owned(),
        );
    }
    (records, bad)
}

/// Format 1: bare JSON lines, each loaded on its own.
fn parse_legacy(lines: &[&[u8]], unterminated: Option<&[u8]>) -> (Vec<SpoolRecord>, Vec<BadLine>) {
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in lines.iter().chain(unterminated.as_ref()).enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<SpoolRecord>(line) {
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
    (records, bad)
}

/// Removes the spool after it was loaded (its records now live in memory).
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The property the `spool` fuzz target checks (re-exported as
/// `keel_notify::fuzzing::spool`; replayed by `tests/fuzz_replay_spool.rs`).
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz {
    use super::{BadLine, SpoolRecord, VERSION, encode, parse};
    use crate::notification::{Notification, Priority};

    struct Input<'a>(&'a [u8]);

    impl Input<'_> {
        fn byte(&mut self) -> u8 {
            match self.0.split_first() {
                Some((&b, rest)) => {
                    self.0 = rest;
                    b
                }
                None => 0,
            }
        }

        fn u16(&mut self) -> u16 {
            u16::from_le_bytes([self.byte(), self.byte()])
        }

        fn bytes(&mut self, n: usize) -> &[u8] {
            let (head, rest) = self.0.split_at(n.min(self.0.len()));
            self.0 = rest;
            head
        }

        fn string(&mut self) -> String {
            let n = usize::from(self.byte() % 24);
            String::from_utf8_lossy(self.bytes(n)).into_owned()
        }
    }

    fn record(input: &mut Input<'_>) -> SpoolRecord {
        let priority = match input.byte() % 3 {
            0 => Priority::Critical,
            1 => Priority::Warning,
            _ => Priority::Info,
        };
        let mut notification = Notification::new(input.string(), priority, input.string())
            .body(input.string())
            .field(input.string(), input.string());
        if input.byte() & 1 == 1 {
            notification = notification.subject(input.string());
        }
        SpoolRecord {
            v: VERSION,
            sink: (input.byte() & 1 == 1).then(|| input.string()),
            count: u32::from(input.u16()),
            attempts: u32::from(input.byte()),
            observed_ms_ago: (input.byte() & 1 == 1).then(|| u64::from(input.u16())),
            notification,
        }
    }

    /// The input's first byte picks raw mode (the rest is a spool file as
    /// found on disk: reading it must not panic and gives the same answer
    /// twice) or write-then-damage mode: records written by the real
    /// encoder, then truncated, bit-flipped or spliced with garbage. The
    /// reader must deliver only records that were written, in the order
    /// written, each at most once; every record before the first damaged
    /// byte; and report any damage.
    ///
    /// # Panics
    ///
    /// When the property fails.
    pub fn spool(data: &[u8]) {
        let mut input = Input(data);
        if input.byte() & 1 == 1 {
            let first = parse(input.0);
            assert_eq!(first, parse(input.0), "deterministic");
            return;
        }
        let n = usize::from(input.byte() % 6);
        let records: Vec<SpoolRecord> = (0..n).map(|_| record(&mut input)).collect();
        let original = encode(&records).expect("records encode");
        assert_eq!(parse(&original), (records.clone(), Vec::<BadLine>::new()));
        // Record i's line ends at ends[i + 1] (ends[0]: the header).
        let ends: Vec<usize> = original
            .iter()
            .enumerate()
            .filter(|&(_, b)| *b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();

        let mut bytes = original.clone();
        let mut intact = bytes.len();
        for _ in 0..input.byte() % 4 {
            let at = usize::from(input.u16()) % (bytes.len() + 1);
            intact = intact.min(at);
            match input.byte() % 3 {
                0 => bytes.truncate(at),
                1 => {
                    let mask = input.byte().max(1);
                    if let Some(b) = bytes.get_mut(at) {
                        *b ^= mask;
                    }
                }
                _ => {
                    let n = usize::from(input.byte() % 16) + 1;
                    let garbage = input.bytes(n).to_vec();
                    bytes.splice(at..at, garbage);
                }
            }
        }

        let (back, bad) = parse(&bytes);
        // An order-preserving selection of what was written, each once.
        let mut next = 0;
        for r in &back {
            let Some(i) = records[next..].iter().position(|w| w == r) else {
                panic!("a record that was not written (or out of order, or twice): {r:?}");
            };
            next += i + 1;
        }
        let whole = ends[1..]
            .iter()
            .filter(|&&end| end <= intact)
            .count()
            .min(n);
        assert!(
            back.len() >= whole && back[..whole] == records[..whole],
            "a record before the first damaged byte ({intact}) was lost"
        );
        if bytes != original {
            assert!(!bad.is_empty(), "damage went unreported");
        }
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
        let spool = Spool::new(dir.path().join("notify.spool"), SpoolSync::Full);
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
        write(&path, &records, SpoolSync::Full).unwrap();
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

        // Format 1 (bare JSON lines) still loads, line by line.
        let mut text = String::new();
        for r in &records {
            text.push_str(&serde_json::to_string(r).unwrap());
            text.push('\n');
        }
        text.push_str("{not json\n{\"v\":9,\"sink\":null,\"count\":1,\"notification\":{\"key\":\"k\",\"priority\":\"info\",\"title\":\"t\"}}\n");
        fs::write(&path, text).unwrap();
        let (back, bad) = read(&path).unwrap();
        assert_eq!(back, records);
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [3, 4]);

        write(&path, &[], SpoolSync::Normal).unwrap();
        assert!(!path.exists(), "an empty spool removes the file");
        remove(&path).unwrap();
    }

    #[test]
    fn failed_write_keeps_the_old_spool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.spool");
        write(&path, &[record(1, Some("a"))], SpoolSync::Full).unwrap();
        // A directory where the temporary file should go makes the write
        // fail before the rename.
        let tmp = dir.path().join("blocked");
        fs::create_dir(&tmp).unwrap();
        assert!(write_via(&path, &tmp, &[record(2, Some("b"))], SpoolSync::Full).is_err());
        assert_eq!(read(&path).unwrap().0, vec![record(1, Some("a"))]);
    }

    #[test]
    fn stale_temporary_files_are_removed_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.spool");
        write(&path, &[record(1, Some("a"))], SpoolSync::Normal).unwrap();
        let stale = dir.path().join("notify.spool.tmp-4242-7");
        fs::write(&stale, b"half a snap").unwrap();
        let other = dir.path().join("other.spool.tmp-1-1");
        fs::write(&other, b"not ours").unwrap();
        let spool = Spool::new(path, SpoolSync::Full);
        assert_eq!(spool.read().unwrap().0, vec![record(1, Some("a"))]);
        assert!(!stale.exists());
        assert!(other.exists(), "another spool's file is left alone");
    }

    fn line_ends(bytes: &[u8]) -> Vec<usize> {
        bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i + 1)
            .collect()
    }

    #[test]
    fn damage_is_reported_and_never_delivered() {
        let records: Vec<SpoolRecord> = (1..=4).map(|i| record(i, Some("s"))).collect();
        let bytes = encode(&records).unwrap();
        assert_eq!(parse(&bytes), (records.clone(), vec![]));
        let ends = line_ends(&bytes);
        // A flipped bit in record 2 (line 3): only that record is lost.
        let mut flipped = bytes.clone();
        flipped[ends[1] + 30] ^= 0x20;
        let (back, bad) = parse(&flipped);
        assert_eq!(back, [&records[..1], &records[2..]].concat());
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [3]);
        // Cut at a line boundary: what is there loads, the cut is reported.
        let (back, bad) = parse(&bytes[..ends[2]]);
        assert_eq!(back, records[..2]);
        assert_eq!(bad.len(), 1, "{bad:?}");
        // A duplicated line is skipped, not delivered twice.
        let dup = [&bytes[..ends[2]], &bytes[ends[1]..]].concat();
        let (back, bad) = parse(&dup);
        assert_eq!(back, records);
        assert!(!bad.is_empty());
        // Garbage and an empty file.
        assert!(parse(b"\0\0\0\0").0.is_empty());
        assert_eq!(parse(b"").1.len(), 1);
        assert!(parse(b"\xff\xfe\n{\n").0.is_empty());
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(0, b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(crc32(0, b"1234"), b"56789"), 0xCBF4_3926);
    }
}

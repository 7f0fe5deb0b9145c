//! The properties the `journal` and `journal_roundtrip` fuzz targets check
//! (`fuzz/fuzz_targets/`), also replayed over the committed corpus by
//! `tests/fuzz_replay.rs`. Not a stable API.
//!
//! The property: **the journal reader never returns a record that was not
//! fully written, in the order written, and never skips one silently.** A
//! torn or corrupted journal is either cut back to a prefix of what was
//! written (a torn tail) or refused with [`JournalErrorKind::Corrupt`].

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::DateTime;
use serde_json::json;

use crate::error::JournalErrorKind;
use crate::journal::format::{self, Encoded, Format, HEADER, parse_log};
use crate::record::{Change, ChangeOp, Record, RollbackCause, TxId};

/// Reads fuzz input as a stream of choices; zeros once it runs out.
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

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| acc << 8 | u64::from(self.byte()))
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn string(&mut self) -> String {
        let n = usize::from(self.byte() % 24);
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }
}

fn tx_id(uuid: uuid::Uuid) -> TxId {
    uuid.to_string()
        .parse()
        .expect("a UUID is a transaction id")
}

/// A record of any kind the manager writes, from the input.
fn record(input: &mut Input<'_>) -> Record {
    let tx = tx_id(uuid::Uuid::from_u64_pair(input.u64(), input.u64()));
    // Whole seconds and nanoseconds in range: every instant round-trips.
    let at = DateTime::from_timestamp(i64::from(input.u16()) * 100_000, 0).unwrap_or_default();
    let resource = input.string();
    match input.byte() % 5 {
        0 => Record::Begin {
            tx,
            resource,
            operation: input.string(),
            owner: input.string(),
            trace_id: input.string(),
            base_version: input.u64(),
            at,
        },
        1 => Record::Change {
            tx,
            index: u32::from(input.u16()),
            change: Change {
                op: ChangeOp::Set,
                path: input.string(),
                patch: None,
                before: (input.byte() & 1 == 0).then(|| json!(input.string())),
                after: Some(json!({"s": input.string(), "n": input.u64()})),
            },
        },
        2 => Record::Commit {
            tx,
            resource,
            version: input.u64(),
            document: json!({"s": input.string(), "a": [input.u64(), null, true]}),
            changes: u32::from(input.u16()),
            at,
        },
        3 => Record::Rollback {
            tx,
            resource,
            cause: RollbackCause::Recovery,
            reason: input.string(),
            at,
        },
        _ => Record::Put {
            tx,
            resource,
            version: input.u64(),
            document: json!(input.string()),
            at,
        },
    }
}

/// A damage to apply to the log's bytes.
enum Damage {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
}

impl Damage {
    fn from(input: &mut Input<'_>, len: usize) -> Damage {
        let at = usize::from(input.u16()) % (len + 1);
        match input.byte() % 3 {
            0 => Damage::Truncate(at),
            1 => Damage::Flip(at.min(len.saturating_sub(1)), input.byte().max(1)),
            _ => {
                let n = usize::from(input.byte() % 16) + 1;
                Damage::Insert(at, input.bytes(n).to_vec())
            }
        }
    }

    /// Applies it; returns the offset before which nothing changed.
    fn apply(&self, bytes: &mut Vec<u8>) -> usize {
        match *self {
            Damage::Truncate(at) => {
                bytes.truncate(at);
                at
            }
            Damage::Flip(at, mask) => match bytes.get_mut(at) {
                Some(b) => {
                    *b ^= mask;
                    at
                }
                None => bytes.len(),
            },
            Damage::Insert(at, ref garbage) => {
                let at = at.min(bytes.len());
                bytes.splice(at..at, garbage.iter().copied());
                at
            }
        }
    }
}

/// Encodes `records` in batches exactly as [`FileJournal`](crate::FileJournal)
/// writes them; returns the log and the end offset of each line (the
/// header's first).
fn write_log(records: &[Record], batches: &[usize]) -> (Vec<u8>, Vec<usize>) {
    let mut log = HEADER.to_vec();
    let mut ends = vec![log.len()];
    let mut crc = format::header_crc();
    let mut rest = records;
    for &n in batches.iter().chain(std::iter::once(&usize::MAX)) {
        if rest.is_empty() {
            break;
        }
        let (batch, tail) = rest.split_at(n.clamp(1, rest.len()));
        rest = tail;
        let mut encoded = Encoded::new(batch).expect("records encode");
        encoded.seal(&mut crc);
        let base = log.len();
        log.extend_from_slice(&encoded.bytes);
        ends.extend(
            encoded
                .bytes
                .iter()
                .enumerate()
                .filter(|&(_, b)| *b == b'\n')
                .map(|(i, _)| base + i + 1),
        );
    }
    (log, ends)
}

/// The in-memory property (the `journal` target, meant for 10⁷ runs): the
/// input's first byte picks raw mode (the rest is a log file as found on
/// disk) or write-then-damage mode (records written by the real encoder,
/// then truncated, bit-flipped or spliced with garbage, then read back).
///
/// # Panics
///
/// When the property fails.
pub fn journal(data: &[u8]) {
    let mut input = Input(data);
    if input.byte() & 1 == 1 {
        raw(input.0);
    } else {
        damaged(&mut input);
    }
}

/// Any bytes: no panic; an error is `Corrupt` with an offset; what is kept
/// reads back the same, and an append after the cut reads back too.
fn raw(bytes: &[u8]) {
    let path = Path::new("fuzz.jsonl");
    let parsed = match parse_log(bytes, path) {
        Ok(parsed) => parsed,
        Err(e) => {
            assert_eq!(e.kind(), JournalErrorKind::Corrupt, "{e}");
            assert!(e.to_string().contains("at byte"), "{e}");
            return;
        }
    };
    assert!(parsed.valid_len <= bytes.len());
    let kept = &bytes[..parsed.valid_len];
    let again = parse_log(kept, path).expect("the kept prefix reads back");
    assert_eq!(again.records, parsed.records, "the kept prefix is stable");
    assert_eq!(again.valid_len, parsed.valid_len);
    if parsed.format == Format::Framed {
        // The journal cuts the file to `valid_len` and appends from there.
        let extra = Record::Rollback {
            tx: tx_id(uuid::Uuid::nil()),
            resource: "r".into(),
            cause: RollbackCause::Requested,
            reason: "appended after the cut".into(),
            at: DateTime::UNIX_EPOCH,
        };
        let mut crc = parsed.crc;
        let mut encoded = Encoded::new(std::slice::from_ref(&extra)).expect("encodes");
        encoded.seal(&mut crc);
        let mut appended = kept.to_vec();
        appended.extend_from_slice(&encoded.bytes);
        let after = parse_log(&appended, path).expect("an append after the cut reads back");
        assert_eq!(after.records.len(), parsed.records.len() + 1);
        assert_eq!(after.records.last(), Some(&extra));
        assert_eq!(after.valid_len, appended.len());
    }
}

/// Records written by the real encoder, then damaged.
fn damaged(input: &mut Input<'_>) {
    let n = usize::from(input.byte() % 8);
    let records: Vec<Record> = (0..n).map(|_| record(input)).collect();
    let batches: Vec<usize> = (0..3).map(|_| usize::from(input.byte() % 4)).collect();
    let (original, ends) = write_log(&records, &batches);
    let path = Path::new("fuzz.jsonl");

    let clean = parse_log(&original, path).expect("an undamaged log reads back");
    assert_eq!(clean.records, records, "round trip");
    assert_eq!(clean.valid_len, original.len());

    let mut bytes = original.clone();
    let mut intact = bytes.len();
    let mut damages = Vec::new();
    for _ in 0..input.byte() % 4 {
        let damage = Damage::from(input, bytes.len());
        intact = intact.min(damage.apply(&mut bytes));
        damages.push(damage);
    }
    let intact = intact.min(bytes.len());
    debug_assert_eq!(bytes[..intact], original[..intact]);
    // Records whose lines lie wholly before the first damaged byte.
    let whole = ends[1..].iter().filter(|&&end| end <= intact).count();

    match parse_log(&bytes, path) {
        Ok(parsed) => {
            let k = parsed.records.len();
            assert!(k <= n, "more records than were written");
            assert_eq!(
                parsed.records,
                records[..k],
                "not a prefix of what was written"
            );
            assert!(
                k >= whole,
                "an intact record ({whole} of them) was dropped: kept {k}"
            );
            if k > 0 || parsed.format == Format::Framed {
                // Byte for byte what was written, up to the end of record k.
                assert_eq!(
                    parsed.valid_len, ends[k],
                    "kept bytes end at a record's end"
                );
                assert_eq!(
                    bytes[..ends[k]],
                    original[..ends[k]],
                    "kept bytes were written"
                );
            }
            if let [Damage::Truncate(_)] = damages.as_slice() {
                assert_eq!(k, whole, "a truncation keeps every whole record");
            }
            if let [Damage::Flip(at, _)] = damages.as_slice() {
                // A flip with two whole lines after the line it hit must be
                // reported, whatever it did to that line and the next.
                let hit = ends.iter().filter(|&&end| end <= *at).count();
                assert!(
                    hit + 2 >= ends.len(),
                    "a flipped bit at {at} (line {hit} of {}) was not reported",
                    ends.len()
                );
            }
        }
        Err(e) => {
            assert_eq!(e.kind(), JournalErrorKind::Corrupt, "{e}");
            assert!(e.to_string().contains("at byte"), "{e}");
            assert!(!damages.is_empty(), "an undamaged log is corrupt: {e}");
            assert!(
                !matches!(damages.as_slice(), [Damage::Truncate(_)]),
                "a truncation is a torn tail, not corruption: {e}"
            );
        }
    }
}

/// The file round trip (the `journal_roundtrip` target, a smaller budget):
/// a real [`FileJournal`](crate::FileJournal) in a fresh directory appends
/// batches (compacting when the input says so), its log file is damaged,
/// and the journal is reopened: it opens with a prefix of what the log held
/// and takes appends after it, or refuses with `Corrupt`.
///
/// # Panics
///
/// When the property fails.
pub fn journal_roundtrip(data: &[u8]) {
    use crate::journal::{Durability, FileJournal, Journal, SyncPolicy};

    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "keel-tx-fuzz-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _cleanup = RemoveOnDrop(&dir);
    let mut input = Input(data);
    let sync = if input.byte() & 1 == 0 {
        SyncPolicy::Normal
    } else {
        SyncPolicy::Full
    };
    let compact_after = 200 + u64::from(input.u16());

    RUNTIME.with(|rt| {
        rt.block_on(async {
            let journal = FileJournal::builder(&dir)
                .sync(sync)
                .compact_after_bytes(compact_after)
                .open()
                .expect("a fresh journal opens");
            for _ in 0..input.byte() % 6 {
                let batch: Vec<Record> = (0..1 + input.byte() % 3)
                    .map(|_| record(&mut input))
                    .collect();
                let durability = if input.byte() & 1 == 0 {
                    Durability::Buffered
                } else {
                    Durability::Durable
                };
                journal.append(&batch, durability).await.expect("append");
            }
            let log = journal.log_path();
            drop(journal);

            let original = std::fs::read(&log).expect("the log exists");
            let clean = parse_log(&original, &log).expect("the written log reads back");
            let mut bytes = original.clone();
            for _ in 0..input.byte() % 3 {
                Damage::from(&mut input, bytes.len()).apply(&mut bytes);
            }
            std::fs::write(&log, &bytes).expect("write the damaged log");

            let journal = match FileJournal::builder(&dir).sync(sync).open() {
                Ok(journal) => journal,
                Err(crate::TxError::Journal(e)) => {
                    assert_eq!(e.kind(), JournalErrorKind::Corrupt, "{e}");
                    return;
                }
                Err(e) => panic!("reopen failed: {e}"),
            };
            journal.load().await.expect("an opened journal loads");
            let log = journal.log_path();
            let reopened = std::fs::read(&log).expect("the log exists");
            let kept = parse_log(&reopened, &log).expect("the cut log reads back");
            let k = kept.records.len();
            assert_eq!(
                kept.records,
                clean.records[..k],
                "a prefix of what was written"
            );
            assert_eq!(kept.valid_len, reopened.len(), "the torn tail was cut off");
            let extra = record(&mut input);
            journal
                .append(std::slice::from_ref(&extra), Durability::Durable)
                .await
                .expect("append after reopen");
            drop(journal);
            let journal = FileJournal::builder(&dir)
                .sync(sync)
                .open()
                .expect("reopens after the append");
            let log = journal.log_path();
            let last = parse_log(&std::fs::read(&log).expect("log"), &log).expect("reads back");
            assert_eq!(last.records.len(), k + 1);
            assert_eq!(last.records.last(), Some(&extra));
        });
    });
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0);
    }
}

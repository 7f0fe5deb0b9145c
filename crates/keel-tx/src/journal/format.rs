//! The file journal's on-disk format: how records are framed, checked and
//! read back, apart from any file I/O so the reader can be fuzzed from
//! bytes (`keel_tx::fuzzing`).
//!
//! # Format 2 (written since issue 21)
//!
//! ```text
//! keel-journal v2
//! 1c291ca3 {"type":"put","tx":"…","resource":"a","version":1,…}
//! 5e0a8f10 {"type":"begin",…}
//! ```
//!
//! A header line, then one line per [`Record`]: eight lower-case hex digits,
//! a space, the record as JSON, a newline. The hex is a CRC-32 (IEEE) that
//! continues from the previous line's: line *i* stores
//! `crc32(header ‖ payload₁ ‖ … ‖ payloadᵢ)` (the header without its
//! newline, the payloads without theirs). So a line checks its own bytes
//! and its place: a flipped bit, a line duplicated, dropped or moved, or a
//! line from another log all fail the check.
//!
//! # Reading
//!
//! * An unterminated last line, or bad lines (failing the check) with no
//!   framed line after them, are a **torn tail**: what a crash in the middle
//!   of an append leaves. They are left out of [`ParsedLog::valid_len`] (the
//!   journal cuts them off when it opens) and never replayed.
//! * A bad line followed by a framed line is **corruption**: an error of
//!   kind [`JournalErrorKind::Corrupt`] naming the file and the byte offset
//!   of the first bad line. Nothing is guessed around: every byte before that
//!   offset is intact, and `truncate -s <offset>` on the file is how an
//!   operator who accepts losing what follows recovers.
//! * Damage to the very last record cannot be told from a torn write (both
//!   are a bad final line): it is cut off with a warning. Under
//!   [`SyncPolicy::Full`](super::SyncPolicy::Full) that record may have been
//!   acknowledged; only storage that corrupts data at rest does this.
//!
//! # Format 1 (before issue 21)
//!
//! Bare JSON lines, no header, no checksum. They are still read (a bad line
//! followed by a good one is corruption, a bad tail is torn), and a lone
//! framed line or header among them is corruption. The journal migrates a
//! format-1 log when it opens: its records are folded into a new checkpoint
//! and a new, format-2 log starts (see [`FileJournalBuilder::open`]), so
//! formats never mix within one file.
//!
//! [`FileJournalBuilder::open`]: super::FileJournalBuilder::open

use std::path::Path;

use crate::error::{JournalError, JournalErrorKind};
use crate::record::Record;

/// The first line of a format-2 log.
pub(crate) const HEADER: &[u8] = b"keel-journal v2\n";
/// What every future format's header starts with.
const HEADER_PREFIX: &[u8] = b"keel-journal ";
/// `"xxxxxxxx "` before each payload.
const FRAME: usize = 9;

/// Where the CRC chain of a new log starts: the header line's CRC.
pub(crate) fn header_crc() -> u32 {
    crc32fast::hash(&HEADER[..HEADER.len() - 1])
}

/// Continues the chain `prev` over `payload`.
fn chain(prev: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(prev);
    hasher.update(payload);
    hasher.finalize()
}

/// Records encoded as framed lines whose CRCs are not filled in yet:
/// encoding (the expensive part) happens before the log lock is taken,
/// [`Encoded::seal`] under it, since the CRC depends on the line before.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    /// Start of each line's payload and its length.
    payloads: Vec<(usize, usize)>,
}

impl Encoded {
    /// Frames `records` as lines.
    pub(crate) fn new(records: &[Record]) -> Result<Encoded, JournalError> {
        let mut bytes = Vec::with_capacity(256 * records.len());
        let mut payloads = Vec::with_capacity(records.len());
        for record in records {
            bytes.extend_from_slice(b"00000000 ");
            let start = bytes.len();
            serde_json::to_writer(&mut bytes, record).map_err(|e| {
                JournalError::with_source(
                    JournalErrorKind::Encoding,
                    "could not encode journal record",
                    e,
                )
            })?;
            payloads.push((start, bytes.len() - start));
            bytes.push(b'\n');
        }
        Ok(Encoded { bytes, payloads })
    }

    /// Fills in the CRCs, continuing the chain from `*crc` (the last line
    /// written), and leaves `*crc` at this batch's last line.
    pub(crate) fn seal(&mut self, crc: &mut u32) {
        for &(start, len) in &self.payloads {
            *crc = chain(*crc, &self.bytes[start..start + len]);
            write_hex(&mut self.bytes[start - FRAME..start - 1], *crc);
        }
    }
}

fn write_hex(out: &mut [u8], value: u32) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = DIGITS[((value >> (28 - 4 * i)) & 0xf) as usize];
    }
}

fn parse_hex(digits: &[u8]) -> Option<u32> {
    if digits.len() != 8 {
        return None;
    }
    digits.iter().try_fold(0u32, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u32::from(v))
    })
}

/// A line's stored CRC and payload, if it has the frame's shape.
fn frame(line: &[u8]) -> Option<(u32, &[u8])> {
    if line.len() <= FRAME || line[FRAME - 1] != b' ' {
        return None;
    }
    Some((parse_hex(&line[..FRAME - 1])?, &line[FRAME..]))
}

/// Whether a line has the shape of a format-2 record (checked or not): a
/// bad line followed by one of these is corruption, not a torn tail.
fn looks_framed(line: &[u8]) -> bool {
    frame(line).is_some_and(|(_, payload)| payload.starts_with(b"{"))
}

/// Which format a log was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// No bytes, or only part of a header (a crash while creating the log).
    Empty,
    /// Format 1: bare JSON lines.
    Legacy,
    /// Format 2: header and CRC-chained lines.
    Framed,
}

/// What [`parse_log`] found.
#[derive(Debug)]
pub(crate) struct ParsedLog {
    pub(crate) format: Format,
    pub(crate) records: Vec<Record>,
    /// Bytes up to and including the last good line (and the header): the
    /// journal cuts the file to this length when it opens.
    pub(crate) valid_len: usize,
    /// The CRC chain after the last good line (format 2), to continue from.
    pub(crate) crc: u32,
}

/// The first bad line seen, kept until we know whether a good one follows.
struct Bad {
    offset: usize,
    line: usize,
    reason: String,
}

fn corrupt(path: &Path, bad: &Bad) -> JournalError {
    JournalError::new(
        JournalErrorKind::Corrupt,
        format!(
            "journal {} is damaged at byte {} (line {}): {}; the bytes before it are intact",
            path.display(),
            bad.offset,
            bad.line,
            bad.reason
        ),
    )
}

/// Reads a log's bytes (see the module docs for the rules). `path` only
/// names the file in errors.
pub(crate) fn parse_log(bytes: &[u8], path: &Path) -> Result<ParsedLog, JournalError> {
    if bytes.len() < HEADER.len() && HEADER.starts_with(bytes) {
        return Ok(ParsedLog {
            format: Format::Empty,
            records: Vec::new(),
            valid_len: 0,
            crc: header_crc(),
        });
    }
    if bytes.starts_with(HEADER) {
        return parse_framed(bytes, path);
    }
    if bytes.starts_with(HEADER_PREFIX) {
        let end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(bytes.len())
            .min(64);
        return Err(JournalError::new(
            JournalErrorKind::Corrupt,
            format!(
                "journal {} is damaged at byte 0 (line 1): unknown format header {:?} (damaged, or written by a newer version)",
                path.display(),
                String::from_utf8_lossy(&bytes[..end])
            ),
        ));
    }
    parse_legacy(bytes, path)
}

fn parse_framed(bytes: &[u8], path: &Path) -> Result<ParsedLog, JournalError> {
    let mut records = Vec::new();
    let mut crc = header_crc();
    let mut offset = HEADER.len();
    let mut valid_len = offset;
    let mut first_bad: Option<Bad> = None;
    let mut line_no = 1;
    while offset < bytes.len() {
        line_no += 1;
        let Some(newline) = bytes[offset..].iter().position(|&b| b == b'\n') else {
            // Unterminated: the write was torn.
            break;
        };
        let line = &bytes[offset..offset + newline];
        let next = offset + newline + 1;
        if let Some(bad) = &first_bad {
            if looks_framed(line) {
                return Err(corrupt(path, bad));
            }
            offset = next;
            continue;
        }
        match check_line(line, crc) {
            Ok((record, stored)) => {
                records.push(record);
                crc = stored;
                valid_len = next;
            }
            Err(reason) => {
                first_bad = Some(Bad {
                    offset,
                    line: line_no,
                    reason,
                });
            }
        }
        offset = next;
    }
    Ok(ParsedLog {
        format: Format::Framed,
        records,
        valid_len,
        crc,
    })
}

/// Checks one format-2 line against the chain `prev`; returns the record
/// and the line's CRC.
fn check_line(line: &[u8], prev: u32) -> Result<(Record, u32), String> {
    let Some((stored, payload)) = frame(line) else {
        return Err("not a checksummed record line".to_owned());
    };
    let computed = chain(prev, payload);
    if computed != stored {
        return Err(format!(
            "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
        ));
    }
    // The checksum matched, so these are the bytes that were written; a
    // record that does not decode was written by an incompatible version.
    serde_json::from_slice::<Record>(payload)
        .map(|record| (record, stored))
        .map_err(|e| format!("record does not decode: {e}"))
}

/// Format 1: bare JSON lines. A bad or unterminated final stretch is torn;
/// a bad line followed by a good one, or anything of format 2, is corrupt.
fn parse_legacy(bytes: &[u8], path: &Path) -> Result<ParsedLog, JournalError> {
    let mut records = Vec::new();
    let mut valid_len = 0;
    let mut offset = 0;
    let mut first_bad: Option<Bad> = None;
    let mut line_no = 0;
    while offset < bytes.len() {
        line_no += 1;
        let Some(newline) = bytes[offset..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &bytes[offset..offset + newline];
        let next = offset + newline + 1;
        if looks_framed(line) || line.starts_with(HEADER_PREFIX) {
            // Format 2 inside a format-1 file: never written that way.
            let bad = first_bad.unwrap_or(Bad {
                offset,
                line: line_no,
                reason: "a format-2 line inside a format-1 journal".to_owned(),
            });
            return Err(corrupt(path, &bad));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            if first_bad.is_none() {
                valid_len = next;
            }
            offset = next;
            continue;
        }
        match serde_json::from_slice::<Record>(line) {
            Ok(record) => {
                if let Some(bad) = &first_bad {
                    return Err(corrupt(path, bad));
                }
                records.push(record);
                valid_len = next;
            }
            Err(error) => {
                if first_bad.is_none() {
                    first_bad = Some(Bad {
                        offset,
                        line: line_no,
                        reason: error.to_string(),
                    });
                }
            }
        }
        offset = next;
    }
    Ok(ParsedLog {
        format: Format::Legacy,
        records,
        valid_len,
        crc: header_crc(),
    })
}

/// A checkpoint's bytes: its JSON, a newline, the JSON's CRC-32 in hex and a
/// newline. Format-1 checkpoints (bare JSON) have no CRC.
pub(crate) fn seal_checkpoint(mut json: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&json);
    json.push(b'\n');
    let at = json.len();
    json.extend_from_slice(b"00000000\n");
    write_hex(&mut json[at..at + 8], crc);
    json
}

/// The JSON of a checkpoint and whether it carried a CRC (format 2; a
/// format-1 checkpoint is bare JSON); an error says why the CRC does not
/// match.
pub(crate) fn open_checkpoint(bytes: &[u8]) -> Result<(&[u8], bool), String> {
    if bytes.len() >= 10 && bytes.ends_with(b"\n") && bytes[bytes.len() - 10] == b'\n' {
        let json = &bytes[..bytes.len() - 10];
        let Some(stored) = parse_hex(&bytes[bytes.len() - 9..bytes.len() - 1]) else {
            return Err("bad checksum line".to_owned());
        };
        let computed = crc32fast::hash(json);
        if stored != computed {
            return Err(format!(
                "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            ));
        }
        return Ok((json, true));
    }
    Ok((bytes, false))
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

    /// A format-2 log of `records`, written in one batch each.
    fn log(records: &[Record]) -> Vec<u8> {
        let mut bytes = HEADER.to_vec();
        let mut crc = header_crc();
        for r in records {
            let mut e = Encoded::new(std::slice::from_ref(r)).unwrap();
            e.seal(&mut crc);
            bytes.extend_from_slice(&e.bytes);
        }
        bytes
    }

    fn line_starts(bytes: &[u8]) -> Vec<usize> {
        let mut starts = vec![0];
        starts.extend(
            bytes
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        );
        starts.pop();
        starts
    }

    #[test]
    fn framed_lines_round_trip_and_chain_across_batches() {
        let records = [put("a", 1), put("b", 1), put("a", 2)];
        let bytes = log(&records);
        let parsed = parse_log(&bytes, Path::new("x")).unwrap();
        assert_eq!(parsed.format, Format::Framed);
        assert_eq!(parsed.records, records);
        assert_eq!(parsed.valid_len, bytes.len());
        // One batch of three gives the same bytes as three batches of one.
        let mut one = Encoded::new(&records).unwrap();
        let mut crc = header_crc();
        one.seal(&mut crc);
        assert_eq!(&bytes[HEADER.len()..], one.bytes.as_slice());
        assert_eq!(crc, parsed.crc);
    }

    #[test]
    fn every_truncation_keeps_exactly_the_whole_lines() {
        let records = [put("a", 1), put("b", 1), put("a", 2)];
        let bytes = log(&records);
        let ends: Vec<usize> = line_starts(&bytes)[1..]
            .iter()
            .copied()
            .chain([bytes.len()])
            .collect();
        for cut in 0..=bytes.len() {
            let parsed = parse_log(&bytes[..cut], Path::new("x")).unwrap();
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            if cut < HEADER.len() {
                assert_eq!(parsed.format, Format::Empty);
                continue;
            }
            assert_eq!(parsed.records, records[..whole - 1], "cut at {cut}");
            assert_eq!(parsed.valid_len, ends[whole - 1]);
        }
    }

    #[test]
    fn a_flipped_bit_before_the_last_line_is_reported_with_its_offset() {
        let records = [put("a", 1), put("b", 1), put("a", 2)];
        let bytes = log(&records);
        let starts = line_starts(&bytes);
        // Every bit of the header and the first two records.
        for at in 0..starts[3] - 1 {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                match parse_log(&damaged, Path::new("j")) {
                    Err(e) => {
                        assert_eq!(e.kind(), JournalErrorKind::Corrupt);
                        assert!(e.to_string().contains("at byte"), "{e}");
                    }
                    Ok(p) => panic!(
                        "flip at {at} bit {bit} read back {} records",
                        p.records.len()
                    ),
                }
            }
        }
        // In the last line: cut off as torn, never replayed.
        let mut damaged = bytes.clone();
        damaged[starts[3] + 20] ^= 4;
        let parsed = parse_log(&damaged, Path::new("j")).unwrap();
        assert_eq!(parsed.records, records[..2]);
    }

    #[test]
    fn moved_and_duplicated_lines_fail_the_chain() {
        let records = [put("a", 1), put("b", 1), put("a", 2), put("c", 1)];
        let bytes = log(&records);
        let s = line_starts(&bytes);
        let line = |i: usize| bytes[s[i]..s.get(i + 1).copied().unwrap_or(bytes.len())].to_vec();
        let dup = [line(0), line(1), line(1), line(2), line(3), line(4)].concat();
        assert!(parse_log(&dup, Path::new("j")).is_err());
        let swapped = [line(0), line(2), line(1), line(3), line(4)].concat();
        assert!(parse_log(&swapped, Path::new("j")).is_err());
        let dropped = [line(0), line(1), line(3), line(4)].concat();
        assert!(parse_log(&dropped, Path::new("j")).is_err());
    }

    #[test]
    fn format_1_logs_still_read_and_reject_format_2_lines() {
        let a = serde_json::to_string(&put("a", 1)).unwrap();
        let path = Path::new("x");
        let ok = format!("{a}\n{a}\n");
        let parsed = parse_log(ok.as_bytes(), path).unwrap();
        assert_eq!((parsed.format, parsed.records.len()), (Format::Legacy, 2));
        let torn = format!("{a}\n{}", &a[..10]);
        let parsed = parse_log(torn.as_bytes(), path).unwrap();
        assert_eq!((parsed.records.len(), parsed.valid_len), (1, a.len() + 1));
        let torn_with_newline = format!("{a}\n\0\0\0\n");
        assert_eq!(
            parse_log(torn_with_newline.as_bytes(), path)
                .unwrap()
                .valid_len,
            a.len() + 1
        );
        let corrupt = format!("{a}\n{{bad\n{a}\n");
        assert!(parse_log(corrupt.as_bytes(), path).is_err());
        // A valid format-1 line in front of a format-2 log.
        let mut mixed = format!("{a}\n").into_bytes();
        mixed.extend_from_slice(&log(&[put("b", 1)]));
        assert!(parse_log(&mixed, path).is_err());
        let newer = b"keel-journal v3\n{}\n";
        assert!(parse_log(newer, path).is_err());
    }

    #[test]
    fn checkpoints_carry_a_checksum() {
        let sealed = seal_checkpoint(br#"{"format":2}"#.to_vec());
        assert_eq!(
            open_checkpoint(&sealed).unwrap(),
            (&br#"{"format":2}"#[..], true)
        );
        let mut damaged = sealed.clone();
        damaged[3] ^= 1;
        assert!(open_checkpoint(&damaged).is_err());
        assert_eq!(
            open_checkpoint(br#"{"format":1}"#).unwrap(),
            (&br#"{"format":1}"#[..], false)
        );
    }
}

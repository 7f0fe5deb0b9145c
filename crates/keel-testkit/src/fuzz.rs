//! Fuzz targets as ordinary tests: [`replay`] runs a target's property over
//! its committed corpus (`fuzz/corpus/<target>/`), every committed crash
//! reproducer (`fuzz/regressions/<target>/`), then a short, seeded budget of
//! mutations of those inputs, so CI checks the same properties that
//! `cargo fuzz run <target>` checks for hours (docs/RELIABILITY.md).
//!
//! The mutator is deliberately simple (libFuzzer's own mutations need its
//! coverage feedback to be worth anything, and CI has only the stable
//! toolchain): bit flips, byte and chunk insertions and deletions,
//! truncation, splicing two inputs and the "interesting" bytes that break
//! text formats (quotes, backslashes, newlines, NUL, `{`, `%`, huge and
//! negative numbers). It is seeded with [`keel_core::Rng`], so a failure
//! repeats; the failing input is written to
//! `target/fuzz-failures/<target>-<hash>` and named in the panic, ready to
//! be committed under `fuzz/regressions/<target>/`.
//!
//! `KEEL_FUZZ_MUTATIONS` overrides the budget, `KEEL_FUZZ_SEED` the seed.

use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use keel_core::Rng;

/// Interesting fragments a mutation may insert.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"\n",
    b"\r\n",
    b"\0",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"%",
    b"%00",
    b"%22",
    b"&",
    b"=",
    b"'",
    b"\xff",
    b"\xc3\x28",
    b"\xf0\x9f\x94\xa5",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e309",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"9999-12-31T23:59:59Z",
    b"0000-00-00T00:00:00Z",
    b"\"\"",
    b"{}",
    b"[]",
    b"---\n",
    b"&a ",
    b"*a",
    b"!!binary ",
];

/// The workspace root: the nearest directory above `CARGO_MANIFEST_DIR`
/// (set by cargo and nextest for every test) that holds `fuzz/`.
#[must_use]
pub fn workspace_root() -> PathBuf {
    let start =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    start
        .ancestors()
        .find(|d| d.join("fuzz").is_dir() && d.join("Cargo.toml").is_file())
        .map_or(start.clone(), Path::to_path_buf)
}

/// The committed inputs of `target`: its corpus, then its regressions,
/// each sorted by name.
///
/// # Panics
///
/// If neither directory exists: a target with no input would test nothing.
#[must_use]
pub fn committed_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = workspace_root().join("fuzz");
    let mut dirs_found = 0;
    let mut inputs = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        dirs_found += 1;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for path in files {
            let bytes =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            inputs.push((path, bytes));
        }
    }
    assert!(
        dirs_found > 0 && !inputs.is_empty(),
        "fuzz target {target:?} has no committed input under {}/{{corpus,regressions}}/{target}",
        root.display()
    );
    inputs
}

/// Runs `property` on every committed input of `target`, then on
/// `mutations` seeded mutations of them (`KEEL_FUZZ_MUTATIONS` and
/// `KEEL_FUZZ_SEED` override). Returns how many inputs ran.
///
/// # Panics
///
/// When the property panics on an input: the input is saved under
/// `target/fuzz-failures/` and the panic names the file.
pub fn replay(target: &str, mutations: usize, property: impl Fn(&[u8])) -> usize {
    let inputs = committed_inputs(target);
    let mutations = std::env::var("KEEL_FUZZ_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(mutations);
    let seed = std::env::var("KEEL_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6b65_656c_667a_7a31);
    for (path, bytes) in &inputs {
        check(target, &format!("{}", path.display()), bytes, &property);
    }
    let rng = Rng::with_seed(seed);
    for i in 0..mutations {
        let base = &inputs[pick(&rng, inputs.len())].1;
        let other = &inputs[pick(&rng, inputs.len())].1;
        let input = mutate(&rng, base, other);
        check(
            target,
            &format!("mutation {i} (seed {seed})"),
            &input,
            &property,
        );
    }
    inputs.len() + mutations
}

fn check(target: &str, what: &str, input: &[u8], property: &impl Fn(&[u8])) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| property(input))) {
        let saved = save_failure(target, input);
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        panic!(
            "fuzz target {target:?} failed on {what}: {message}\ninput ({} bytes) saved to {saved}: {}",
            input.len(),
            escape(&input[..input.len().min(300)])
        );
    }
}

fn save_failure(target: &str, input: &[u8]) -> String {
    let dir = workspace_root().join("target").join("fuzz-failures");
    // FNV-1a names the file after its content, as libFuzzer's crash-<sha1>.
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    let path = dir.join(format!("{target}-{hash:016x}"));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input)) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(not saved: {e})"),
    }
}

/// Printable bytes as they are, the rest as `\xNN`.
#[must_use]
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_graphic() || b == b' ' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn pick(rng: &Rng, n: usize) -> usize {
    // `n` is a small count of inputs or bytes: the casts cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    let i = rng.u64_between(0, n.saturating_sub(1) as u64) as usize;
    i.min(n.saturating_sub(1))
}

/// One to four stacked mutations of `base` (`other` for splices).
#[must_use]
pub fn mutate(rng: &Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    let rounds = 1 + pick(rng, 4);
    for _ in 0..rounds {
        let len = out.len();
        match pick(rng, 9) {
            // Flip one bit.
            0 if len > 0 => {
                let i = pick(rng, len);
                out[i] ^= 1 << pick(rng, 8);
            }
            // Replace one byte with any byte.
            1 if len > 0 => {
                let i = pick(rng, len);
                #[allow(clippy::cast_possible_truncation)]
                let b = rng.next_u64() as u8;
                out[i] = b;
            }
            // Insert an interesting token.
            2 => {
                let at = pick(rng, len + 1);
                let token = TOKENS[pick(rng, TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            // Delete a chunk.
            3 if len > 0 => {
                let at = pick(rng, len);
                let n = 1 + pick(rng, (len - at).min(32));
                out.drain(at..at + n);
            }
            // Truncate.
            4 if len > 0 => out.truncate(pick(rng, len)),
            // Duplicate a chunk in place.
            5 if len > 0 => {
                let at = pick(rng, len);
                let n = 1 + pick(rng, (len - at).min(64));
                let chunk = out[at..at + n].to_vec();
                out.splice(at..at, chunk);
            }
            // Splice: our head, the other input's tail.
            6 if !other.is_empty() => {
                let head = pick(rng, len + 1);
                let tail = pick(rng, other.len());
                out.truncate(head);
                out.extend_from_slice(&other[tail..]);
            }
            // Copy a chunk of the input elsewhere.
            7 if len > 1 => {
                let from = pick(rng, len);
                let n = 1 + pick(rng, (len - from).min(16));
                let chunk = out[from..from + n].to_vec();
                let at = pick(rng, len + 1);
                out.splice(at..at, chunk);
            }
            // Change an ASCII digit (numbers, dates, lengths).
            _ => {
                let digits: Vec<usize> = (0..len).filter(|&i| out[i].is_ascii_digit()).collect();
                if !digits.is_empty() {
                    let i = digits[pick(rng, digits.len())];
                    #[allow(clippy::cast_possible_truncation)]
                    let d = b'0' + pick(rng, 10) as u8;
                    out[i] = d;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_seeded_and_change_the_input() {
        let base = br#"{"status":"firing","alerts":[]}"#;
        let a = Rng::with_seed(7);
        let b = Rng::with_seed(7);
        let mut changed = 0;
        for _ in 0..200 {
            let x = mutate(&a, base, b"other");
            let y = mutate(&b, base, b"other");
            assert_eq!(x, y, "same seed, same mutation");
            changed += usize::from(x != base);
        }
        assert!(
            changed > 150,
            "only {changed} of 200 mutations changed the input"
        );
    }

    #[test]
    fn escape_shows_control_bytes() {
        assert_eq!(escape(b"a\"\n\0\xff"), "a\"\\x0a\\x00\\xff");
    }
}

//! The `journal` and `journal_roundtrip` fuzz targets as tests: their
//! committed corpora and reproducers, then a seeded mutation budget
//! (docs/RELIABILITY.md).
#![cfg(feature = "fuzzing")]

#[test]
fn journal() {
    keel_testkit::fuzz::replay("journal", 20_000, keel_tx::fuzzing::journal);
}

#[test]
fn journal_roundtrip() {
    // Real files: a smaller budget.
    keel_testkit::fuzz::replay(
        "journal_roundtrip",
        500,
        keel_tx::fuzzing::journal_roundtrip,
    );
}

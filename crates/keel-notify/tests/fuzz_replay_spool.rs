//! The `spool` fuzz target as a test: its committed corpus and reproducers,
//! then a seeded mutation budget (docs/RELIABILITY.md).
#![cfg(feature = "fuzzing")]

#[test]
fn spool() {
    keel_testkit::fuzz::replay("spool", 20_000, keel_notify::fuzzing::spool);
}

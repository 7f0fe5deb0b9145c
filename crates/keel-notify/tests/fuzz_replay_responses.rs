//! The `notify_responses` fuzz target as a test: its committed corpus and
//! reproducers, then a seeded mutation budget (docs/RELIABILITY.md).
#![cfg(feature = "fuzzing")]

#[test]
fn notify_responses() {
    keel_testkit::fuzz::replay(
        "notify_responses",
        20_000,
        keel_notify::fuzzing::notify_responses,
    );
}

//! The `goman_manifest` fuzz target as a test: its committed corpus and
//! reproducers, then a seeded mutation budget (docs/RELIABILITY.md).
#![cfg(feature = "fuzzing")]

#[test]
fn goman_manifest() {
    keel_testkit::fuzz::replay(
        "goman_manifest",
        10_000,
        goman_controller::fuzzing::goman_manifest,
    );
}

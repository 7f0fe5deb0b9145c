//! The `idempotency_headers` fuzz target as a test: its committed corpus
//! and reproducers, then a seeded mutation budget (docs/RELIABILITY.md).
#![cfg(feature = "fuzzing")]

#[test]
fn idempotency_headers() {
    keel_testkit::fuzz::replay(
        "idempotency_headers",
        3_000,
        keel_idempotency::fuzzing::idempotency_headers,
    );
}

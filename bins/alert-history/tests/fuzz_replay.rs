//! The fuzz targets of `fuzz/` as ordinary tests: each property runs over
//! its committed corpus and crash reproducers, then a seeded budget of
//! mutations (`keel_testkit::fuzz::replay`; `KEEL_FUZZ_MUTATIONS` and
//! `KEEL_FUZZ_SEED` override). The budgets keep each test to a few seconds
//! in a debug build.

use alert_history::fuzzing;
use keel_testkit::fuzz::replay;

#[test]
fn webhook() {
    replay("webhook", 5_000, fuzzing::webhook);
}

#[test]
fn webhook_store() {
    // Each input is a delivery through the store: far slower than a parse.
    replay("webhook_store", 300, fuzzing::webhook_store);
}

#[test]
fn history_query() {
    replay("history_query", 20_000, fuzzing::history_query);
}

#[test]
fn report_query() {
    replay("report_query", 20_000, fuzzing::report_query);
}

#[test]
fn cursor() {
    replay("cursor", 20_000, fuzzing::cursor);
}

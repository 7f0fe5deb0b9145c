//! The `vms_yaml` fuzz target as a test: its committed corpus and
//! reproducers, then a seeded mutation budget (docs/RELIABILITY.md).
#![cfg(feature = "fuzzing")]

#[test]
fn vms_yaml() {
    keel_testkit::fuzz::replay("vms_yaml", 5_000, vm_watchdog::fuzzing::vms_yaml);
}

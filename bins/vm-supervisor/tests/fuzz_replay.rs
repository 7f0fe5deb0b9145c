//! The `supervisor_yaml` and `supervisor_admin` fuzz targets as tests:
//! their committed corpus and reproducers, then a seeded mutation budget
//! (docs/RELIABILITY.md).
#![cfg(feature = "fuzzing")]

#[test]
fn supervisor_yaml() {
    keel_testkit::fuzz::replay(
        "supervisor_yaml",
        5_000,
        vm_supervisor::fuzzing::supervisor_yaml,
    );
}

#[test]
fn supervisor_admin() {
    keel_testkit::fuzz::replay(
        "supervisor_admin",
        10_000,
        vm_supervisor::fuzzing::supervisor_admin,
    );
}

//! The `prom_response` and `k8s_objects` fuzz targets as tests: their
//! committed corpus and reproducers, then a seeded mutation budget
//! (docs/RELIABILITY.md).
#![cfg(feature = "fuzzing")]

#[test]
fn prom_response() {
    keel_testkit::fuzz::replay(
        "prom_response",
        20_000,
        pod_rebalancer::fuzzing::prom_response,
    );
}

#[test]
fn k8s_objects() {
    keel_testkit::fuzz::replay("k8s_objects", 5_000, pod_rebalancer::fuzzing::k8s_objects);
}

#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_idempotency::fuzzing::idempotency_headers(data));

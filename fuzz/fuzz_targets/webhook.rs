#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alert_history::fuzzing::webhook(data));

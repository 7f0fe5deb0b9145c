#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_notify::fuzzing::notify_responses(data));

#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| goman_controller::fuzzing::goman_manifest(data));

//! keel-tx's file journal through real files: append, damage the log,
//! reopen, append again (`keel_tx::fuzzing::journal_roundtrip`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_tx::fuzzing::journal_roundtrip(data));

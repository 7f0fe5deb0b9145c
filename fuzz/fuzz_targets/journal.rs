//! keel-tx's journal reader, from bytes: records written by the real
//! encoder, then torn or corrupted, must read back as a prefix of what was
//! written or be refused (`keel_tx::fuzzing::journal`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_tx::fuzzing::journal(data));

//! keel-notify's spool reader, from bytes: snapshots written by the real
//! writer, then torn or corrupted, must never deliver a record that was not
//! written (`keel_notify::fuzzing::spool`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_notify::fuzzing::spool(data));

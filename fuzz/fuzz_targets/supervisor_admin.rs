#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vm_supervisor::fuzzing::supervisor_admin(data));

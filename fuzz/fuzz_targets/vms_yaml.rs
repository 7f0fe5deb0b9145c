#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vm_watchdog::fuzzing::vms_yaml(data));

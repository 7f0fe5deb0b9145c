//! vm-watchdog binary.

fn main() {}

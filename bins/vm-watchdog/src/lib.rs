//! vm-watchdog: being written.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::probe::{FailureKind, Probe, ProbeFailure, ProbeResult};

/// Healthy while a process with the given pid runs. The process is never
/// signalled.
///
/// On Linux the probe reads `/proc/<pid>/stat` (one small read from procfs,
/// made inline since procfs never blocks on a disk):
///
/// * no such file: `not_running` ("no such process");
/// * state `Z` (zombie: exited, not yet reaped by its parent) or `X`
///   (dead): `not_running`. A supervisor that has not yet waited for its
///   child sees the child as dead, which is what it wants to know;
/// * a different start time than at the first successful check:
///   `not_running` ("pid reused"). The first success pins the process's
///   start time, so a pid recycled for another process is not mistaken for
///   the original.
///
/// Elsewhere it falls back to `kill(pid, 0)`, which sends no signal but
/// cannot see zombies or pid reuse. Reading `/proc` is preferred because
/// `kill(pid, 0)` also needs permission to signal the process (`EPERM` for
/// another user's process) and reports a zombie as alive.
#[derive(Debug)]
pub struct ProcessProbe {
    pid: u32,
    /// Start time (clock ticks after boot) seen at the first success;
    /// `UNPINNED` until then.
    start_time: AtomicU64,
    name: String,
}

impl ProcessProbe {
    /// Probes process `pid` (for a child: `child.id()`).
    pub fn new(pid: u32) -> Self {
        ProcessProbe {
            pid,
            start_time: AtomicU64::new(UNPINNED),
            name: format!("process {pid}"),
        }
    }

    /// The probed pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Probe for ProcessProbe {
    async fn check(&self) -> ProbeResult {
        self.check_now()
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(target_os = "linux")]
impl ProcessProbe {
    fn check_now(&self) -> ProbeResult {
        let path = format!("/proc/{}/stat", self.pid);
        let stat = match std::fs::read_to_string(&path) {
            Ok(stat) => stat,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not_running(self.pid, "no such process"));
            }
            // ESRCH: the process vanished between open and read.
            Err(e) if e.raw_os_error() == Some(3) => {
                return Err(not_running(self.pid, "no such process"));
            }
            Err(e) => return Err(ProbeFailure::io(&path, &e)),
        };
        let Some((state, start_time)) = parse_stat(&stat) else {
            return Err(ProbeFailure::new(
                FailureKind::Io,
                format!("{path}: unexpected format"),
            ));
        };
        match state {
            'Z' => return Err(not_running(self.pid, "zombie (exited, not reaped)")),
            'X' | 'x' => return Err(not_running(self.pid, "dead")),
            _ => {}
        }
        match self.start_time.compare_exchange(
            UNPINNED,
            start_time,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => Ok(()),
            Err(pinned) if pinned == start_time => Ok(()),
            Err(_) => Err(not_running(
                self.pid,
                "pid reused by another process (start time changed)",
            )),
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl ProcessProbe {
    fn check_now(&self) -> ProbeResult {
        use nix::errno::Errno;
        use nix::sys::signal::kill;
        use nix::unistd::Pid;
        let _ = &self.start_time;
        let pid = i32::try_from(self.pid)
            .map_err(|_| ProbeFailure::new(FailureKind::NotRunning, "pid out of range"))?;
        match kill(Pid::from_raw(pid), None) {
            // EPERM: it exists, we just may not signal it.
            Ok(()) | Err(Errno::EPERM) => Ok(()),
            Err(Errno::ESRCH) => Err(not_running(self.pid, "no such process")),
            Err(e) => Err(ProbeFailure::new(
                FailureKind::Io,
                format!("kill({pid}, 0): {e}"),
            )),
        }
    }
}

const UNPINNED: u64 = u64::MAX;

fn not_running(pid: u32, why: &str) -> ProbeFailure {
    ProbeFailure::new(FailureKind::NotRunning, format!("process {pid}: {why}"))
}

/// Parses the state letter (field 3) and start time (field 22) from
/// `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may
/// itself contain spaces and `)`, so fields are counted after the last `)`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 4..=21 come between the state and the start time.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some((state, start_time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_state_and_start_time_even_with_odd_command_names() {
        let line = "1234 (we(i)rd ) name) S 1 1234 1234 0 -1 4194304 100 0 0 0 \
                    1 2 0 0 20 0 1 0 987654 1000000 200 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987_654)));
        let zombie = "77 (sleep) Z 1 77 77 0 -1 4227084 0 0 0 0 0 0 0 0 20 0 1 0 5555 0 0";
        assert_eq!(parse_stat(zombie), Some(('Z', 5555)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn own_process_is_alive_and_pins_its_start_time() {
        let probe = ProcessProbe::new(std::process::id());
        probe.check_now().unwrap();
        let pinned = probe.start_time.load(Ordering::Relaxed);
        assert_ne!(pinned, UNPINNED);
        probe.check_now().unwrap();
        // Pretend the pid belonged to an older process.
        probe
            .start_time
            .store(pinned.wrapping_add(1), Ordering::Relaxed);
        let failure = probe.check_now().unwrap_err();
        assert_eq!(failure.kind(), FailureKind::NotRunning);
        assert!(failure.message().contains("pid reused"), "{failure}");
    }
}

//! VM processes: started in a process group of their own (so neither a
//! terminal's signals nor the supervisor's death reach them), identified
//! by pid *and* start time (field 22 of `/proc/<pid>/stat`), held by a
//! pidfd where the kernel offers one (Linux ≥ 5.3), so a recycled pid is
//! never mistaken for the VM and never signalled; stopped as a group, TERM
//! then KILL; watched for exit at once (a child by its wait, an adopted
//! process by its pidfd's readiness).
//!
//! # Who gets a signal
//!
//! With a pidfd (opened at spawn or adoption, then checked against the
//! recorded start time, so it names the recorded process and no other):
//!
//! 1. `poll` on the pidfd: readable means the leader has exited; then
//!    **nothing** is signalled (its group cannot be verified any more).
//! 2. The leader still leads its group (`getpgid(pid) == pid`): `killpg`
//!    signals the group (helpers, jailer children included).
//! 3. The leader is signalled through its pidfd (`pidfd_send_signal`),
//!    which cannot reach another process whatever happened to the pid.
//!
//! The group has no pidfd: between 1 and 2 the pid number is used. For it to
//! name another group there, the leader must exit and be reaped, every
//! other member of its group must end (a live member keeps the number
//! taken) and the kernel's pid counter must wrap around `pid_max` (up to
//! 4 M) to hand the number out again, all within those microseconds.
//! (`PIDFD_SIGNAL_PROCESS_GROUP`, Linux 6.9, would close even that, but
//! rustix does not offer the flag and the workspace forbids `unsafe`.)
//!
//! Without a pidfd (older kernels, or a seccomp filter refusing it) the
//! start time is read from `/proc` right before each signal instead, and an
//! adopted process is looked up in `/proc` every [`ADOPTED_POLL`].
//!
//! rustix provides `pidfd_open`/`pidfd_send_signal` (nix 0.30 has neither),
//! safe wrappers over the syscalls this crate may not call itself (`unsafe`
//! is forbidden); it was already in the lock file through tempfile.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgid};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::spec::VmSpec;

/// How often an adopted process is looked up in `/proc` when no pidfd could
/// be opened for it (with a pidfd its exit is seen at once).
pub const ADOPTED_POLL: Duration = Duration::from_millis(50);

/// A process as the registry knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The pid.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot.
    pub start_time: u64,
}

/// What `/proc` says about an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Running, same start time.
    Alive,
    /// No such process (or a zombie).
    Dead,
    /// The pid is another process now.
    Mismatch,
}

/// `(state, start_time)` from `/proc/<pid>/stat`. The command name (field
/// 2) is in parentheses and may hold spaces and parentheses: fields are
/// counted after its last `)`.
pub fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the name, field 3 is the state; field 22 is 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// The command line of `pid` (`/proc/<pid>/cmdline`), argument by
/// argument; `None` when the process is gone or has none (a kernel thread,
/// a zombie).
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(&bytes);
    if bytes.is_empty() {
        return None;
    }
    Some(
        bytes
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Every process id in `/proc`.
pub fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

impl Identity {
    /// The identity of a running pid.
    pub fn of(pid: u32) -> Option<Identity> {
        stat(pid).map(|(_, start_time)| Identity { pid, start_time })
    }

    /// Whether this exact process still runs.
    pub fn liveness(&self) -> Liveness {
        match stat(self.pid) {
            None => Liveness::Dead,
            Some((s, _)) if s == 'Z' || s == 'X' => Liveness::Dead,
            Some((_, t)) if t != self.start_time => Liveness::Mismatch,
            Some(_) => Liveness::Alive,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Gone, not our child: the status is unknown (an adopted process).
    Unknown,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
            ExitStatus::Unknown => f.write_str("unknown (adopted process)"),
        }
    }
}

/// A running VM process: its identity, a receiver that gets its exit
/// status as soon as it ends, and its pidfd when the kernel gave one.
#[derive(Debug, Clone)]
pub struct Running {
    /// Who.
    pub identity: Identity,
    /// `None` while it runs.
    pub exited: watch::Receiver<Option<ExitStatus>>,
    /// A handle on this very process (never on a later owner of its pid).
    pidfd: Option<Arc<OwnedFd>>,
}

/// Opens a pidfd on `identity` and checks, *after* opening it, that the pid
/// still has the recorded start time: the pidfd then names the recorded
/// process. `Err(true)`: the process is gone (or the pid is another
/// process now); `Err(false)`: no pidfd on this kernel, use `/proc`.
fn open_pidfd(identity: Identity) -> Result<OwnedFd, bool> {
    let Some(pid) = rustix::process::Pid::from_raw(identity.pid as i32) else {
        return Err(true);
    };
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) if identity.liveness() == Liveness::Alive => Ok(fd),
        Ok(_) => Err(true),
        Err(rustix::io::Errno::SRCH) => Err(true),
        Err(e) => {
            tracing::debug!(pid = identity.pid, error = %e, "no pidfd: /proc fallback");
            Err(false)
        }
    }
}

/// Whether the process behind `pidfd` has exited (a zombie counts): a
/// pidfd polls readable from then on.
fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(n) => n > 0,
        // Cannot tell: count it as exited, so nothing is signalled.
        Err(_) => true,
    }
}

impl Running {
    /// Waits until the process ends.
    pub async fn wait(&mut self) -> ExitStatus {
        loop {
            if let Some(status) = *self.exited.borrow_and_update() {
                return status;
            }
            if self.exited.changed().await.is_err() {
                return self.exited.borrow().unwrap_or(ExitStatus::Unknown);
            }
        }
    }

    /// Whether it has ended.
    pub fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// Whether this exact process still runs: one `poll` on its pidfd (a
    /// pidfd cannot come to name another process, so only an exit
    /// matters), or the start time in `/proc` without one.
    pub fn liveness(&self) -> Liveness {
        match &self.pidfd {
            Some(fd) if pidfd_exited(fd) => Liveness::Dead,
            Some(_) => Liveness::Alive,
            None => self.identity.liveness(),
        }
    }
}

/// Starts `spec`'s command in a new process group (its pgid is its pid),
/// stdin/stdout/stderr on `/dev/null`, after removing a stale socket file.
/// A task waits for the child and reports its exit at once.
///
/// # Errors
/// The spawn error (command missing, not executable, bad workdir).
pub fn spawn(spec: &VmSpec) -> std::io::Result<Running> {
    remove_socket(&spec.socket_path())?;
    let mut command = tokio::process::Command::new(&spec.command);
    command
        .args(spec.expanded_args())
        .envs(spec.expanded_env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(dir) = spec.expanded_workdir() {
        command.current_dir(dir);
    }
    let mut child = command.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("the child exited before its pid was read"))?;
    // The child cannot have been reaped yet (only the task below waits), so
    // its /proc entry exists, zombie or not, and the pidfd names it.
    let start_time = stat(pid).map(|(_, t)| t).unwrap_or(0);
    let identity = Identity { pid, start_time };
    let pidfd = open_pidfd(identity).ok().map(Arc::new);
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                match (s.code(), s.signal()) {
                    (Some(c), _) => ExitStatus::Code(c),
                    (None, Some(sig)) => ExitStatus::Signal(sig),
                    (None, None) => ExitStatus::Unknown,
                }
            }
            Err(_) => ExitStatus::Unknown,
        };
        let _ = tx.send(Some(status));
    });
    Ok(Running {
        identity,
        exited: rx,
        pidfd,
    })
}

/// Watches a process that is not our child (adopted after a restart). With
/// a pidfd its exit is seen at once (the pidfd turns readable); without,
/// `/proc` is polled every `poll` until the process is gone or its pid
/// belongs to another process. The task ends when every receiver is
/// dropped.
pub fn adopt(identity: Identity, poll: Duration) -> Running {
    let (tx, rx) = watch::channel(None);
    let pidfd = match open_pidfd(identity) {
        Ok(fd) => Some(Arc::new(fd)),
        Err(true) => {
            let _ = tx.send(Some(ExitStatus::Unknown));
            return Running {
                identity,
                exited: rx,
                pidfd: None,
            };
        }
        Err(false) => None,
    };
    // `AsyncFd::register` (its successor) is `unsafe`, which this crate
    // forbids; `new` is deprecated for fds that may close while registered
    // (tokio #8587), and this one cannot: the `AsyncFd` owns an `Arc` of it.
    #[allow(deprecated)]
    let ready = pidfd.clone().map(AsyncFd::new);
    match ready {
        Some(Ok(ready)) => {
            tokio::spawn(async move {
                tokio::select! {
                    r = ready.readable() => {
                        drop(r);
                        let _ = tx.send(Some(ExitStatus::Unknown));
                    }
                    () = tx.closed() => {}
                }
            });
        }
        other => {
            if let Some(Err(e)) = other {
                tracing::debug!(pid = identity.pid, error = %e, "pidfd not pollable: /proc fallback");
            }
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(poll);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = tx.closed() => return,
                    }
                    if identity.liveness() != Liveness::Alive {
                        let _ = tx.send(Some(ExitStatus::Unknown));
                        return;
                    }
                }
            });
        }
    }
    Running {
        identity,
        exited: rx,
        pidfd,
    }
}

/// Removes `path` if it is a socket (or a dangling leftover of one); a
/// missing file is fine.
///
/// # Errors
/// When something else than a socket is in the way, or removal fails.
pub fn remove_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::other(format!(
            "{} exists and is not a socket",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Signals `running`'s process group by the rule in the module doc.
fn signal(running: &Running, sig: Signal) {
    let identity = running.identity;
    let pid = Pid::from_raw(identity.pid as i32);
    let Some(pidfd) = &running.pidfd else {
        // No pidfd: the start time is re-checked before every signal, so a
        // pid reused by another process is never signalled.
        if identity.liveness() != Liveness::Alive {
            return;
        }
        let result = if getpgid(Some(pid)) == Ok(pid) {
            killpg(pid, sig)
        } else {
            kill(pid, sig)
        };
        if let Err(e) = result {
            tracing::debug!(pid = identity.pid, error = %e, "signal not delivered");
        }
        return;
    };
    if pidfd_exited(pidfd) {
        return;
    }
    if getpgid(Some(pid)) == Ok(pid)
        && let Err(e) = killpg(pid, sig)
    {
        tracing::debug!(pid = identity.pid, error = %e, "group signal not delivered");
    }
    // `stop` sends TERM, then KILL: nothing else goes through here.
    let rsig = match sig {
        Signal::SIGKILL => rustix::process::Signal::KILL,
        _ => rustix::process::Signal::TERM,
    };
    if let Err(e) = rustix::process::pidfd_send_signal(pidfd.as_fd(), rsig) {
        tracing::debug!(pid = identity.pid, error = %e, "signal not delivered");
    }
}

/// Stops `running`: SIGTERM to its group, SIGKILL after `grace`; returns
/// once it is gone (or `grace` twice over has passed).
pub async fn stop(running: &mut Running, grace: Duration) {
    if running.has_exited() {
        return;
    }
    signal(running, Signal::SIGTERM);
    if tokio::time::timeout(grace, running.wait()).await.is_ok() {
        return;
    }
    tracing::warn!(
        pid = running.identity.pid,
        "did not stop after SIGTERM: SIGKILL"
    );
    signal(running, Signal::SIGKILL);
    let _ = tokio::time::timeout(grace.max(Duration::from_secs(1)), running.wait()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_of_self_and_of_nothing() {
        let me = std::process::id();
        let (state, start) = stat(me).unwrap();
        assert!(state == 'R' || state == 'S');
        assert!(start > 0);
        assert_eq!(Identity::of(me).unwrap().liveness(), Liveness::Alive);
        let other = Identity {
            pid: me,
            start_time: start + 1,
        };
        assert_eq!(other.liveness(), Liveness::Mismatch);
        // pid_max is at most 2^22.
        assert_eq!(stat(9_999_999), None);
    }

    #[test]
    fn remove_socket_refuses_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(remove_socket(&file).is_err());
        assert!(remove_socket(&dir.path().join("missing")).is_ok());
        let sock = dir.path().join("s");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        remove_socket(&sock).unwrap();
        assert!(!sock.exists());
    }

    #[tokio::test]
    async fn a_child_exit_is_seen_and_the_group_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let spec: VmSpec = serde_yaml::from_str(&format!(
            "{{id: t, command: /bin/sh, args: ['-c', 'exit 7'], socket: {}/s}}",
            dir.path().display()
        ))
        .unwrap();
        let mut r = spawn(&spec).unwrap();
        assert_eq!(r.wait().await, ExitStatus::Code(7));

        let spec: VmSpec = serde_yaml::from_str(&format!(
            "{{id: t, command: /bin/sh, args: ['-c', 'trap \"\" TERM; sleep 30 & touch {0}/ready; wait'], socket: {0}/s}}",
            dir.path().display()
        ))
        .unwrap();
        let mut r = spawn(&spec).unwrap();
        // A real event, bounded: the shell has set its trap.
        for _ in 0..500 {
            if dir.path().join("ready").exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(r.identity.liveness(), Liveness::Alive);
        let pgid = getpgid(Some(Pid::from_raw(r.identity.pid as i32))).unwrap();
        assert_eq!(
            pgid.as_raw() as u32,
            r.identity.pid,
            "its own process group"
        );
        stop(&mut r, Duration::from_millis(200)).await;
        assert_eq!(
            r.wait().await,
            ExitStatus::Signal(9),
            "TERM ignored, then KILL"
        );
    }

    fn sleeper() -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap()
    }

    #[tokio::test]
    async fn an_adopted_exit_is_seen_at_once_through_the_pidfd() {
        let mut child = sleeper();
        let identity = Identity::of(child.id()).unwrap();
        assert!(
            open_pidfd(identity).is_ok(),
            "this kernel offers pidfd_open"
        );
        // The /proc fallback would take an hour to notice.
        let mut r = adopt(identity, Duration::from_secs(3600));
        assert!(r.pidfd.is_some());
        assert!(!r.has_exited());
        assert_eq!(r.liveness(), Liveness::Alive);
        child.kill().unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(2), r.wait()).await;
        assert_eq!(seen.ok(), Some(ExitStatus::Unknown));
        child.wait().unwrap();
        // Reaped: its pidfd stays readable, so nothing is ever signalled
        // through the pid again.
        assert!(pidfd_exited(r.pidfd.as_ref().unwrap()));
        assert_eq!(r.liveness(), Liveness::Dead);
    }

    #[tokio::test]
    async fn a_pid_with_another_start_time_is_never_signalled() {
        let mut child = sleeper();
        let real = Identity::of(child.id()).unwrap();
        let recorded = Identity {
            pid: real.pid,
            start_time: real.start_time - 1,
        };
        // Adoption refuses it (no pidfd on the wrong process)...
        let mut r = adopt(recorded, Duration::from_secs(3600));
        assert!(r.has_exited() && r.pidfd.is_none());
        stop(&mut r, Duration::from_millis(100)).await;
        // ...and the fallback path re-checks the start time before a signal.
        let (_, rx) = watch::channel(None);
        let mut r = Running {
            identity: recorded,
            exited: rx,
            pidfd: None,
        };
        stop(&mut r, Duration::from_millis(100)).await;
        assert!(child.try_wait().unwrap().is_none(), "not signalled");
        assert_eq!(real.liveness(), Liveness::Alive);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn an_adopted_group_is_stopped_through_its_pidfd() {
        let mut child = sleeper();
        let mut r = adopt(Identity::of(child.id()).unwrap(), Duration::from_secs(3600));
        stop(&mut r, Duration::from_secs(2)).await;
        assert!(r.has_exited(), "TERM through the pidfd and the group");
        assert!(child.wait().unwrap().code().is_none());
    }
}

#![cfg(unix)]

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::probe::{FailureKind, Probe, ProbeFailure, ProbeResult};

/// Healthy when a path exists and is a Unix socket (symbolic links are
/// followed). It does not connect: pair it with a
/// [`UnixHttpProbe`](crate::UnixHttpProbe) in [`all_of`](crate::all_of) to
/// tell "socket gone" from "socket there but not answering".
///
/// Failures are `missing` (no such path) or `not_socket` (a regular file, a
/// directory...). The check is one `stat(2)` call made inline: cheap, and
/// it never blocks on a network file system for a local socket path.
#[derive(Debug, Clone)]
pub struct SocketFileProbe {
    path: PathBuf,
    name: String,
}

impl SocketFileProbe {
    /// Probes `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let name = format!("socket_file {}", path.display());
        SocketFileProbe { path, name }
    }

    /// The probed path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Probe for SocketFileProbe {
    async fn check(&self) -> ProbeResult {
        let meta = std::fs::metadata(&self.path).map_err(|e| {
            ProbeFailure::new(
                match FailureKind::of_io(&e) {
                    FailureKind::Missing => FailureKind::Missing,
                    _ => FailureKind::Io,
                },
                format!("{}: {e}", self.path.display()),
            )
        })?;
        if meta.file_type().is_socket() {
            Ok(())
        } else {
            let what = if meta.is_dir() {
                "a directory"
            } else if meta.is_file() {
                "a regular file"
            } else {
                "not a socket"
            };
            Err(ProbeFailure::new(
                FailureKind::NotSocket,
                format!("{} is {what}", self.path.display()),
            ))
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

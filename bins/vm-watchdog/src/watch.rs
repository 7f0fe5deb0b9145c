//! Watching `vms.yaml`: file events (the `notify` crate) and SIGHUP are
//! debounced, then the file is reloaded; a valid change is applied to the engine, an
//! invalid one keeps the running configuration, is logged with its exact
//! error and raises one warning alert: one per distinct error, however often
//! or however long apart the broken file is saved again, until a valid file
//! has been loaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel_telemetry::HangupReceiver;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::RawApi;
use crate::engine::Engine;
use crate::error::Error;
use crate::vms_yaml::{self, VmsFile};

/// Quiet time after the last file event before reloading: editors write a
/// file in several steps.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(500);

/// Waits for the next burst of events on `events` and for `debounce` of
/// quiet after it. Returns `true` when a reload is due, `false` when
/// `cancel` fired or the sender side is gone.
pub async fn next_burst(
    events: &mut mpsc::UnboundedReceiver<()>,
    debounce: Duration,
    cancel: &CancellationToken,
) -> bool {
    tokio::select! {
        biased;
        () = cancel.cancelled() => return false,
        event = events.recv() => if event.is_none() { return false },
    }
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return false,
            event = events.recv() => if event.is_none() { return false },
            () = tokio::time::sleep(debounce) => return true,
        }
    }
}

/// Keeps the last applied file and applies changes.
#[derive(Debug)]
pub struct Reloader<R> {
    engine: Arc<Engine<R>>,
    path: PathBuf,
    current: VmsFile,
    /// The error of the last invalid load, already alerted; cleared by a
    /// valid load.
    invalid: Option<String>,
}

impl<R: RawApi> Reloader<R> {
    /// Starts from `current` (already applied).
    pub fn new(engine: Arc<Engine<R>>, path: PathBuf, current: VmsFile) -> Self {
        Reloader {
            engine,
            path,
            current,
            invalid: None,
        }
    }

    /// Reads the file; applies it when valid and different; otherwise keeps
    /// the running configuration, logs the error and raises a warning (once
    /// per distinct error: the alert's dedup window alone would repeat it
    /// every 5 minutes while the file stays broken). Returns whether
    /// something was applied.
    pub async fn reload(&mut self) -> bool {
        let loaded = vms_yaml::load(&self.path).await;
        if loaded.is_ok() && self.invalid.take().is_some() {
            tracing::info!(path = %self.path.display(), "vms.yaml is valid again");
            self.engine.alerts().config_valid();
        }
        match loaded {
            Ok(file) if file == self.current => {
                tracing::debug!(path = %self.path.display(), "vms.yaml unchanged");
                self.engine.set_config_valid(true, None);
                false
            }
            Ok(file) => {
                let report = self.engine.apply(&file);
                tracing::info!(
                    path = %self.path.display(),
                    added = ?report.added,
                    removed = ?report.removed,
                    reconfigured = ?report.reconfigured,
                    vms = file.vms.len(),
                    "vms.yaml reloaded"
                );
                self.current = file;
                self.engine
                    .set_config_valid(true, Some(chrono::Utc::now().timestamp()));
                true
            }
            Err(e) => {
                let error = e.to_string();
                tracing::error!(%error, "vms.yaml is invalid; keeping the running configuration");
                self.engine.set_config_valid(false, None);
                if self.invalid.as_deref() != Some(error.as_str()) {
                    self.engine.alerts().config_invalid(&error);
                    self.invalid = Some(error);
                }
                false
            }
        }
    }
}

/// Watches `reloader`'s file (through its directory, so editors that
/// replace the file are seen) and reloads on each of `hangups` (the kit's
/// SIGHUPs, [`keel_telemetry::Kit::hangups`]), until `cancel` fires.
///
/// # Errors
/// [`Error::Io`] when the watcher cannot start.
pub fn spawn<R: RawApi>(
    mut reloader: Reloader<R>,
    debounce: Duration,
    mut hangups: HangupReceiver,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>, Error> {
    let path = reloader.path.clone();
    let file_name = path.file_name().map(ToOwned::to_owned);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    // SIGHUP reloads too (the usual daemon convention, and the way to
    // reload where file events do not arrive: some network and overlay
    // file systems, a ConfigMap's symlink swap on an old kernel). The kit
    // listens for the signal itself, from the program's start.
    let hup_tx = tx.clone();
    let hup_cancel = cancel.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                () = hup_cancel.cancelled() => return,
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading vms.yaml");
                    if hup_tx.send(()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(e) => {
                !matches!(e.kind, EventKind::Access(_))
                    && e.paths
                        .iter()
                        .any(|p| p.file_name() == file_name.as_deref())
            }
            // Errors (queue overflow...) may hide a change: reload to be sure.
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    })
    .map_err(|e| io_error(&dir, e))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| io_error(&dir, e))?;
    tracing::info!(path = %path.display(), "watching vms.yaml");
    Ok(tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        while next_burst(&mut rx, debounce, &cancel).await {
            reloader.reload().await;
        }
    }))
}

fn io_error(dir: &Path, e: notify::Error) -> Error {
    Error::Io {
        context: format!("cannot watch {}", dir.display()),
        source: std::io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_of_events_reload_once_after_the_quiet_time() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reloads = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let counter = reloads.clone();
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            while next_burst(&mut rx, Duration::from_millis(500), &token).await {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        // Five events 100 ms apart: one reload, 500 ms after the last.
        for _ in 0..5 {
            tx.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(
            reloads.load(Ordering::SeqCst),
            0,
            "still within the quiet time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(reloads.load(Ordering::SeqCst), 1);
        // A later event reloads again.
        tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(reloads.load(Ordering::SeqCst), 2);
        cancel.cancel();
        task.await.unwrap();
    }
}

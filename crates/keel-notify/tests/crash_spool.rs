//! Crash consistency of the spool under `kill -9` at random points.
//!
//! The parent runs this test binary again as a child (the ignored
//! `spool_crash_child` test): a notifier whose only sink never answers, so
//! everything stays queued, takes one critical notification after another
//! and writes a snapshot after each ([`Notifier::save_spool`]), printing the
//! id once the write returned (the acknowledgement). After a seeded random
//! delay the parent sends SIGKILL, then restarts a notifier on the spool
//! with a sink that accepts, and checks the invariant: every acknowledged
//! notification is delivered, byte for byte what was written, nothing
//! else but the one snapshot in flight when the child died, nothing
//! reported unreadable, and no temporary file left behind. Half the lives
//! run with [`SpoolSync::Full`], half with [`SpoolSync::Normal`].
//!
//! SIGKILL tests a process crash: the page cache survives it, so both
//! policies must pass. What `Full` adds, surviving an OS crash or power
//! loss, rests on the `fsync` of the snapshot before its rename and of the
//! directory after; showing it needs a machine that loses its page cache,
//! which this test does not do.
//!
//! `KEEL_CRASH_ITERATIONS` (default 60) and `KEEL_CRASH_SEED` override.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keel_core::Rng;
use keel_notify::{Message, Notification, Notifier, Sink, SinkError, SpoolSync};
use parking_lot::Mutex;

const DIR_ENV: &str = "KEEL_NOTIFY_CRASH_DIR";
const SYNC_ENV: &str = "KEEL_NOTIFY_CRASH_SYNC";
const SINK: &str = "pager";

/// The body notification `id` carries: sizes from nothing to 20 KB.
fn body(id: u64) -> String {
    let len = match id % 4 {
        0 => 20_000 - (id * 37) % 5_000,
        1 => (id * 131) % 2_000,
        _ => (id * 7) % 100,
    };
    char::from(b'a' + (id % 26) as u8)
        .to_string()
        .repeat(len as usize)
}

/// A sink named [`SINK`] that never answers (the child) or keeps what it
/// is given (the parent's restart).
#[derive(Clone, Default)]
struct Pager {
    accept: bool,
    got: Arc<Mutex<Vec<(String, String)>>>,
}

impl Sink for Pager {
    fn name(&self) -> &str {
        SINK
    }

    async fn send(&self, message: &Message) -> Result<(), SinkError> {
        if !self.accept {
            std::future::pending::<()>().await;
        }
        self.got
            .lock()
            .push((message.key().to_owned(), message.body().to_owned()));
        Ok(())
    }
}

fn spool_path(dir: &Path) -> PathBuf {
    dir.join("notify.spool")
}

/// The child: queues and snapshots until killed, printing each
/// acknowledged id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of kill_9_during_spool_writes_keeps_every_acknowledged_snapshot"]
async fn spool_crash_child() {
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("started by the crash loop"));
    let sync = match std::env::var(SYNC_ENV).unwrap().as_str() {
        "full" => SpoolSync::Full,
        _ => SpoolSync::Normal,
    };
    let notifier = Notifier::builder()
        .sink(Pager::default())
        .spool(spool_path(&dir))
        .spool_sync(sync)
        .capacity(100_000)
        .workers(1)
        .build()
        .unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    for id in 0u64.. {
        notifier
            .notify(Notification::critical(format!("n{id}"), format!("alert {id}")).body(body(id)))
            .unwrap();
        notifier.save_spool().await.unwrap();
        writeln!(out, "{id}").unwrap();
        out.flush().unwrap();
        std::thread::sleep(Duration::from_micros(300));
    }
}

/// One life: start the child, kill it `delay` after it is ready; returns
/// how many ids it acknowledged (they are `0..n`).
fn life(dir: &Path, sync: &str, delay: Duration) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "spool_crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(SYNC_ENV, sync)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "child exited before it was ready: {:?}",
            child.wait()
        );
        // libtest prints the test's name first, on the same line.
        if line.ends_with("ready\n") {
            break;
        }
    }
    std::thread::sleep(delay);
    child.kill().unwrap();
    child.wait().unwrap();
    let mut acked = 0;
    loop {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        // A line cut by the kill was never an acknowledgement.
        if let Some(id) = line.strip_suffix('\n') {
            assert_eq!(id.parse::<u64>().unwrap(), acked, "ids in order");
            acked += 1;
        }
    }
    acked
}

#[test]
fn kill_9_during_spool_writes_keeps_every_acknowledged_snapshot() {
    let iterations: u64 = std::env::var("KEEL_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let seed = std::env::var("KEEL_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6b69_6c6c_392d_7370);
    let rng = Rng::with_seed(seed);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut total = 0;
    for life_no in 0..iterations {
        let dir = tempfile::tempdir().unwrap();
        let sync = if life_no % 2 == 0 { "full" } else { "normal" };
        let delay = Duration::from_micros(rng.u64_between(0, 40_000));
        let acked = life(dir.path(), sync, delay);
        total += acked;
        let what = format!("life {life_no} (seed {seed}, {sync}, killed after {delay:?})");

        let pager = Pager {
            accept: true,
            ..Pager::default()
        };
        runtime.block_on(async {
            let notifier = Notifier::builder()
                .sink(pager.clone())
                .spool(spool_path(dir.path()))
                .workers(1)
                .build()
                .unwrap();
            assert!(notifier.flush(Duration::from_secs(10)).await, "{what}");
            assert_eq!(
                notifier.stats().dropped,
                0,
                "{what}: unreadable spool lines"
            );
            notifier.shutdown(Duration::from_secs(1)).await;
        });
        let got = pager.got.lock().clone();
        // The last acknowledged snapshot, or the one written after it.
        let n = got.len() as u64;
        assert!(
            n == acked || n == acked + 1,
            "{what}: {acked} acknowledged, {n} delivered"
        );
        for (id, (key, text)) in got.iter().enumerate() {
            let id = id as u64;
            assert_eq!(key, &format!("n{id}"), "{what}: out of order");
            assert_eq!(
                text,
                &body(id),
                "{what}: notification {id} is not what was written"
            );
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{what}: left behind {left:?}");
    }
    assert!(
        total >= iterations,
        "only {total} acknowledgements in {iterations} lives: the kills came too early to test anything"
    );
    eprintln!("{iterations} lives, {total} acknowledged snapshots, all present");
}

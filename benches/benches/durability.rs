//! The cost of durability, as same-run ratios (issue 21): what waiting for
//! the disk adds to a keel-tx file-journal commit and to a keel-notify
//! spool snapshot.
//!
//! * `journal_commit/full` vs `journal_commit/normal`: one `put` record
//!   (about 300 bytes) appended as a commit point (`Durability::Durable`)
//!   to a `FileJournal` opened with `SyncPolicy::Full` (`write(2)` +
//!   `fdatasync` on the blocking pool) and `SyncPolicy::Normal`
//!   (`write(2)` on the runtime). `journal_commit/full_again` repeats the
//!   first after the others, to show how much the disk drifted meanwhile.
//! * `spool_snapshot/full` vs `spool_snapshot/normal`: `Notifier::save_spool`
//!   of 100 queued notifications (about 25 KB) with `SpoolSync::Full`
//!   (write, `fsync`, rename, `fsync` of the directory) and
//!   `SpoolSync::Normal` (write, rename).
//!
//! Everything runs in `tempfile` directories (the filesystem of `/tmp`).
//! alert-history's `SQLITE_SYNCHRONOUS=full` vs `normal` is measured end to
//! end with its load example instead (docs/PERFORMANCE.md).
//!
//! ```text
//! cargo bench -p keel-benches --bench durability -- --warm-up-time 1 --measurement-time 5
//! ```
#![allow(missing_docs)]

use std::time::Duration;

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use keel_notify::{Message, Notification, Notifier, Sink, SinkError, SpoolSync};
use keel_tx::{Durability, FileJournal, Journal, Record, SyncPolicy, TxId};
use serde_json::json;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn put(version: u64) -> Record {
    Record::Put {
        tx: TxId::new(),
        resource: "cluster-a".into(),
        version,
        document: json!({
            "spec": {"masters": 1, "workers": 3, "instanceType": "t3.medium", "region": "eu-west-1"},
            "status": {"phase": "Running", "instances": ["i-0a1", "i-0b2", "i-0c3", "i-0d4"]}
        }),
        at: Utc::now(),
    }
}

fn journal_commit(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("journal_commit");
    for (name, policy) in [
        ("full", SyncPolicy::Full),
        ("normal", SyncPolicy::Normal),
        ("full_again", SyncPolicy::Full),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let journal = FileJournal::builder(dir.path())
            .sync(policy)
            .compact_after_bytes(1 << 30)
            .open()
            .unwrap();
        let mut version = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                version += 1;
                rt.block_on(journal.append(&[put(version)], Durability::Durable))
                    .unwrap();
            });
        });
    }
    group.finish();
}

/// A sink that never answers: what is notified stays queued.
struct Down;

impl Sink for Down {
    fn name(&self) -> &str {
        "down"
    }

    async fn send(&self, _: &Message) -> Result<(), SinkError> {
        std::future::pending().await
    }
}

fn spool_snapshot(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("spool_snapshot");
    for (name, sync) in [
        ("full", SpoolSync::Full),
        ("normal", SpoolSync::Normal),
        ("full_again", SpoolSync::Full),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let notifier = rt.block_on(async {
            let notifier = Notifier::builder()
                .sink(Down)
                .spool(dir.path().join("notify.spool"))
                .spool_sync(sync)
                .workers(1)
                .build()
                .unwrap();
            for i in 0..100 {
                notifier
                    .notify(
                        Notification::critical(
                            format!("vm-{i}:STOPPED"),
                            format!("VM vm-{i} stopped"),
                        )
                        .body("The instance stopped without a request; the watchdog will start it.")
                        .field("vm", format!("vm-{i}")),
                    )
                    .unwrap();
            }
            notifier
        });
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(notifier.save_spool()).unwrap());
        });
        rt.block_on(notifier.shutdown(Duration::ZERO));
    }
    group.finish();
}

criterion_group!(benches, journal_commit, spool_snapshot);
criterion_main!(benches);

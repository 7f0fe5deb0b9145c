//! keel-tx: what one transaction (begin, one `set`, commit) costs, with the
//! in-memory journal and with the file journal, each next to the
//! hand-written minimum measured in the same run:
//!
//! * `tx_memory/keel_begin_set_commit` vs `tx_memory/baseline_pointer_set`:
//!   a plain `serde_json` pointer write on a `Value` (what the change itself
//!   costs without snapshot, journal, lock, audit or version).
//! * `tx_file/keel_begin_set_commit` vs `tx_file/baseline_append_fdatasync`:
//!   appending one JSON line of the same size as the commit record to a file
//!   and calling `fdatasync` (the durability floor of any write-ahead log on
//!   this disk).
//!   `baseline_append_fdatasync_again` repeats it after the keel runs, to
//!   show how much the disk's latency drifted meanwhile.
//! * `tx_file/keel_16_resources_concurrently`: sixteen such transactions on
//!   sixteen resources at once (throughput per transaction), where
//!   concurrent commits share one `fdatasync`.
//!
//! Both journals run on a current-thread tokio runtime; the file journal in
//! a `tempfile` directory (on the same filesystem as `/tmp`).
//!
//! ```text
//! cargo bench -p keel-benches --bench tx -- --warm-up-time 1 --measurement-time 5
//! ```
#![allow(missing_docs)]

use std::io::Write as _;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keel_tx::{BeginMode, FileJournal, Journal, MemoryJournal, TxManager};
use serde_json::{Value, json};

fn document() -> Value {
    json!({
        "spec": {"masters": 1, "workers": 3, "instanceType": "t3.medium", "region": "eu-west-1"},
        "status": {"phase": "Running", "instances": ["i-0a1", "i-0b2", "i-0c3", "i-0d4"]}
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn manager(journal: Arc<dyn Journal>) -> TxManager {
    let manager = TxManager::builder(journal).open().await.expect("manager");
    manager.put("cluster-a", document(), 0).await.expect("seed");
    manager
}

async fn one_transaction(manager: &TxManager, n: u64) {
    on_resource(manager, "cluster-a", n).await;
}

async fn on_resource(manager: &TxManager, resource: &str, n: u64) {
    let mut tx = manager
        .begin(resource, "scale", "bench", "trace", BeginMode::FailFast)
        .await
        .expect("begin");
    tx.set("/spec/workers", n).await.expect("set");
    tx.commit().await.expect("commit");
}

fn memory(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("tx_memory");
    group.throughput(Throughput::Elements(1));

    group.bench_function("baseline_pointer_set", |b| {
        let mut doc = document();
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            *doc.pointer_mut("/spec/workers").expect("path") = Value::from(n);
            std::hint::black_box(&doc);
        });
    });

    let manager = rt.block_on(manager(Arc::new(MemoryJournal::new())));
    group.bench_function("keel_begin_set_commit", |b| {
        let mut n = 0u64;
        b.to_async(&rt).iter(|| {
            n += 1;
            let manager = &manager;
            async move { one_transaction(manager, n).await }
        });
    });
    group.finish();
}

fn file(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("tx_file");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);

    // One commit record's worth of bytes, as the journal writes it.
    let line = {
        let record = json!({
            "type": "commit", "tx": "6d0f8f3e-4ad4-4c55-9d61-1f0c5b0f0a11", "resource": "cluster-a",
            "version": 2, "document": document(), "changes": 1, "at": "2026-01-01T00:00:00.000000000Z"
        });
        let mut line = serde_json::to_vec(&record).expect("encode");
        line.push(b'\n');
        line
    };
    let baseline_dir = tempfile::tempdir().expect("tempdir");
    let mut baseline_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(baseline_dir.path().join("log.jsonl"))
        .expect("open");
    let mut baseline = |group: &mut criterion::BenchmarkGroup<'_, _>, name: &str| {
        group.bench_function(name, |b| {
            b.iter(|| {
                baseline_file.write_all(&line).expect("write");
                baseline_file.sync_data().expect("fdatasync");
            });
        });
    };
    baseline(&mut group, "baseline_append_fdatasync");

    let dir = tempfile::tempdir().expect("tempdir");
    let journal = FileJournal::open(dir.path()).expect("journal");
    let manager = rt.block_on(manager(Arc::new(journal)));
    group.bench_function("keel_begin_set_commit", |b| {
        let mut n = 0u64;
        b.to_async(&rt).iter(|| {
            n += 1;
            let manager = &manager;
            async move { one_transaction(manager, n).await }
        });
    });

    // Sixteen transactions on sixteen resources at once: concurrent commits
    // share one fdatasync (group commit), so the cost per transaction drops.
    let resources: Vec<String> = (0..16).map(|i| format!("cluster-{i}")).collect();
    rt.block_on(async {
        for resource in &resources {
            manager.put(resource, document(), 0).await.expect("seed");
        }
    });
    group.throughput(Throughput::Elements(resources.len() as u64));
    group.bench_function("keel_16_resources_concurrently", |b| {
        let mut n = 0u64;
        b.to_async(&rt).iter(|| {
            n += 1;
            let (manager, resources) = (&manager, &resources);
            async move {
                futures::future::join_all(resources.iter().map(|r| on_resource(manager, r, n)))
                    .await
            }
        });
    });

    // The baseline again, after the keel runs, to show how much fdatasync
    // latency drifted during the run.
    group.throughput(Throughput::Elements(1));
    baseline(&mut group, "baseline_append_fdatasync_again");
    group.finish();
}

criterion_group!(benches, memory, file);
criterion_main!(benches);

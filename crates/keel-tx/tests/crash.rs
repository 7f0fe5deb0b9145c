//! Crash safety with a real process kill.
//!
//! The parent test re-runs this test binary as a child process (selecting
//! the ignored `crash_child_process` test through an environment variable
//! and libtest's filter). The child commits a transaction, leaves two
//! transactions open with changes in the journal, starts a saga whose second
//! step never returns, writes a ready file and waits. The parent kills it
//! with SIGKILL, reopens the file journal and checks that recovery kept the
//! committed state, rolled back the open transactions (keeping their audit)
//! and resumes the saga with the same idempotency key.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keel_retry::RetryPolicy;
use keel_tx::{
    BeginMode, FileJournal, RollbackCause, Saga, SagaExecutor, SagaRegistry, Step, StepState,
    TxManager, TxStatus, idempotency_key,
};
use serde_json::json;

const DIR_ENV: &str = "KEEL_TX_CRASH_DIR";
const SAGA_ID: &str = "cluster-a/provision";

fn registry(launch_blocks: bool, launches: Arc<parking_lot::Mutex<Vec<String>>>) -> SagaRegistry {
    let no_retry = RetryPolicy::builder().max_retries(0).build().unwrap();
    SagaRegistry::new()
        .register(
            Step::new("reserve_ip", |_| async {
                Ok::<_, &str>(json!({"ip": "10.0.0.7"}))
            })
            .compensate(|_| async { Ok::<_, &str>(()) })
            .retry(no_retry.clone()),
        )
        .register(
            Step::new("launch", move |ctx| {
                let launches = launches.clone();
                async move {
                    launches.lock().push(ctx.idempotency_key().to_owned());
                    if launch_blocks {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, &str>(json!({"instance": "i-123"}))
                }
            })
            .compensate(|_| async { Ok::<_, &str>(()) })
            .retry(no_retry),
        )
}

/// The child: run only when the parent starts it (ignored otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of kill_mid_transaction_keeps_committed_and_rolls_back_uncommitted"]
async fn crash_child_process() {
    let dir = PathBuf::from(
        std::env::var(DIR_ENV).expect("started by the crash test with KEEL_TX_CRASH_DIR"),
    );
    let journal = Arc::new(FileJournal::open(dir.join("journal")).unwrap());
    let manager = TxManager::builder(journal.clone()).open().await.unwrap();

    manager
        .put("cluster-a", json!({"spec": {"masters": 1}}), 0)
        .await
        .unwrap();
    let mut committed = manager
        .begin(
            "cluster-a",
            "scaleUp",
            "controller",
            "trace-1",
            BeginMode::FailFast,
        )
        .await
        .unwrap();
    committed.set("/spec/masters", 3).await.unwrap();
    committed
        .merge("/status", json!({"phase": "Running"}))
        .await
        .unwrap();
    committed.commit().await.unwrap();

    let mut open_a = manager
        .begin(
            "cluster-a",
            "scaleDown",
            "controller",
            "trace-2",
            BeginMode::FailFast,
        )
        .await
        .unwrap();
    open_a.set("/spec/masters", 0).await.unwrap();
    open_a.delete("/status").await.unwrap();
    let mut open_b = manager
        .begin(
            "cluster-b",
            "create",
            "controller",
            "trace-3",
            BeginMode::FailFast,
        )
        .await
        .unwrap();
    open_b
        .set("", json!({"spec": {"masters": 5}}))
        .await
        .unwrap();

    let launches = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let executor = SagaExecutor::builder(journal, registry(true, launches.clone()))
        .open()
        .await
        .unwrap();
    tokio::spawn(async move {
        executor
            .run(Saga::new(SAGA_ID).step("reserve_ip").step("launch"))
            .await
    });
    while launches.lock().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    std::fs::write(dir.join("ready"), b"ready").unwrap();
    // Hold the open transactions until the parent kills us.
    let _hold = (open_a, open_b);
    std::future::pending::<()>().await;
}

fn wait_ready(child: &mut std::process::Child, dir: &Path) {
    for _ in 0..3000 {
        if dir.join("ready").exists() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.join("child.log")).unwrap_or_default();
            panic!("child exited early with {status}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("child never became ready");
}

/// Runs the ignored test `child` in a child process with `dir`, waits until
/// it is ready and kills it with SIGKILL.
fn run_child_and_kill(child: &str, dir: &Path) {
    use std::os::unix::process::ExitStatusExt as _;

    let log = std::fs::File::create(dir.join("child.log")).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            child,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_ready(&mut child, dir);
    // `Child::kill` sends SIGKILL on Unix: no destructor, no flush, no rollback.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc_sigkill()),
        "child was killed, not exited: {status}"
    );
}

#[test]
fn kill_mid_transaction_keeps_committed_and_rolls_back_uncommitted() {
    let dir = tempfile::tempdir().unwrap();
    run_child_and_kill("crash_child_process", dir.path());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // The kernel released the journal lock with the process.
        let journal = Arc::new(FileJournal::open(dir.path().join("journal")).unwrap());
        let manager = TxManager::builder(journal.clone()).open().await.unwrap();

        // Committed: kept.
        let a = manager.get("cluster-a").unwrap();
        assert_eq!(
            a.value,
            json!({"spec": {"masters": 3}, "status": {"phase": "Running"}})
        );
        assert_eq!(a.version, 2);
        // Uncommitted: rolled back.
        assert!(manager.get("cluster-b").is_none());
        assert!(manager.open_transactions().is_empty());

        let recovered = manager.recovered();
        assert_eq!(recovered.len(), 2);
        let scale_down = recovered
            .iter()
            .find(|r| r.operation == "scaleDown")
            .unwrap();
        assert_eq!(scale_down.trace_id, "trace-2");
        assert_eq!(
            scale_down.changes.len(),
            2,
            "changes written before the kill are audited"
        );
        assert_eq!(scale_down.changes[0].before, Some(json!(3)));
        assert_eq!(scale_down.changes[0].after, Some(json!(0)));
        assert!(matches!(
            scale_down.status,
            TxStatus::RolledBack {
                cause: RollbackCause::Recovery,
                ..
            }
        ));
        let audit = manager.audit("cluster-a");
        let statuses: Vec<&TxStatus> = audit.iter().map(|r| &r.status).collect();
        assert_eq!(
            statuses.len(),
            3,
            "put, committed scaleUp, rolled back scaleDown"
        );
        assert_eq!(*statuses[1], TxStatus::Committed { version: 2 });

        // The resource is usable again.
        let mut tx = manager
            .begin("cluster-a", "after", "me", "t", BeginMode::FailFast)
            .await
            .unwrap();
        tx.set("/spec/masters", 4).await.unwrap();
        assert_eq!(tx.commit().await.unwrap().version, 3);

        // The saga was mid-`launch`: a new executor resumes it.
        let launches = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let executor = SagaExecutor::builder(journal, registry(false, launches.clone()))
            .open()
            .await
            .unwrap();
        let report = executor.report(SAGA_ID).unwrap();
        assert_eq!(report.steps[0].state, StepState::Completed);
        assert_eq!(report.steps[1].state, StepState::Running);
        let reports = executor.recover().await.unwrap();
        assert!(reports[0].is_completed());
        assert_eq!(*launches.lock(), [idempotency_key(SAGA_ID, "launch")]);
    });
}

/// The child of the commit-through crash test: its external write (a file
/// standing in for the store of record) succeeds, and the process is killed
/// before the commit marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of kill_between_external_write_and_commit_marker_rolls_back"]
async fn crash_child_commit_through() {
    let dir = PathBuf::from(
        std::env::var(DIR_ENV).expect("started by the crash test with KEEL_TX_CRASH_DIR"),
    );
    let journal = Arc::new(FileJournal::open(dir.join("journal")).unwrap());
    let manager = TxManager::builder(journal).open().await.unwrap();
    manager
        .put("cluster-s", json!({"spec": {"masters": 1}}), 0)
        .await
        .unwrap();
    let mut tx = manager
        .begin(
            "cluster-s",
            "scaleUp",
            "controller",
            "trace-9",
            BeginMode::FailFast,
        )
        .await
        .unwrap();
    tx.set("/spec/masters", 2).await.unwrap();
    let store = dir.join("store.json");
    let ready = dir.join("ready");
    tx.commit_through(move |doc, version| {
        let object = json!({"document": doc, "version": version});
        async move {
            std::fs::write(store, object.to_string()).unwrap();
            std::fs::write(ready, b"ready").unwrap();
            // Killed here: after the write, before the commit marker.
            std::future::pending::<Result<(), &str>>().await
        }
    })
    .await
    .unwrap();
    unreachable!("the write never returns");
}

#[test]
fn kill_between_external_write_and_commit_marker_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    run_child_and_kill("crash_child_commit_through", dir.path());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let journal = Arc::new(FileJournal::open(dir.path().join("journal")).unwrap());
        let manager = TxManager::builder(journal).open().await.unwrap();

        // The journal has no commit marker: recovery rolls the transaction back.
        let recovered = manager.recovered();
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].trace_id, "trace-9");
        assert_eq!(recovered[0].changes.len(), 1);
        assert!(matches!(
            recovered[0].status,
            TxStatus::RolledBack {
                cause: RollbackCause::Recovery,
                ..
            }
        ));
        let doc = manager.get("cluster-s").unwrap();
        assert_eq!(
            (doc.version, doc.value),
            (1, json!({"spec": {"masters": 1}}))
        );

        // The store of record took the write, and it wins: sync to it.
        let stored: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("store.json")).unwrap()).unwrap();
        assert_eq!(stored["version"], 2);
        let object = stored["document"].clone();
        assert_eq!(object, json!({"spec": {"masters": 2}}));
        assert_eq!(manager.sync("cluster-s", object.clone()).await.unwrap(), 2);
        assert_eq!(manager.get("cluster-s").unwrap().value, object);
        let last = manager.audit("cluster-s").pop().unwrap();
        assert_eq!(
            (last.operation.as_str(), &last.status),
            ("put", &TxStatus::Committed { version: 2 })
        );

        // The resource is usable again.
        manager
            .begin("cluster-s", "after", "me", "t", BeginMode::FailFast)
            .await
            .unwrap();
    });
}

fn libc_sigkill() -> i32 {
    nix::sys::signal::Signal::SIGKILL as i32
}

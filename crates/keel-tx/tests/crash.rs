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

#[test]
fn kill_mid_transaction_keeps_committed_and_rolls_back_uncommitted() {
    use std::os::unix::process::ExitStatusExt as _;

    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("child.log")).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_ready(&mut child, dir.path());
    // `Child::kill` sends SIGKILL on Unix: no destructor, no flush, no rollback.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc_sigkill()),
        "child was killed, not exited: {status}"
    );

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

fn libc_sigkill() -> i32 {
    nix::sys::signal::Signal::SIGKILL as i32
}

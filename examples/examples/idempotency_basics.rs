//! keel-idempotency from a first user's seat: run an operation once per key
//! in memory, replay it, coalesce concurrent callers, reject a reused key
//! with other parameters, and store an `std::io::Error` through
//! `StoredError`. Public API only; runs in well under a second.
//!
//! Run: `cargo run -p keel-examples --example idempotency_basics`.
#![allow(clippy::print_stdout)] // an example reports to its reader

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel_idempotency::{ExecutionKind, Fingerprint, Idempotency, IdempotencyKey, StoredError};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // One line for the default: in memory, 24 h TTL, 30 s leases.
    let idem = Idempotency::new();

    let params = json!({"cluster": "prod", "instance_type": "t3.small", "count": 2});
    let key = IdempotencyKey::new("create-instances", &params)?;
    let fingerprint = Fingerprint::of(&params)?;

    let created = AtomicU32::new(0);
    let create = || async {
        created.fetch_add(2, Ordering::SeqCst);
        Ok::<_, StoredError>(vec!["i-1".to_string(), "i-2".to_string()])
    };
    let first = idem.execute(&key, &fingerprint, create).await?;
    let again = idem.call(&key, &fingerprint).run_detailed(create).await?;
    assert_eq!(again.kind, ExecutionKind::Replayed);
    assert_eq!(again.result.as_ref().ok(), Some(&first));
    println!(
        "created {first:?} once; the retry was {:?} ({} instances in all)",
        again.kind,
        created.load(Ordering::SeqCst)
    );

    // The same key with other parameters is the caller's mistake.
    let other = Fingerprint::of(&json!({"count": 3}))?;
    let err = idem.execute(&key, &other, create).await.unwrap_err();
    println!("reused key: {err}");
    assert!(err.as_fingerprint_mismatch().is_some());

    // Errors are stored too; `?` turns an io::Error into a StoredError.
    let read_key = IdempotencyKey::new("read-config", &"/etc/keel/missing.toml")?;
    let read = || async {
        let text = tokio::fs::read_to_string("/etc/keel/missing.toml").await?;
        Ok::<_, StoredError>(text.len())
    };
    let failed = idem
        .execute(&read_key, &Fingerprint::empty(), read)
        .await
        .unwrap_err()
        .into_operation()
        .expect("the operation's own error");
    println!("the operation failed: {failed}");

    // Configured, still without naming the store; concurrent callers of one
    // key wait for the one run.
    let idem = Idempotency::in_memory()
        .ttl(Duration::from_secs(60))
        .lease(Duration::from_secs(5))
        .build()?;
    let runs = Arc::new(AtomicU32::new(0));
    let key = IdempotencyKey::new("reboot", &"vm-17")?;
    let callers: Vec<_> = (0..5)
        .map(|_| {
            let (idem, runs) = (idem.clone(), runs.clone());
            tokio::spawn(async move {
                idem.call(&key, &Fingerprint::empty())
                    .run_detailed(|| async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, StoredError>("rebooted".to_string())
                    })
                    .await
            })
        })
        .collect();
    let mut kinds = Vec::new();
    for caller in callers {
        kinds.push(caller.await??.kind);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    println!("five concurrent callers, one reboot: {kinds:?}");
    Ok(())
}

//! Faults: two controllers at once, a controller fenced after losing its
//! lock, half of EC2 failing or throttled, RunInstances answers lost after
//! the instance was created, a failed provisioning cleaned up by the saga's
//! compensation, and the binary killed with SIGKILL at random points.

use std::time::Duration;

use crate::support::{Env, HA, TABLE};
use aws_sdk_dynamodb::types::AttributeValue;
use goman_controller::cli;
use goman_controller::model::Phase;
use goman_controller::reconcile::ReconcileError;
use goman_controller::store::{Expect, StoreError};
use keel_testkit::fakes::aws::{AwsFault, AwsFaults, Lost};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_controllers_one_acts_and_one_that_lost_its_lock_is_fenced() {
    let env = Env::start().await;
    // Installs take 1.5 s, so controller A is mid-pass for a while.
    env.front.set_command_latency(Duration::from_millis(1500));
    let a = env.parts("journal-a", &[]).await;
    let b = env.parts("journal-b", &[]).await;
    cli::apply(a.reconciler.store(), "default", HA)
        .await
        .unwrap();
    let ra = a.reconciler.clone();
    let pass_a = tokio::spawn(async move { ra.reconcile("prod").await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    // B finds the lock held: it waits (busy), acting on nothing.
    let busy = b.reconciler.reconcile("prod").await.unwrap();
    assert_eq!(busy.result, "busy");

    // A's lock "expires" and B takes it (the item is removed as the
    // conditional put on an expired item would replace it).
    b.aws
        .dynamodb
        .delete_item()
        .table_name(TABLE)
        .key(
            "resource_id",
            AttributeValue::S("cluster/default/prod".into()),
        )
        .send()
        .await
        .unwrap();
    let rb = b.reconciler.clone();
    let pass_b = tokio::spawn(async move { rb.reconcile("prod").await });
    let a_result = pass_a.await.unwrap();
    assert!(
        matches!(a_result, Err(ReconcileError::Fenced(_))),
        "A was not fenced: {a_result:?}"
    );
    pass_b.await.unwrap().ok();
    let doc = env
        .reconcile_until(&b.reconciler, "prod", Phase::Running, 30)
        .await;
    // Never more instances than the spec, whoever created them.
    assert_eq!(env.live_instances(&doc.metadata.uid).await.len(), 3);

    // The store refuses a write based on an older read.
    let stale = b.reconciler.store().get("prod").await.unwrap().unwrap();
    cli::apply(
        b.reconciler.store(),
        "default",
        &HA.replace("team: platform", "team: infra"),
    )
    .await
    .unwrap();
    let refused = b
        .reconciler
        .store()
        .put(&stale.doc, &Expect::Etag(stale.etag))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict { .. })),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_of_ec2_failing_or_throttled_still_converges_without_duplicates() {
    let env = Env::start().await;
    env.front
        .set_faults(
            "ec2",
            None,
            AwsFaults::none().with_errors(0.25).with_throttles(0.25),
        )
        .unwrap();
    // And half of the creates that do reach EC2 lose their answer.
    env.front
        .set_faults(
            "ec2",
            Some("RunInstances"),
            AwsFaults::none()
                .with_errors(0.25)
                .with_throttles(0.25)
                .with_lost_responses(0.5, Lost::Close),
        )
        .unwrap();
    // And the first two creates certainly take effect with their answer
    // lost: without the token lookup they would become five instances.
    for _ in 0..2 {
        env.front.push_next(
            "ec2",
            Some("RunInstances"),
            AwsFault::LostResponse(Lost::Close),
        );
    }
    let parts = env
        .parts_with_short_breakers("journal", Duration::from_millis(200), &[])
        .await;
    let r = &parts.reconciler;
    cli::apply(r.store(), "default", HA).await.unwrap();
    let doc = env.reconcile_until(r, "prod", Phase::Running, 300).await;
    let live = env.live_instances(&doc.metadata.uid).await;
    assert_eq!(live.len(), 3, "duplicates or losses: {live:?}");
    for e in &doc.status.instances {
        assert!(live.iter().any(|l| Some(&l.id) == e.instance_id.as_ref()));
    }
    // Three errors in a row: the EC2 breaker opens (3 failures) and the
    // retry waits out its open time (200 ms here) instead of hammering.
    env.front.clear_faults();
    for _ in 0..3 {
        env.front
            .push_next("ec2", Some("DescribeInstances"), AwsFault::Error);
    }
    let outcome = r.reconcile("prod").await.unwrap();
    assert_eq!(outcome.phase, Some(Phase::Running));
    let ec2 = parts.breakers.get("ec2").stats();
    assert!(
        ec2.totals.transitions.iter().sum::<u64>() > 0,
        "the EC2 breaker never opened: {ec2:?}"
    );
    assert!(
        ec2.totals.rejected() > 0,
        "nothing waited behind the open breaker: {ec2:?}"
    );
    assert!(env.front.calls("ec2", Some("RunInstances")) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_provisioning_with_cleanup_terminates_what_it_created() {
    let env = Env::start().await;
    // Every install fails for good: the script exits 1 (a step failure is
    // retried by the saga step's policy, then the saga compensates).
    env.front.set_command_handler(|inv| {
        if inv.comment.contains("install") {
            keel_testkit::fakes::aws::CommandResult::failed(
                1,
                "curl: (6) Could not resolve host: get.k3s.io",
            )
        } else {
            keel_testkit::fakes::aws::CommandResult::success("True")
        }
    });
    let parts = env.parts("journal", &[]).await;
    let r = &parts.reconciler;
    let manifest = format!("{HA}  onFailure: cleanup\n");
    cli::apply(r.store(), "default", &manifest).await.unwrap();
    let doc = env.reconcile_until(r, "prod", Phase::Failed, 10).await;
    assert!(
        doc.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("install")),
        "{:?}",
        doc.status.message
    );
    assert!(doc.status.instances.is_empty());
    assert!(
        env.live_instances(&doc.metadata.uid).await.is_empty(),
        "cleanup left instances"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_points_of_provisioning_never_creates_a_second_instance() {
    let env = Env::start().await;
    env.front.set_command_latency(Duration::from_millis(300));
    let parts = env.parts("journal", &[]).await;
    cli::apply(parts.reconciler.store(), "default", HA)
        .await
        .unwrap();
    let journal = env.dir.path().join("journal-bin");
    let mut args = env.args_with(&["--journal", journal.to_str().unwrap(), "--lock-ttl", "2s"]);
    args.extend(["reconcile", "--cluster", "prod", "--max-passes", "400"].map(String::from));
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_goman-controller"))
            .args(&args)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("LOG_LEVEL", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let rng = keel::Rng::with_seed(21);
    for round in 0..6 {
        let mut child = spawn();
        let at = rng.duration_between(Duration::from_millis(100), Duration::from_millis(2500));
        tokio::time::sleep(at).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        let doc = parts
            .reconciler
            .store()
            .get("prod")
            .await
            .unwrap()
            .unwrap()
            .doc;
        let live = env.live_instances(&doc.metadata.uid).await;
        assert!(
            live.len() <= 3,
            "round {round}: {} instances after a kill at {at:?}",
            live.len()
        );
        // Every live instance is one the state knows by its token.
        for l in &live {
            assert!(
                doc.status
                    .instances
                    .iter()
                    .any(|e| l.client_token.as_deref() == Some(e.client_token.as_str())),
                "round {round}: orphan {l:?}"
            );
        }
    }
    let status = spawn().wait().await.unwrap();
    assert!(status.success(), "{status:?}");
    let doc = env
        .reconcile_until(&parts.reconciler, "prod", Phase::Running, 5)
        .await;
    let live = env.live_instances(&doc.metadata.uid).await;
    assert_eq!(live.len(), 3, "{live:?}");
    assert_eq!(doc.status.instances.len(), 3);
}

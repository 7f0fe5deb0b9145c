//! Scale, stop and start, delete (drain, protection cleared, nothing left),
//! node replacement, the fleet short-circuit: against moto behind AwsFront.

use std::time::Duration;

use crate::support::{DEV, Env, HA};
use goman_controller::cli;
use goman_controller::model::Phase;
use goman_controller::reconcile::Requeue;
use keel_testkit::fakes::aws::CommandResult;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_up_down_stop_start_and_delete() {
    let env = Env::start().await;
    let parts = env.parts("journal", &[]).await;
    let r = &parts.reconciler;
    cli::apply(r.store(), "default", DEV).await.unwrap();
    let doc = env.reconcile_until(r, "prod", Phase::Running, 20).await;
    let uid = doc.metadata.uid.clone();
    assert_eq!(env.live_instances(&uid).await.len(), 1);

    // Scale up: developer → ha.
    let applied = cli::apply(r.store(), "default", HA).await.unwrap();
    assert_eq!(applied.metadata.generation, 2);
    let doc = env.reconcile_until(r, "prod", Phase::Running, 30).await;
    assert_eq!(doc.status.observed_generation, 2);
    assert_eq!(env.live_instances(&uid).await.len(), 3);
    let first = doc
        .status
        .instances
        .iter()
        .find(|e| e.index == 0)
        .unwrap()
        .instance_id
        .clone();

    // Scale down: the two extra masters are drained from the first one,
    // then terminated; the first master stays.
    cli::apply(r.store(), "default", DEV).await.unwrap();
    let doc = env.reconcile_until(r, "prod", Phase::Running, 30).await;
    assert_eq!(doc.status.instances.len(), 1);
    assert_eq!(doc.status.instances[0].instance_id, first);
    let live = env.live_instances(&uid).await;
    assert_eq!(live.len(), 1, "{live:?}");
    let drains: Vec<_> = env
        .front
        .invocations()
        .into_iter()
        .filter(|i| i.comment.contains("drain"))
        .collect();
    assert_eq!(drains.len(), 1);
    assert_eq!(Some(&drains[0].instance_id), first.as_ref());
    let script = drains[0].commands.join("\n");
    assert!(
        script.contains("kubectl drain prod-master-1")
            && script.contains("kubectl drain prod-master-2"),
        "{script}"
    );

    // Stop, then start again.
    cli::set_stopped(r.store(), "prod", true).await.unwrap();
    env.reconcile_until(r, "prod", Phase::Stopped, 30).await;
    assert!(
        env.live_instances(&uid)
            .await
            .iter()
            .all(|l| l.state == "stopped")
    );
    cli::set_stopped(r.store(), "prod", false).await.unwrap();
    env.reconcile_until(r, "prod", Phase::Running, 30).await;
    assert!(
        env.live_instances(&uid)
            .await
            .iter()
            .all(|l| l.state == "running")
    );

    // Delete: protection cleared, instances terminated, token and document
    // gone, in ceil(n/10) terminate calls.
    let parameter = r.token_parameter("prod");
    assert!(r.cloud().has_parameter(&parameter).await.unwrap());
    env.front.reset_counts();
    cli::delete(r.store(), "prod").await.unwrap();
    let mut done = false;
    for _ in 0..30 {
        let outcome = r.reconcile("prod").await.unwrap();
        if outcome.requeue == Requeue::Done {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(done, "deletion did not finish");
    assert!(env.live_instances(&uid).await.is_empty());
    assert!(r.store().get("prod").await.unwrap().is_none());
    assert!(!r.cloud().has_parameter(&parameter).await.unwrap());
    assert!(env.front.calls("ec2", Some("ModifyInstanceAttribute")) >= 1);
    assert_eq!(env.front.calls("ec2", Some("TerminateInstances")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_never_ready_is_replaced_and_the_old_instance_terminated() {
    let env = Env::start().await;
    // master-1's first instance never becomes Ready.
    let stuck = std::sync::Arc::new(parking_lot::Mutex::new(None::<String>));
    let seen = stuck.clone();
    env.front.set_command_handler(move |inv| {
        let text = inv.commands.join("\n");
        if text.contains("get node prod-master-1") {
            let mut first = seen.lock();
            let id = first.get_or_insert_with(|| inv.instance_id.clone()).clone();
            if id == inv.instance_id {
                return CommandResult::success("False");
            }
        }
        if text.contains("get node") {
            CommandResult::success("True")
        } else {
            CommandResult::success("")
        }
    });
    let parts = env.parts("journal", &[]).await;
    let r = &parts.reconciler;
    cli::apply(r.store(), "default", HA).await.unwrap();
    let doc = env.reconcile_until(r, "prod", Phase::Running, 20).await;
    let old = stuck.lock().clone().unwrap();
    let live = env.live_instances(&doc.metadata.uid).await;
    assert_eq!(live.len(), 3, "{live:?}");
    assert!(
        !live.iter().any(|l| l.id == old),
        "the unready instance still runs"
    );
    let replaced = doc.status.instances.iter().find(|e| e.index == 1).unwrap();
    assert_eq!(replaced.incarnation, 1);
    assert_ne!(replaced.instance_id.as_deref(), Some(old.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_many_unready_nodes_hold_replacement_back() {
    let env = Env::start().await;
    env.front.set_command_handler(|inv| {
        if inv.commands.join("\n").contains("get node") {
            CommandResult::success("False")
        } else {
            CommandResult::success("")
        }
    });
    // Passes end at the reconcile timeout while the fleet is held.
    let parts = env.parts("journal", &["--reconcile-timeout", "4s"]).await;
    let r = &parts.reconciler;
    cli::apply(r.store(), "default", HA).await.unwrap();
    let result = r.reconcile("prod").await;
    assert!(result.is_err(), "{result:?}");
    let doc = r.store().get("prod").await.unwrap().unwrap().doc;
    assert_eq!(doc.status.phase, Phase::Configuring);
    assert!(
        doc.status.instances.iter().all(|e| e.incarnation == 0),
        "nothing was replaced"
    );
    let fleet = doc
        .status
        .conditions
        .iter()
        .find(|c| c.kind == "FleetHealthy")
        .unwrap();
    assert_eq!(
        (fleet.status.as_str(), fleet.reason.as_str()),
        ("False", "TooManyUnhealthy")
    );
    assert_eq!(env.live_instances(&doc.metadata.uid).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_terminated_behind_our_back_is_replaced_from_running() {
    let env = Env::start().await;
    let parts = env.parts("journal", &[]).await;
    let r = &parts.reconciler;
    cli::apply(r.store(), "default", HA).await.unwrap();
    let doc = env.reconcile_until(r, "prod", Phase::Running, 20).await;
    let victim = doc.status.instances[2].instance_id.clone().unwrap();
    let ec2 = &r.cloud().aws().ec2;
    ec2.modify_instance_attribute()
        .instance_id(&victim)
        .disable_api_termination(
            aws_sdk_ec2::types::AttributeBooleanValue::builder()
                .value(false)
                .build(),
        )
        .send()
        .await
        .unwrap();
    ec2.terminate_instances()
        .instance_ids(&victim)
        .send()
        .await
        .unwrap();
    // One pass sees it gone and plans the replacement; provisioning again
    // brings the cluster back to three.
    let outcome = r.reconcile("prod").await.unwrap();
    assert_eq!(outcome.phase, Some(Phase::Provisioning));
    let doc = env.reconcile_until(r, "prod", Phase::Running, 20).await;
    let live = env.live_instances(&doc.metadata.uid).await;
    assert_eq!(live.len(), 3);
    assert!(!live.iter().any(|l| l.id == victim));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unchanged_running_cluster_costs_four_calls_and_no_write() {
    let env = Env::start().await;
    let parts = env.parts("journal", &[]).await;
    let r = &parts.reconciler;
    cli::apply(r.store(), "default", DEV).await.unwrap();
    env.reconcile_until(r, "prod", Phase::Running, 20).await;
    let before = r.store().get("prod").await.unwrap().unwrap().etag;
    env.front.reset_counts();
    let outcome = r.reconcile("prod").await.unwrap();
    assert_eq!(outcome.phase, Some(Phase::Running));
    let counts = env.front.call_counts();
    let total: u64 = counts.iter().map(|(_, _, n)| n).sum();
    // Lock (PutItem), read (GetObject), EC2 state (DescribeInstances),
    // unlock (DeleteItem).
    assert_eq!(total, 4, "{counts:?}");
    assert_eq!(r.store().get("prod").await.unwrap().unwrap().etag, before);
}

//! End to end against moto (EC2, S3, DynamoDB, SSM Parameter Store) behind
//! keel-testkit's AwsFront (SSM commands, faults, call counts).

use crate::support::{Env, HA};
use goman_controller::cli;
use goman_controller::model::Phase;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ha_cluster_reaches_running_with_three_protected_masters() {
    let env = Env::start().await;
    let parts = env.parts("journal-a", &[]).await;
    let r = &parts.reconciler;
    let applied = cli::apply(r.store(), "default", HA).await.unwrap();
    assert_eq!(applied.metadata.generation, 1);
    let doc = env.reconcile_until(r, "prod", Phase::Running, 20).await;
    assert_eq!(doc.status.observed_generation, 1);
    assert_eq!(doc.status.instances.len(), 3);
    assert!(
        doc.status
            .api_endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("https://"))
    );
    let live = env.live_instances(&doc.metadata.uid).await;
    assert_eq!(live.len(), 3, "{live:?}");
    for e in &doc.status.instances {
        assert!(e.k3s_installed && e.ready, "{e:?}");
        let id = e.instance_id.as_deref().unwrap();
        assert!(live.iter().any(|l| l.id == id));
        assert!(
            r.cloud().termination_protection(id).await.unwrap(),
            "{id} unprotected"
        );
        assert_eq!(
            live.iter()
                .find(|l| l.id == id)
                .unwrap()
                .client_token
                .as_deref(),
            Some(e.client_token.as_str())
        );
    }
    // The first master initialises, the others join it; the join token is
    // in no command.
    let token = r
        .cloud()
        .aws()
        .ssm
        .get_parameter()
        .name(r.token_parameter("prod"))
        .with_decryption(true)
        .send()
        .await
        .unwrap()
        .parameter()
        .unwrap()
        .value()
        .unwrap()
        .to_owned();
    let installs: Vec<_> = env
        .front
        .invocations()
        .into_iter()
        .filter(|i| i.comment.contains("install"))
        .collect();
    assert_eq!(installs.len(), 3);
    assert!(installs[0].commands.join("\n").contains("--cluster-init"));
    assert!(
        installs[1..]
            .iter()
            .all(|i| i.commands.join("\n").contains("--server https://"))
    );
    for inv in env.front.invocations() {
        assert!(
            !inv.commands.join("\n").contains(&token),
            "the join token leaked into a command"
        );
    }
    // Every state change went through keel-tx transactions.
    let audit = r.audit("prod");
    assert!(audit.len() >= 5, "{}", audit.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_journal_can_live_in_postgresql_shared_by_controllers() {
    let env = Env::start().await;
    let url = keel_testkit::services::postgres_url();
    // A profile of its own: resources are `cluster/{profile}/{name}`.
    let profile = format!("pg{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let a = env.parts_with_journal(&url, &["--profile", &profile]).await;
    let b = env.parts_with_journal(&url, &["--profile", &profile]).await;
    cli::apply(
        a.reconciler.store(),
        &profile,
        &HA.replace("name: prod", "name: shared"),
    )
    .await
    .unwrap();
    env.reconcile_until(&a.reconciler, "shared", Phase::Running, 20)
        .await;
    // B works on the cluster A provisioned; a controller started now reads
    // both's transactions from the shared journal.
    let doc = env
        .reconcile_until(&b.reconciler, "shared", Phase::Running, 5)
        .await;
    assert_eq!(env.live_instances(&doc.metadata.uid).await.len(), 3);
    let c = env.parts_with_journal(&url, &["--profile", &profile]).await;
    let audit = c.reconciler.audit("shared");
    assert!(audit.len() >= 5, "{}", audit.len());
}

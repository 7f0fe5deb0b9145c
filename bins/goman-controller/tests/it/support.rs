//! Shared set-up: moto behind keel-testkit's `AwsFront` (SSM commands,
//! faults, counts), a state bucket and lock table, and a configuration with
//! test timings.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::time::Duration;

use clap::Parser;
use goman_controller::app::{self, Parts};
use goman_controller::aws::AwsSettings;
use goman_controller::cloud::{Ec2Instance, tags};
use goman_controller::config::Config;
use goman_controller::metrics::Metrics;
use goman_controller::model::{ClusterResource, Phase};
use goman_controller::reconcile::Reconciler;
use keel_testkit::Moto;
use keel_testkit::fakes::aws::{AwsFront, CommandResult};

pub const BUCKET: &str = "goman-state-test";
pub const TABLE: &str = "goman-resource-locks";
pub const AMI: &str = "ami-03cf127a";

pub const HA: &str = "apiVersion: goman.io/v1\nkind: Cluster\nmetadata:\n  name: prod\nspec:\n  region: us-east-1\n  instanceType: t3.medium\n  masterCount: 3\n  mode: ha\n  k3sVersion: v1.31.4+k3s1\n  tags:\n    team: platform\n";
pub const DEV: &str = "apiVersion: goman.io/v1\nkind: Cluster\nmetadata:\n  name: prod\nspec:\n  region: us-east-1\n  instanceType: t3.medium\n  masterCount: 1\n  mode: developer\n  k3sVersion: v1.31.4+k3s1\n  tags:\n    team: platform\n";

pub struct Env {
    pub moto: Moto,
    pub front: AwsFront,
    pub dir: tempfile::TempDir,
}

/// Every node answers the status command with `True`; installs succeed.
pub fn healthy_nodes(front: &AwsFront) {
    front.set_command_handler(|inv| {
        if inv.commands.iter().any(|c| c.contains("get node")) {
            CommandResult::success("True")
        } else {
            CommandResult::success("")
        }
    });
}

impl Env {
    pub async fn start() -> Env {
        keel_testkit::init_test_tracing();
        let moto = Moto::start().await;
        let front = AwsFront::start(moto.url(), 7).await.unwrap();
        healthy_nodes(&front);
        let env = Env {
            moto,
            front,
            dir: tempfile::tempdir().unwrap(),
        };
        let (aws, _) =
            app::connect_with(&env.aws_settings(&env.config(&[])), Metrics::unregistered())
                .await
                .unwrap();
        app::init(&aws, BUCKET, TABLE).await.unwrap();
        env
    }

    /// Arguments shared by the in-process config and the binary.
    pub fn args(&self) -> Vec<String> {
        [
            "--state-bucket",
            BUCKET,
            "--endpoint",
            &self.front.url(),
            "--region",
            "us-east-1",
            "--state-dir",
            self.dir.path().to_str().unwrap(),
            "--ami",
            AMI,
            "--poll-interval",
            "20ms",
            "--retry-base-delay",
            "10ms",
            "--throttle-base-delay",
            "20ms",
            "--requeue-scale",
            "0.01",
            "--lock-ttl",
            "5s",
            "--node-startup-timeout",
            "2s",
            "--reconcile-timeout",
            "60s",
            "--aws-attempt-timeout",
            "5s",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// The default arguments, overridden by `extra` (`--flag value` pairs).
    pub fn args_with(&self, extra: &[&str]) -> Vec<String> {
        let defaults = self.args();
        let mut out = Vec::new();
        for pair in defaults.chunks(2) {
            if !extra.contains(&pair[0].as_str()) {
                out.extend_from_slice(pair);
            }
        }
        out.extend(extra.iter().map(|s| (*s).to_owned()));
        out
    }

    pub fn config(&self, extra: &[&str]) -> Config {
        let mut args = vec!["goman-controller".to_owned()];
        args.extend(self.args_with(extra));
        args.push("run".to_owned());
        Config::try_parse_from(args).unwrap()
    }

    pub fn aws_settings(&self, config: &Config) -> AwsSettings {
        let mut s = app::aws_settings(config);
        s.static_credentials = Some(("test".into(), "test".into()));
        s
    }

    /// A reconciler with its own journal directory `journal`.
    pub async fn parts(&self, journal: &str, extra: &[&str]) -> Parts {
        let journal = self.dir.path().join(journal);
        let mut all = vec!["--journal", journal.to_str().unwrap()];
        all.extend_from_slice(extra);
        let config = self.config(&all);
        app::build_with(
            &config,
            &self.aws_settings(&config),
            Metrics::unregistered(),
        )
        .await
        .unwrap()
    }

    /// A reconciler over the journal at `journal` (a directory or URL).
    pub async fn parts_with_journal(&self, journal: &str, extra: &[&str]) -> Parts {
        let mut all = vec!["--journal", journal];
        all.extend_from_slice(extra);
        let config = self.config(&all);
        app::build_with(
            &config,
            &self.aws_settings(&config),
            Metrics::unregistered(),
        )
        .await
        .unwrap()
    }

    /// A reconciler whose breakers open for `open_for` instead of the AWS
    /// presets' 10 to 45 s (thresholds and bulkheads unchanged).
    pub async fn parts_with_short_breakers(
        &self,
        journal: &str,
        open_for: Duration,
        extra: &[&str],
    ) -> Parts {
        use keel::breaker::{BreakerConfig, BreakerRegistry, presets};
        let journal = self.dir.path().join(journal);
        let mut all = vec!["--journal", journal.to_str().unwrap()];
        all.extend_from_slice(extra);
        let config = self.config(&all);
        let breakers = BreakerRegistry::with_aws_presets();
        for (name, preset) in [
            (presets::EC2, BreakerConfig::aws_ec2()),
            (presets::S3, BreakerConfig::aws_s3()),
            (presets::SSM, BreakerConfig::aws_ssm()),
            (presets::DYNAMODB, BreakerConfig::aws_dynamodb()),
        ] {
            breakers.configure(
                name,
                preset.to_builder().open_duration(open_for).build().unwrap(),
            );
        }
        app::build_with_breakers(
            &config,
            &self.aws_settings(&config),
            breakers,
            Metrics::unregistered(),
        )
        .await
        .unwrap()
    }

    /// Runs passes until `phase` (or panics after `max` passes).
    pub async fn reconcile_until(
        &self,
        r: &Reconciler,
        name: &str,
        phase: Phase,
        max: usize,
    ) -> ClusterResource {
        let mut last = None;
        for _ in 0..max {
            match r.reconcile(name).await {
                Ok(o) if o.phase == Some(phase) => {
                    return r.store().get(name).await.unwrap().unwrap().doc;
                }
                Ok(o) => last = Some(format!("{o:?}")),
                Err(e) => last = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{name} did not reach {phase} in {max} passes; last: {last:?}");
    }

    /// Live (not terminated) instances of cluster uid `uid`, straight from
    /// moto (not through the front).
    pub async fn live_instances(&self, uid: &str) -> Vec<Ec2Instance> {
        let config = self.config(&[]);
        let mut settings = self.aws_settings(&config);
        settings.endpoint = Some(self.moto.url().to_owned());
        let (aws, _) = app::connect_with(&settings, Metrics::unregistered())
            .await
            .unwrap();
        let cloud = goman_controller::cloud::Cloud::new(aws, Default::default());
        cloud
            .find_tagged(tags::CLUSTER_UID, uid)
            .await
            .unwrap()
            .into_iter()
            .filter(Ec2Instance::is_live)
            .collect()
    }
}

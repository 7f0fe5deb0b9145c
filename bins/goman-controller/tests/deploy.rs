//! `deploy/goman-controller` stays true to the program: the alert rules pass
//! `promtool check rules` and their unit test; every metric the rules and
//! the Grafana dashboard query is one the daemon exposes; every variable the
//! Deployment and the Dockerfile set is one the program reads, with a value
//! it accepts; the controller's IAM policy grants every AWS operation the
//! code calls.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use goman_controller::config::Config;
use goman_controller::metrics::Metrics;
use keel_breaker::BreakerRegistry;
use keel_breaker::presets;
use keel_telemetry::Program;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_yaml::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/goman-controller")
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn documents(file: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&read(file))
        .map(|d| Value::deserialize(d).expect("YAML"))
        .collect()
}

/// Every AWS operation `src/` calls, as IAM names it (`ListObjectsV2` is
/// `s3:ListBucket`, `HeadObject` would be `s3:GetObject`; the tags of
/// `RunInstances` need `ec2:CreateTags`). `init`'s `CreateBucket` and
/// `CreateTable` are left out: they are an administrator's one-time set-up,
/// not the controller's.
const OPERATIONS: &[(&str, &str)] = &[
    ("ec2", "RunInstances"),
    ("ec2", "DescribeInstances"),
    ("ec2", "StartInstances"),
    ("ec2", "StopInstances"),
    ("ec2", "TerminateInstances"),
    ("ec2", "RebootInstances"),
    ("ec2", "ModifyInstanceAttribute"),
    ("ec2", "DescribeInstanceAttribute"),
    ("ec2", "CreateTags"),
    ("ssm", "SendCommand"),
    ("ssm", "GetCommandInvocation"),
    ("ssm", "PutParameter"),
    ("ssm", "GetParameter"),
    ("ssm", "DeleteParameter"),
    ("s3", "GetObject"),
    ("s3", "PutObject"),
    ("s3", "DeleteObject"),
    ("s3", "ListBucket"),
    ("dynamodb", "PutItem"),
    ("dynamodb", "UpdateItem"),
    ("dynamodb", "DeleteItem"),
];

#[test]
fn rules_pass_promtool() {
    let dir = deploy().join("prometheus");
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts_test.yaml"],
    ] {
        match Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
        {
            Ok(out) => assert!(
                out.status.success(),
                "promtool {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(_) => eprintln!("skipped: promtool is not installed"),
        }
    }
}

/// The names the daemon's `/metrics` holds once each family has a
/// sample: the controller's metrics and the breaker registry's, under the
/// prefix `goman` (as `Config::metrics_prefix` gives the kit).
fn exposed() -> BTreeSet<String> {
    let mut registry = Registry::with_prefix("goman");
    let metrics = Metrics::register(&mut registry);
    let took = Duration::from_millis(12);
    metrics.reconcile("web", "Running", "Running", "ok", took);
    metrics.transition("Pending", "Provisioning");
    metrics.set_clusters(&[("web".to_owned(), "Running", 60.0)]);
    metrics.aws_call("ec2", "DescribeInstances", "ok", took);
    metrics.aws_retry("ec2", "throttled");
    metrics.lock_op("acquire", "ok");
    metrics.state_write("ok");
    metrics.ssm_command("install", "Success");
    metrics.ssm_fanout("install", took, 3, true);
    metrics.batch_call("stop");
    metrics.instance_created();
    metrics.replacement("startup_timeout");
    metrics.short_circuit();
    let breakers = BreakerRegistry::with_aws_presets();
    for name in [presets::EC2, presets::S3, presets::SSM, presets::DYNAMODB] {
        let _breaker = breakers.get(name);
    }
    breakers.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
    // Sample names (`..._total`, `..._bucket`) and family names (a
    // description may name a histogram by its family).
    text.lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(family) => family.split(' ').next(),
            None if l.starts_with('#') || l.is_empty() => None,
            None => l.split(['{', ' ']).next(),
        })
        .map(str::to_owned)
        .collect()
}

/// Every `goman_...` name in `text`.
fn used(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("goman_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // `x_goman_...` is another name; `goman_` inside a word is not ours.
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn rules_and_dashboard_use_exposed_metrics_only() {
    let exposed = exposed();
    // The breaker collector's families are there (not only the
    // controller's), under the same prefix.
    for name in [
        "goman_reconcile_total",
        "goman_breaker_state",
        "goman_bulkhead_in_flight_calls",
    ] {
        assert!(exposed.contains(name), "{name} missing from {exposed:#?}");
    }
    let dashboard = read("grafana/goman-controller.json");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 8));
    for (file, text) in [
        ("prometheus/alerts.yaml", read("prometheus/alerts.yaml")),
        ("grafana/goman-controller.json", dashboard),
    ] {
        let names = used(&text);
        assert!(names.len() >= 5, "{file}: only {names:?}");
        for name in names {
            assert!(
                exposed.contains(&name),
                "{file} uses {name}, which goman-controller does not expose; it exposes {exposed:#?}"
            );
        }
    }
}

#[test]
fn the_alert_test_feeds_exposed_metrics_only() {
    // A unit test over a series the program never produces would pass
    // while the real alert never fires.
    let exposed = exposed();
    for name in used(&read("prometheus/alerts_test.yaml")) {
        assert!(exposed.contains(&name), "alerts_test.yaml feeds {name}");
    }
}

/// Variable name → the long flag of the argument that reads it.
fn variables() -> Vec<(String, String)> {
    Config::command()
        .get_arguments()
        .filter_map(|a| {
            Some((
                a.get_env()?.to_string_lossy().into_owned(),
                a.get_long()?.to_owned(),
            ))
        })
        .collect()
}

fn flag_for(variables: &[(String, String)], name: &str, file: &str) -> String {
    variables
        .iter()
        .find(|(env, _)| env == name)
        .map(|(_, long)| format!("--{long}"))
        .unwrap_or_else(|| panic!("{file} sets {name}, which goman-controller does not read"))
}

/// Parses and validates `pairs` as the program would read them from its
/// environment (as flags: the same arguments; tests cannot set variables).
fn accepts(pairs: &[(String, String)], file: &str) {
    let variables = variables();
    let mut args = vec!["goman-controller".to_owned()];
    for (name, value) in pairs {
        args.push(flag_for(&variables, name, file));
        // The placeholder is upper case, which no bucket name can be.
        args.push(value.replace("CHANGE-ME-", "change-me-"));
    }
    args.push("run".to_owned());
    let config = Config::try_parse_from(&args).unwrap_or_else(|e| panic!("{file}: {args:?}: {e}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("{file}: {args:?}: {e}"));
}

#[test]
fn deployment_variables_are_read_by_the_program() {
    let docs = documents("kubernetes/deployment.yaml");
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("Deployment");
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    let mut pairs = Vec::new();
    for container in containers {
        for var in container["env"].as_sequence().expect("env") {
            let name = var["name"].as_str().expect("name").to_owned();
            let value = match &var["value"] {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("{name}: {other:?} is not a literal value"),
            };
            pairs.push((name, value));
        }
    }
    assert!(pairs.len() >= 8, "{pairs:?}");
    accepts(&pairs, "kubernetes/deployment.yaml");
    // Variables offered commented out must exist too.
    let variables = variables();
    for line in read("kubernetes/deployment.yaml").lines() {
        if let Some(name) = line.trim().strip_prefix("# - name: ") {
            flag_for(
                &variables,
                name.trim(),
                "kubernetes/deployment.yaml (commented)",
            );
        }
    }
}

#[test]
fn dockerfile_variables_are_read_by_the_program() {
    let text = read("Dockerfile");
    let mut pairs = Vec::new();
    let mut in_env = false;
    for line in text.lines() {
        let line = line.trim();
        let body = match line.strip_prefix("ENV ") {
            Some(body) => body,
            None if in_env => line,
            None => continue,
        };
        in_env = body.ends_with('\\');
        for pair in body.trim_end_matches('\\').split_whitespace() {
            let (name, value) = pair.split_once('=').expect("ENV NAME=value");
            pairs.push((name.to_owned(), value.to_owned()));
        }
    }
    assert!(!pairs.is_empty(), "the Dockerfile sets no variable");
    accepts(&pairs, "Dockerfile");
    assert!(
        text.contains(r#"ENTRYPOINT ["/usr/local/bin/goman-controller", "run"]"#),
        "the image must start the daemon"
    );
}

#[test]
fn iam_policy_grants_every_operation_the_code_calls() {
    let policy: serde_json::Value =
        serde_json::from_str(&read("iam/controller-policy.json")).expect("policy JSON");
    assert_eq!(policy["Version"], "2012-10-17");
    let mut granted = BTreeSet::new();
    for statement in policy["Statement"].as_array().expect("statements") {
        assert_eq!(statement["Effect"], "Allow", "{statement}");
        assert!(statement["Resource"].is_string() || statement["Resource"].is_array());
        match &statement["Action"] {
            serde_json::Value::String(a) => {
                granted.insert(a.clone());
            }
            serde_json::Value::Array(all) => {
                granted.extend(all.iter().map(|a| a.as_str().expect("action").to_owned()));
            }
            other => panic!("Action {other}"),
        }
    }
    assert!(
        !granted.iter().any(|a| a.contains('*')),
        "wildcard actions: {granted:?}"
    );
    for (service, operation) in OPERATIONS {
        let action = format!("{service}:{operation}");
        assert!(granted.contains(&action), "{action} is not granted");
    }
    // Nodes get an instance profile: EC2 must be allowed to take the role.
    assert!(granted.contains("iam:PassRole"));
    let nodes: serde_json::Value =
        serde_json::from_str(&read("iam/node-policy.json")).expect("node policy JSON");
    assert!(nodes["Statement"].as_array().is_some_and(|s| !s.is_empty()));
}

#[test]
fn lock_table_matches_the_key_the_code_uses() {
    let table: serde_json::Value =
        serde_json::from_str(&read("dynamodb/locks-table.json")).expect("table JSON");
    assert_eq!(table["TableName"], "goman-resource-locks");
    assert_eq!(table["KeySchema"][0]["AttributeName"], "resource_id");
    assert_eq!(table["KeySchema"][0]["KeyType"], "HASH");
    let default_table = Config::try_parse_from(["goman-controller", "run"])
        .expect("defaults parse")
        .lock_table;
    assert_eq!(table["TableName"], default_table.as_str());
}

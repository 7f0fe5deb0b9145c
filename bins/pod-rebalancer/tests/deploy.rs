//! `deploy/pod-rebalancer` stays valid: the alert rules pass `promtool
//! check rules` and their unit test and use only metrics the program
//! pushes, as does the Grafana dashboard; the CronJob forbids overlapping runs; RBAC grants what the
//! program calls; every ConfigMap key is a variable the program reads.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use pod_rebalancer::Config;
use serde::Deserialize;
use serde_yaml::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/pod-rebalancer")
}

fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy().join(file)).expect("readable");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("YAML"))
        .collect()
}

#[test]
fn rules_pass_promtool() {
    let dir = deploy().join("prometheus");
    for args in [
        ["check", "rules", "rules.yml"],
        ["test", "rules", "alerts_test.yml"],
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

#[test]
fn rules_and_dashboard_use_pushed_metrics_only() {
    let rules = std::fs::read_to_string(deploy().join("prometheus/rules.yml")).expect("rules");
    let dashboard =
        std::fs::read_to_string(deploy().join("grafana/pod-rebalancer.json")).expect("dashboard");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 4));
    let text = format!("{rules}\n{dashboard}");
    let pushed = [
        "rebalancer_executions_total",
        "rebalancer_pods_analyzed_total",
        "rebalancer_pods_deleted_total",
        "rebalancer_execution_duration_seconds",
        "rebalancer_load_variance_current",
    ];
    let mut rest = text.as_str();
    while let Some(at) = rest.find("rebalancer_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        assert!(
            pushed.contains(&&tail[..end]),
            "{} is not pushed",
            &tail[..end]
        );
        rest = &tail[end..];
    }
}

#[test]
fn cronjob_forbids_overlap_and_rbac_covers_the_calls() {
    let cron = &documents("kubernetes/cronjob.yaml")[0];
    assert_eq!(cron["kind"], "CronJob");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    let rbac = documents("kubernetes/rbac.yaml");
    let role = rbac.iter().find(|d| d["kind"] == "Role").expect("Role");
    let grants = |group: &str, resource: &str, verb: &str| {
        role["rules"].as_sequence().expect("rules").iter().any(|r| {
            let has = |key: &str, v: &str| {
                r[key]
                    .as_sequence()
                    .is_some_and(|s| s.iter().any(|x| x == v))
            };
            has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
        })
    };
    for (group, resource, verb) in [
        ("", "pods", "list"),
        ("", "pods", "get"),
        ("", "pods", "watch"),
        ("", "pods/eviction", "create"),
        ("", "pods", "delete"),
        ("apps", "deployments", "get"),
        ("apps", "deployments", "patch"),
        ("autoscaling", "horizontalpodautoscalers", "get"),
        ("", "events", "create"),
    ] {
        assert!(grants(group, resource, verb), "{group}/{resource} {verb}");
    }
}

#[test]
fn configmap_keys_are_program_variables() {
    let command = Config::command();
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    let map = &documents("kubernetes/configmap.yaml")[0];
    let data = map["data"].as_mapping().expect("data");
    assert!(data.len() > 10);
    for key in data.keys() {
        let key = key.as_str().expect("string key");
        assert!(
            known.iter().any(|k| k == key),
            "{key} is not read by pod-rebalancer"
        );
    }
}

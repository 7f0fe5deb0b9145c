//! The binary's configuration errors: exit 64 naming the variable.

mod support;

use support::*;

fn run(env: &[(&str, &str)]) -> std::process::Output {
    run_with(env, true)
}

fn run_with(env: &[(&str, &str)], check: bool) -> std::process::Output {
    let mut c = std::process::Command::new(SUPERVISOR);
    c.env_clear();
    if check {
        c.arg("--check-config");
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("runs")
}

#[test]
fn invalid_configuration_exits_64_naming_the_variable() {
    let lab = Lab::new();
    for (env, variable) in [
        (vec![("HEALTH_INTERVAL", "soon")], "HEALTH_INTERVAL"),
        (vec![("FAILURE_THRESHOLD", "0")], "FAILURE_THRESHOLD"),
        (vec![("DATABASE_URL", "mysql://db")], "DATABASE_URL"),
        (
            vec![("SUPERVISOR_CONFIG", "/nonexistent/vm-supervisor.yaml")],
            "SUPERVISOR_CONFIG",
        ),
    ] {
        let out = run(&env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{env:?}: {stderr}");
        assert!(stderr.contains(variable), "{env:?}: {stderr}");
    }
    // A bad field in the file names the file's field.
    std::fs::write(
        lab.config_path(),
        "vms:\n  - {id: 'a b', command: /bin/x, socket: /tmp/s}\n",
    )
    .unwrap();
    let path = lab.config_path();
    let out = run(&[("SUPERVISOR_CONFIG", path.to_str().unwrap())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("vms[0].id"), "{stderr}");
    // The same file at a real start (not --check-config): 64 too.
    let db = format!("sqlite://{}", lab.path().join("r.db").display());
    let out = run_with(
        &[
            ("SUPERVISOR_CONFIG", path.to_str().unwrap()),
            ("DATABASE_URL", &db),
            ("ADMIN_ADDR", "127.0.0.1:0"),
        ],
        false,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("SUPERVISOR_CONFIG") && stderr.contains("vms[0].id"),
        "{stderr}"
    );
    // A good one passes.
    lab.write_config(&[lab.vm_yaml("ok", &[], "")]);
    let out = run(&[("SUPERVISOR_CONFIG", path.to_str().unwrap())]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

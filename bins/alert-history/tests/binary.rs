//! The built binary: configuration errors exit 64 naming the variable,
//! `--check-config` validates, SIGTERM drains and exits 0.

use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_alert-history");

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    // Configuration errors go to stderr, log lines (start-up failures) to
    // the log target: both are read.
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ),
    )
}

#[test]
fn invalid_configuration_exits_64_naming_the_variable() {
    for (var, value) in [
        ("RETENTION_DAYS", "0"),
        ("RETENTION_DAYS", "ninety"),
        ("LISTEN_ADDR", "not-an-address"),
        ("DATABASE_URL", "mysql://db/x"),
        ("MAX_BODY_BYTES", "12"),
        ("LOG_FORMAT", "xml"),
        ("DATABASE_URL", "postgres://u:p@[bad/x"),
        ("DATABASE_URL", "sqlite:///dev/null/history.db"),
        ("API_TOKEN_FOR_READS", "true"),
        ("BODY_READ_TIMEOUT_SECONDS", "0"),
        ("SQLITE_SYNCHRONOUS", "sometimes"),
    ] {
        let (code, stderr) = run(&["--check-config"], &[(var, value)]);
        assert_eq!(code, 64, "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
    }
    let (code, stderr) = run(&["--check-config"], &[("RETENTION_DAYS", "-1")]);
    assert_eq!(code, 64);
    assert!(
        stderr.contains("1..=36500") && !stderr.contains("4294967295"),
        "{stderr}"
    );
    let (_, stderr) = run(
        &["--check-config"],
        &[("DATABASE_URL", "sqlite:///dev/null/history.db")],
    );
    assert!(stderr.contains("/dev/null"), "names the path: {stderr}");
}

#[test]
fn start_up_errors_name_the_database() {
    // Nothing listens on port 1: refused at once, not a pool timeout.
    let started = tokio::time::Instant::now();
    let (code, stderr) = run(
        &[],
        &[
            ("DATABASE_URL", "postgres://u@127.0.0.1:1/alerts"),
            ("LISTEN_ADDR", "127.0.0.1:0"),
        ],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("DATABASE_URL") && stderr.contains("127.0.0.1:1/alerts"),
        "{stderr}"
    );
    assert!(!stderr.contains("PoolTimedOut"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(8), "{stderr}");
    // A path that cannot be created names the path, not `SqliteError`.
    let (code, stderr) = run(
        &[],
        &[
            ("DATABASE_URL", "sqlite:///dev/null/h.db"),
            ("LISTEN_ADDR", "127.0.0.1:0"),
        ],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("DATABASE_URL") && stderr.contains("/dev/null/h.db"),
        "{stderr}"
    );
    assert!(!stderr.contains("code: 14"), "{stderr}");
    // A missing directory is created; the database opens in it.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("a/b/h.db").display());
    let (code, stderr) = run(
        &[],
        &[("DATABASE_URL", &url), ("LISTEN_ADDR", "192.0.2.1:8080")],
    );
    assert_ne!(code, 0);
    assert!(dir.path().join("a/b/h.db").exists(), "{stderr}");
    assert!(
        stderr.contains("LISTEN_ADDR") && stderr.contains("192.0.2.1:8080"),
        "{stderr}"
    );
}

#[test]
fn check_config_accepts_valid_configuration() {
    let (code, stderr) = run(
        &["--check-config"],
        &[
            ("DATABASE_URL", "postgres://u@127.0.0.1/db"),
            ("RETENTION_DAYS", "7"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("sqlite://{}", dir.path().join("h.db").display());
    let mut child = tokio::process::Command::new(BIN)
        .env("DATABASE_URL", &url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "service never became ready");
    let body = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/webhook-firing.json"
    ))
    .unwrap();
    let r = client
        .post(format!("{base}/webhook"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(12), child.wait())
        .await
        .expect("exits within the 10 s drain")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        client.get(format!("{base}/healthz")).send().await.is_err(),
        "stopped listening"
    );
}

//! `run` end to end: the `kit_program` example (built by `cargo test`) is
//! started with good and bad configurations, signalled, and made to fail in
//! each documented way; the exit status, stderr and the admin routes are
//! checked.
#![allow(clippy::disallowed_types)] // Wall time is the point: a bound on a real process.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The example's path, built on first use when `cargo test` was asked for
/// this test target alone (a plain `cargo test` builds the examples).
fn example() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        // target/<profile>/deps/run-<hash> → target/<profile>/examples/
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().and_then(|d| d.parent()).unwrap();
        let path = dir.join("examples").join("kit_program");
        if !path.exists() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "keel-telemetry", "--example", "kit_program"])
                .status()
                .unwrap();
            assert!(status.success(), "building the kit_program example failed");
        }
        assert!(path.exists(), "{} is missing", path.display());
        path
    })
}

fn program() -> Command {
    let mut command = Command::new(example());
    command.env_clear().env("RUST_LOG", "info");
    command
}

fn output(command: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn invalid_values_exit_64_naming_the_variable() {
    for (var, value) in [
        ("WORKERS", "0"),    // Program::validate
        ("WORKERS", "many"), // clap: not a number
        ("UPSTREAM_URL", "ftp://x"),
        ("ADMIN_ADDR", "nowhere"), // clap: not an address
        ("LOG_FORMAT", "xml"),     // LogArgs (clap value enum)
        ("RUST_LOG", "keel=loud"), // LogArgs::config
        ("TOKEN", "   x   y"),     // fine: not blank
    ] {
        let (code, stdout, stderr) = output(program().env(var, value).arg("--check-config"));
        if var == "TOKEN" {
            assert_eq!(code, 0, "{stderr}");
            continue;
        }
        assert_eq!(code, 64, "{var}={value}: {stdout}{stderr}");
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
    }
    // The same checks run at a normal start, before anything else.
    let (code, stdout, stderr) = output(program().env("WORKERS", "100"));
    assert_eq!(code, 64);
    assert!(
        stderr.contains("kit-program: invalid `WORKERS`: must be within 1..=64"),
        "{stderr}"
    );
    assert!(!stdout.contains("READY"), "{stdout}");
}

#[test]
fn blank_variables_count_as_unset() {
    // TOKEN="" would fail validate() if it reached the program as Some("").
    let (code, _, stderr) = output(
        program()
            .env("TOKEN", "")
            .env("WORKERS", " ")
            .env("LOG_FORMAT", "")
            .env("ADMIN_ADDR", "")
            .arg("--check-config"),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("kit-program: configuration is valid"),
        "{stderr}"
    );
}

#[test]
fn check_config_checks_what_it_can_without_side_effects() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let (code, _, stderr) = output(program().env("STATE_FILE", &state).arg("--check-config"));
    assert_eq!(code, 0, "{stderr}");
    assert!(!state.exists(), "--check-config created the file");
    let missing = dir.path().join("no-such-dir").join("state.json");
    let (code, _, stderr) = output(program().env("STATE_FILE", &missing).arg("--check-config"));
    assert_eq!(code, 64);
    assert!(stderr.contains("invalid `STATE_FILE`"), "{stderr}");
    // check() is for --check-config only: a normal start does not run it
    // (the program meets the same conditions when it writes the file).
    let (code, _, _) = output(
        program()
            .env("STATE_FILE", &missing)
            .env("BEHAVIOUR", "done"),
    );
    assert_eq!(code, 0);
}

#[test]
fn help_lists_every_variable_including_the_kit_ones() {
    let (code, stdout, _) = output(program().arg("--help"));
    assert_eq!(code, 0);
    for var in [
        "ADMIN_ADDR",
        "UPSTREAM_URL",
        "WORKERS",
        "TOKEN",
        "STATE_FILE",
        "RUST_LOG",
        "LOG_FORMAT",
        "--check-config",
    ] {
        assert!(stdout.contains(var), "{var} missing from\n{stdout}");
    }
    assert!(
        stdout.starts_with("A tiny program that ticks until told to stop"),
        "the program's own about comes first:\n{stdout}"
    );
    let (code, stdout, _) = output(program().arg("--version"));
    assert_eq!(code, 0);
    assert!(stdout.starts_with("kit-program "), "{stdout}");
}

/// Starts the program and waits for its READY line; returns the admin
/// address (empty without one) and the rest of stdout.
fn start(
    command: &mut Command,
) -> (
    Child,
    String,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the program exited before it was ready")
            .unwrap();
        if let Some(addr) = line.strip_prefix("READY ") {
            break addr.trim().to_owned();
        }
    };
    (child, addr, lines)
}

fn wait(child: &mut Child, within: Duration) -> i32 {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if started.elapsed() > within {
            let _ = child.kill();
            panic!("the program did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(
        &mut stream,
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn serves_admin_routes_and_sigterm_drains_and_exits_zero() {
    let (mut child, addr, mut lines) = start(
        program()
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json"),
    );
    assert!(http_get(&addr, "/healthz").contains(r#"{"status":"ok"}"#));
    assert!(http_get(&addr, "/readyz").starts_with("HTTP/1.1 200"));
    assert!(http_get(&addr, "/status").ends_with("ticking"));
    // The program's prefix is its name.
    let metrics = http_get(&addr, "/metrics");
    assert!(metrics.contains("kit_program_ticks_total"), "{metrics}");

    let sent = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait(&mut child, Duration::from_secs(5)), 0);
    assert!(sent.elapsed() < Duration::from_secs(2));
    let rest: Vec<String> = lines.by_ref().map(Result::unwrap).collect();
    assert!(rest.iter().any(|l| l == "STOPPING"), "{rest:?}");
    // JSON logs, one object per line, with the exit code as a number.
    let stopped = rest
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "kit-program stopped")
        .unwrap_or_else(|| panic!("no stop line in {rest:?}"));
    assert_eq!(stopped["exit"], 0);
    assert!(std::net::TcpStream::connect(&addr).is_err());
}

#[test]
fn sigint_stops_a_program_without_an_admin_server() {
    let (mut child, addr, _) = start(&mut program());
    assert!(addr.is_empty());
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    assert_eq!(wait(&mut child, Duration::from_secs(5)), 0);
}

#[test]
fn sighup_never_ends_a_program_and_is_logged_as_ignored() {
    let (mut child, addr, mut lines) = start(
        program()
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json"),
    );
    for _ in 0..2 {
        kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP's default action ended the program"
    );
    assert!(http_get(&addr, "/healthz").contains(r#"{"status":"ok"}"#));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait(&mut child, Duration::from_secs(5)), 0);
    let rest: Vec<String> = lines.by_ref().map(Result::unwrap).collect();
    let ignored = rest
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("SIGHUP ignored"))
        })
        .count();
    assert_eq!(ignored, 2, "{rest:?}");
}

#[test]
fn how_the_program_ends_decides_the_exit_code() {
    for (behaviour, expected, stderr_has) in [
        ("done", 0, None),
        ("fail", 1, None),
        (
            "config",
            64,
            Some("kit-program: invalid `UPSTREAM_URL`: answered 404 at start"),
        ),
        ("panic", 1, None),
    ] {
        let mut command = program();
        command.env("BEHAVIOUR", behaviour);
        let (mut child, _, _) = start(&mut command);
        assert_eq!(
            wait(&mut child, Duration::from_secs(5)),
            expected,
            "{behaviour}"
        );
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        if let Some(needle) = stderr_has {
            assert!(stderr.contains(needle), "{behaviour}: {stderr}");
        }
    }
}

#[test]
fn a_program_that_ignores_the_stop_is_cut_off_at_the_drain_bound() {
    let (mut child, _, _) = start(program().env("BEHAVIOUR", "hang"));
    let sent = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    // The example's drain bound is 2 s.
    assert_eq!(wait(&mut child, Duration::from_secs(6)), 1);
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

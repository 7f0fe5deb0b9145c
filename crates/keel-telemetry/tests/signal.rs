//! SIGTERM and SIGINT with a real child process: the test re-executes its own
//! binary in "child mode", where it runs a small program (admin server, one
//! in-flight job, `Shutdown::signal`, bounded drain); the parent sends the
//! signal and checks the child exits 0 within the bound having finished its
//! work.
#![allow(clippy::disallowed_types)] // Wall time is the point: a bound on a real process.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_telemetry::{AdminState, HttpServer, MetricsRegistry, Shutdown, router};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const CHILD_ENV: &str = "KEEL_TELEMETRY_SIGNAL_CHILD";

#[test]
fn sigterm_drains_and_exits_zero() {
    run("sigterm_drains_and_exits_zero", Signal::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_drains_and_exits_zero() {
    run("sigint_drains_and_exits_zero", Signal::SIGINT, "SIGINT");
}

fn run(test_name: &str, signal: Signal, expected_reason: &str) {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_main();
    }
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("child exited before it was ready")
            .unwrap();
        // libtest may print "test name ... " on the same line first.
        if let Some((_, addr)) = line.split_once("READY ") {
            break addr.trim().to_owned();
        }
    };

    // The child's admin server is up.
    let health = std::net::TcpStream::connect(&addr).map(|mut s| {
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        std::io::Read::read_to_string(&mut s, &mut body).unwrap();
        body
    });
    assert!(health.unwrap().contains(r#"{"status":"ok"}"#));

    let sent = Instant::now();
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("child did not exit within the drain bound");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "child exited with {status}");
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let report = rest
        .iter()
        .find_map(|l| l.split_once("REPORT ").map(|(_, r)| r.trim()))
        .unwrap_or_else(|| panic!("no report in {rest:?}"));
    // The job (and maybe the admin server, if it had not already stopped
    // before the drain began) finished during the drain; nothing abandoned.
    let fields: Vec<&str> = report.split(' ').collect();
    assert_eq!(fields[0], format!("reason={expected_reason}"), "{report}");
    assert!(
        matches!(fields[1], "completed=1" | "completed=2"),
        "{report}"
    );
    assert_eq!(fields[2..], ["abandoned=0", "job=finished"], "{report}");
    // The admin port is closed after exit.
    assert!(std::net::TcpStream::connect(&addr).is_err());
}

/// The "program" run in the child process. Never returns.
fn child_main() -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let code = runtime.block_on(async {
        let shutdown = Shutdown::new();
        let state = AdminState::builder(MetricsRegistry::new("child").unwrap())
            .shutdown(shutdown.clone())
            .build()
            .unwrap();
        let server = HttpServer::bind("127.0.0.1:0".parse().unwrap(), router(state), &shutdown)
            .await
            .unwrap();
        // A job that notices shutdown and needs a moment to hand back its
        // work: the drain must wait for it.
        let token = shutdown.token();
        let job = shutdown.spawn(async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            "finished"
        });
        // Handlers are installed before READY is printed.
        let signal = shutdown.signal();
        say(&format!("READY {}", server.local_addr()));
        let reason = signal.await.unwrap();
        let report = shutdown.drain(Duration::from_secs(10)).await;
        let job = job.await.unwrap();
        server.wait().await.unwrap();
        say(&format!(
            "REPORT reason={reason} completed={} abandoned={} job={job}",
            report.completed, report.abandoned
        ));
        i32::from(!report.is_clean())
    });
    drop(runtime);
    std::process::exit(code)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

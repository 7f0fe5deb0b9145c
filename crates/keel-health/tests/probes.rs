//! Stock probes against real sockets, real Unix sockets and real child
//! processes (real time; nothing here proves a timing).

mod support;

use std::time::Duration;

use keel_health::{
    FailureKind, HttpProbe, Probe, ProbeFailure, ProcessProbe, SocketFileProbe, StatusCode,
    TcpProbe, UnixHttpProbe, all_of, probe_fn,
};
use support::Responder;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UnixListener};

async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
    // dropped here: nothing listens on the port any more
}

#[tokio::test]
async fn tcp_connect_succeeds_on_a_listener_and_is_refused_without_one() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    TcpProbe::new("127.0.0.1", port).check().await.unwrap();
    TcpProbe::from_addr(listener.local_addr().unwrap())
        .check()
        .await
        .unwrap();
    // A name is resolved (localhost may be ::1 first; every address is tried).
    TcpProbe::new("localhost", port).check().await.unwrap();

    let port = closed_port().await;
    let failure = TcpProbe::new("127.0.0.1", port).check().await.unwrap_err();
    assert_eq!(failure.kind(), FailureKind::Refused);
    assert!(
        failure.message().contains(&format!("127.0.0.1:{port}")),
        "{failure}"
    );

    let failure = TcpProbe::new("no-such-host.invalid", 80)
        .check()
        .await
        .unwrap_err();
    assert_eq!(failure.kind(), FailureKind::Resolve, "{failure}");
}

#[tokio::test]
async fn tcp_probe_closes_with_a_fin_or_with_a_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();

    TcpProbe::new("127.0.0.1", port).check().await.unwrap();
    let (mut server_side, _) = listener.accept().await.unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        server_side.read(&mut buf).await.unwrap(),
        0,
        "orderly close"
    );

    TcpProbe::new("127.0.0.1", port)
        .reset_on_close(true)
        .check()
        .await
        .unwrap();
    let (mut server_side, _) = listener.accept().await.unwrap();
    let err = server_side.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn http_get_is_healthy_below_the_status_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let responder = Responder::new("200 OK", "{\"ok\":true}");
    let server = responder.spawn_tcp(listener);
    let url = format!("http://{addr}/healthz?deep=1");
    let probe = HttpProbe::new(&url).unwrap();

    probe.check().await.unwrap();
    let request = responder.requests.lock()[0].to_ascii_lowercase();
    assert!(
        request.starts_with("get /healthz?deep=1 http/1.1\r\n"),
        "{request}"
    );
    assert!(request.contains(&format!("host: {addr}\r\n")), "{request}");
    assert!(request.contains("connection: close\r\n"), "{request}");
    assert!(request.contains("user-agent: keel-health/"), "{request}");

    responder.answer("404 Not Found", "");
    probe.check().await.unwrap(); // alive, by the default rule (< 500)
    let strict = HttpProbe::new(&url)
        .unwrap()
        .healthy_below(StatusCode::BAD_REQUEST);
    let failure = strict.check().await.unwrap_err();
    assert_eq!(failure.kind(), FailureKind::HttpStatus);
    assert!(failure.message().contains("404"), "{failure}");

    responder.answer("503 Service Unavailable", "{}");
    let failure = probe.check().await.unwrap_err();
    assert_eq!(failure.kind(), FailureKind::HttpStatus);
    assert!(failure.message().contains("503"), "{failure}");

    responder.raw("this is not http\r\n\r\n");
    let failure = probe.check().await.unwrap_err();
    assert_eq!(failure.kind(), FailureKind::Protocol, "{failure}");

    responder.raw("");
    let failure = probe.check().await.unwrap_err();
    assert_eq!(failure.kind(), FailureKind::Protocol, "{failure}");

    server.abort();
    let port = closed_port().await;
    let failure = HttpProbe::new(&format!("http://127.0.0.1:{port}/"))
        .unwrap()
        .check()
        .await
        .unwrap_err();
    assert_eq!(failure.kind(), FailureKind::Refused);
}

#[tokio::test]
async fn http_over_a_unix_socket_like_firecrackers_api() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("firecracker.socket");
    let listener = UnixListener::bind(&socket).unwrap();
    let responder = Responder::new(
        "200 OK",
        r#"{"id":"vm-1","state":"Running","vmm_version":"1.7.0","app_name":"Firecracker"}"#,
    );
    let server = responder.spawn_unix(listener);

    let probe = UnixHttpProbe::new(&socket);
    probe.check().await.unwrap();
    let request = responder.requests.lock()[0].to_ascii_lowercase();
    assert!(request.starts_with("get / http/1.1\r\n"), "{request}");
    assert!(request.contains("host: localhost\r\n"), "{request}");

    // The responder closes right after answering; the close must never be
    // mistaken for a missing answer.
    for _ in 0..200 {
        probe.check().await.unwrap();
    }

    let machine = UnixHttpProbe::new(&socket)
        .request_path("/machine-config")
        .unwrap();
    machine.check().await.unwrap();
    assert!(responder.requests.lock()[201].starts_with("GET /machine-config HTTP/1.1"));

    responder.answer("500 Internal Server Error", r#"{"fault_message":"boom"}"#);
    let failure = probe.check().await.unwrap_err();
    assert_eq!(failure.kind(), FailureKind::HttpStatus);
    responder.answer("400 Bad Request", "{}");
    probe.check().await.unwrap();
    let failure = probe
        .clone()
        .healthy_below(StatusCode::BAD_REQUEST)
        .check()
        .await
        .unwrap_err();
    assert_eq!(failure.kind(), FailureKind::HttpStatus);

    // The VMM died: the socket file stays but nobody listens.
    server.abort();
    let _ = server.await;
    assert!(socket.exists());
    let failure = probe.check().await.unwrap_err();
    assert_eq!(failure.kind(), FailureKind::Refused, "{failure}");

    // The socket file is gone.
    std::fs::remove_file(&socket).unwrap();
    let failure = probe.check().await.unwrap_err();
    assert_eq!(failure.kind(), FailureKind::Missing, "{failure}");
}

#[tokio::test]
async fn socket_file_must_exist_and_be_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let _listener = UnixListener::bind(&socket).unwrap();
    SocketFileProbe::new(&socket).check().await.unwrap();

    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let failure = SocketFileProbe::new(&file).check().await.unwrap_err();
    assert_eq!(failure.kind(), FailureKind::NotSocket);
    assert!(failure.message().contains("regular file"), "{failure}");

    let failure = SocketFileProbe::new(dir.path()).check().await.unwrap_err();
    assert_eq!(failure.kind(), FailureKind::NotSocket);

    let failure = SocketFileProbe::new(dir.path().join("gone.sock"))
        .check()
        .await
        .unwrap_err();
    assert_eq!(failure.kind(), FailureKind::Missing);
}

/// Waits (bounded) until `/proc/<pid>/stat` shows the given state letter.
fn wait_for_proc_state(pid: u32, state: char) {
    for _ in 0..500 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..])
            && rest.trim_start().starts_with(state)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("process {pid} never reached state {state}");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn process_probe_sees_a_live_child_a_zombie_and_a_reaped_child() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep 30");
    let pid = child.id();
    let probe = ProcessProbe::new(pid);
    probe.check().await.unwrap();
    probe.check().await.unwrap();

    // Killed but not yet waited for: a zombie, which counts as dead.
    child.kill().unwrap();
    wait_for_proc_state(pid, 'Z');
    let failure = probe.check().await.unwrap_err();
    assert_eq!(failure.kind(), FailureKind::NotRunning);
    assert!(failure.message().contains("zombie"), "{failure}");

    // Reaped: gone.
    child.wait().unwrap();
    let failure = probe.check().await.unwrap_err();
    assert_eq!(failure.kind(), FailureKind::NotRunning);
    assert!(failure.message().contains("no such process"), "{failure}");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn process_probe_never_signals_the_process() {
    // A child that would die from any signal sent by `kill(pid, 0)`-style
    // mistakes still runs after many checks.
    let mut child = tokio::process::Command::new("sleep")
        .arg("30")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let probe = ProcessProbe::new(child.id().unwrap());
    for _ in 0..100 {
        probe.check().await.unwrap();
    }
    assert!(child.try_wait().unwrap().is_none());
    child.kill().await.unwrap();
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn all_of_reports_which_real_probe_failed() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vm.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let responder = Responder::new("200 OK", "{}");
    let server = responder.spawn_unix(listener);
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();

    let vm = all_of([
        ProcessProbe::new(child.id()).boxed(),
        SocketFileProbe::new(&socket).boxed(),
        UnixHttpProbe::new(&socket).boxed(),
        probe_fn(|| async { Ok::<_, ProbeFailure>(()) }).boxed(),
    ]);
    vm.check().await.unwrap();
    assert_eq!(responder.requests.lock().len(), 1);

    server.abort();
    let _ = server.await;
    let failure = vm.check().await.unwrap_err();
    assert_eq!(
        failure.probe(),
        Some(format!("unix_http {}", socket.display()).as_str())
    );
    assert_eq!(failure.kind(), FailureKind::Refused);

    std::fs::remove_file(&socket).unwrap();
    let failure = vm.check().await.unwrap_err();
    assert_eq!(
        failure.probe(),
        Some(format!("socket_file {}", socket.display()).as_str())
    );
    assert_eq!(failure.kind(), FailureKind::Missing);

    child.kill().unwrap();
    child.wait().unwrap();
    let failure = vm.check().await.unwrap_err();
    assert_eq!(
        failure.probe(),
        Some(format!("process {}", child.id()).as_str())
    );
    assert_eq!(failure.kind(), FailureKind::NotRunning);
    assert!(failure.to_string().starts_with("process "), "{failure}");
}

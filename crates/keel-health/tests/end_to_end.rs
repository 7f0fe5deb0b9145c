//! The checker driving real probes in real time: a VM-like target (a
//! process and its API socket) goes unhealthy when its process dies, with
//! the reason. Waits are bounded and only wait for events; no timing is
//! asserted.

mod support;

use std::time::Duration;

use keel_health::{
    ChangeReason, FailureKind, HealthChecker, HealthEvent, HealthState, Probe, ProcessProbe,
    SocketFileProbe, TcpProbe, UnixHttpProbe, all_of,
};
use support::{Responder, config};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::broadcast::Receiver;

async fn next_event(rx: &mut Receiver<HealthEvent>) -> HealthEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no health event within 10 s")
        .expect("event stream closed")
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_whose_process_dies_becomes_unhealthy_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fc.sock");
    let responder = Responder::new("200 OK", r#"{"state":"Running"}"#);
    let server = responder.spawn_unix(UnixListener::bind(&socket).unwrap());
    let mut vmm = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();

    let checker = HealthChecker::builder().seed(3).build().unwrap();
    let mut rx = checker.subscribe();
    let probe = all_of([
        ProcessProbe::new(vmm.id()).boxed(),
        SocketFileProbe::new(&socket).boxed(),
        UnixHttpProbe::new(&socket).boxed(),
    ]);
    checker.add("vm-1", probe, config(100, 100, 2, 2)).unwrap();

    let event = next_event(&mut rx).await;
    assert_eq!(
        (event.old, event.new),
        (HealthState::Unknown, HealthState::Healthy),
        "{}",
        event.reason
    );

    // The VMM crashes (and its parent reaps it).
    vmm.kill().unwrap();
    vmm.wait().unwrap();
    let event = next_event(&mut rx).await;
    assert_eq!(event.target, "vm-1");
    assert_eq!(
        (event.old, event.new),
        (HealthState::Healthy, HealthState::Unhealthy)
    );
    let ChangeReason::Failed {
        consecutive_failures,
        failure,
    } = &event.reason
    else {
        panic!("unexpected reason {:?}", event.reason)
    };
    assert_eq!(*consecutive_failures, 2);
    assert_eq!(failure.kind(), FailureKind::NotRunning);
    assert_eq!(
        failure.probe(),
        Some(format!("process {}", vmm.id()).as_str())
    );
    let status = checker.status("vm-1").unwrap();
    assert_eq!(status.state, HealthState::Unhealthy);
    assert!(status.last_duration.is_some());

    server.abort();
    checker.shutdown().await;
    assert_eq!(checker.live_tasks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_service_goes_down_and_comes_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let checker = HealthChecker::builder().build().unwrap();
    let mut rx = checker.subscribe();
    checker
        .add("svc", TcpProbe::from_addr(addr), config(100, 100, 2, 2))
        .unwrap();
    assert_eq!(next_event(&mut rx).await.new, HealthState::Healthy);

    drop(listener);
    let event = next_event(&mut rx).await;
    assert_eq!(event.new, HealthState::Unhealthy);
    assert_eq!(event.reason.failure().unwrap().kind(), FailureKind::Refused);

    let _listener = TcpListener::bind(addr).await.unwrap();
    let event = next_event(&mut rx).await;
    assert_eq!(
        (event.old, event.new),
        (HealthState::Unhealthy, HealthState::Healthy)
    );
    assert_eq!(
        event.reason,
        ChangeReason::Recovered {
            consecutive_successes: 2
        }
    );
    checker.shutdown().await;
}

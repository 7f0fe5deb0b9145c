//! fake-vmm: a stand-in for Firecracker in tests and load runs. It serves
//! Firecracker's API shape on a Unix socket (`GET /` → instance info,
//! `PUT /actions`) and can be told to misbehave, by arguments at start or
//! later through `PUT /fault`:
//!
//! * `{"fault": "crash"}`: abort (SIGABRT) at once;
//! * `{"fault": "exit", "code": 3}`: exit with a code;
//! * `{"fault": "hang"}`: every later request hangs (the process lives);
//! * `{"fault": "error"}`: every later `GET /` answers 500;
//! * `{"fault": "slow", "ms": 300}`: every later `GET /` waits first;
//! * `{"fault": "delete_socket"}`: unlinks its socket (keeps running);
//! * `{"fault": "none"}`: back to normal.
//!
//! `--start-delay 2s` waits before binding the socket (a slow boot);
//! `--exit-after 1s --exit-code 0` exits on its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use clap::Parser;
use parking_lot::Mutex;
use serde_json::{Value, json};

/// fake-vmm: Firecracker's API shape on a Unix socket, with faults.
#[derive(Debug, Parser)]
struct Args {
    /// The API socket.
    #[arg(long = "api-sock")]
    api_sock: PathBuf,
    /// Instance id reported by `GET /`.
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
    /// Wait this long before serving.
    #[arg(long, value_parser = vm_supervisor::duration::parse)]
    start_delay: Option<Duration>,
    /// Exit on its own after this long.
    #[arg(long, value_parser = vm_supervisor::duration::parse)]
    exit_after: Option<Duration>,
    /// The code of `--exit-after`.
    #[arg(long, default_value_t = 0)]
    exit_code: i32,
    /// Start with `GET /` answering 500.
    #[arg(long)]
    error: bool,
    /// Start hung.
    #[arg(long)]
    hang: bool,
}

#[derive(Debug, Default)]
struct Fake {
    id: String,
    socket: PathBuf,
    state: Mutex<&'static str>,
    hang: AtomicBool,
    error: AtomicBool,
    slow_ms: AtomicU64,
    actions: AtomicU64,
}

async fn hang_if(fake: &Fake) {
    if fake.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}

async fn info(State(fake): State<Arc<Fake>>) -> (StatusCode, Json<Value>) {
    hang_if(&fake).await;
    let slow = fake.slow_ms.load(Ordering::SeqCst);
    if slow > 0 {
        tokio::time::sleep(Duration::from_millis(slow)).await;
    }
    if fake.error.load(Ordering::SeqCst) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"fault_message": "injected error"})),
        );
    }
    let state = *fake.state.lock();
    (
        StatusCode::OK,
        Json(json!({
            "id": fake.id,
            "state": state,
            "vmm_version": "1.7.0-fake",
            "app_name": "Firecracker",
            "pid": std::process::id(),
            "actions": fake.actions.load(Ordering::SeqCst),
        })),
    )
}

async fn actions(State(fake): State<Arc<Fake>>, Json(body): Json<Value>) -> StatusCode {
    hang_if(&fake).await;
    fake.actions.fetch_add(1, Ordering::SeqCst);
    match body.get("action_type").and_then(Value::as_str) {
        Some("InstanceStart") => {
            *fake.state.lock() = "Running";
            StatusCode::NO_CONTENT
        }
        Some("SendCtrlAltDel" | "FlushMetrics") => StatusCode::NO_CONTENT,
        _ => StatusCode::BAD_REQUEST,
    }
}

async fn fault(State(fake): State<Arc<Fake>>, Json(body): Json<Value>) -> StatusCode {
    match body.get("fault").and_then(Value::as_str) {
        Some("crash") => std::process::abort(),
        Some("exit") => {
            let code = body.get("code").and_then(Value::as_i64).unwrap_or(0);
            std::process::exit(code as i32)
        }
        Some("hang") => fake.hang.store(true, Ordering::SeqCst),
        Some("error") => fake.error.store(true, Ordering::SeqCst),
        Some("slow") => {
            let ms = body.get("ms").and_then(Value::as_u64).unwrap_or(1000);
            fake.slow_ms.store(ms, Ordering::SeqCst);
        }
        Some("delete_socket") => {
            let _ = std::fs::remove_file(&fake.socket);
        }
        Some("none") => {
            fake.hang.store(false, Ordering::SeqCst);
            fake.error.store(false, Ordering::SeqCst);
            fake.slow_ms.store(0, Ordering::SeqCst);
        }
        _ => return StatusCode::BAD_REQUEST,
    }
    StatusCode::NO_CONTENT
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        if let Some(delay) = args.start_delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(after) = args.exit_after {
            let code = args.exit_code;
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                std::process::exit(code);
            });
        }
        let fake = Arc::new(Fake {
            id: args.id,
            socket: args.api_sock.clone(),
            state: Mutex::new("Not started"),
            hang: AtomicBool::new(args.hang),
            error: AtomicBool::new(args.error),
            ..Fake::default()
        });
        let _ = std::fs::remove_file(&args.api_sock);
        let listener = tokio::net::UnixListener::bind(&args.api_sock)?;
        let app = Router::new()
            .route("/", get(info))
            .route("/actions", put(actions))
            .route("/fault", put(fault))
            .with_state(fake);
        axum::serve(listener, app).await
    })
}

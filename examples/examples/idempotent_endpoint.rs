//! An axum endpoint made idempotent with keel-idempotency's `Idempotency-Key`
//! middleware, on the in-memory store; the program is also its own client.
//!
//! Run: `cargo run -p keel-examples --example idempotent_endpoint`
//!
//! It starts the server on a free loopback port, then sends:
//! 1. a payment with `Idempotency-Key: "pay-42"` (runs the handler: 201),
//! 2. the same request again (replayed: 201, same body, `Idempotent-Replayed: true`),
//! 3. the same key with a different amount (422 problem: key reused),
//! 4. a payment without the header (400 problem: key required),
//!
//! prints each status, the replay header and the body, checks that the
//! handler ran exactly once, and exits. No external service is needed.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, ensure};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use keel_idempotency::{Idempotency, IdempotencyLayer};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Payment {
    account: String,
    amount_cents: u64,
}

/// The handler that must not run twice for one payment.
async fn charge(
    State(charges): State<Arc<AtomicU32>>,
    Json(p): Json<Payment>,
) -> (StatusCode, Json<Value>) {
    let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        Json(json!({
            "payment_id": format!("pay_{n:04}"),
            "account": p.account,
            "amount_cents": p.amount_cents,
        })),
    )
}

fn app(charges: Arc<AtomicU32>) -> anyhow::Result<Router> {
    // In-memory store, 24 h TTL; POST and PATCH are covered; a request
    // without a key is refused.
    let layer = IdempotencyLayer::builder(Idempotency::new())
        .required(true)
        .build()?;
    Ok(Router::new()
        .route("/payments", post(charge))
        .layer(layer)
        .with_state(charges))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let charges = Arc::new(AtomicU32::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router = app(charges.clone())?;
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    println!("server listening on http://{addr}");

    let client = reqwest::Client::new();
    let url = format!("http://{addr}/payments");
    let payment = json!({"account": "acct_1", "amount_cents": 4200});
    let changed = json!({"account": "acct_1", "amount_cents": 9900});

    let steps: [(&str, Option<&str>, &Value); 4] = [
        ("first request", Some("\"pay-42\""), &payment),
        ("same key, same payload", Some("\"pay-42\""), &payment),
        ("same key, different payload", Some("\"pay-42\""), &changed),
        ("no Idempotency-Key", None, &payment),
    ];
    let mut statuses = Vec::new();
    for (label, key, body) in steps {
        let mut req = client.post(&url).json(body);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("sending {label}"))?;
        let status = res.status();
        let replayed = res
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let text = res.text().await?;
        println!("{label:<28} -> {status} (Idempotent-Replayed: {replayed})\n    {text}");
        statuses.push((status.as_u16(), replayed));
    }

    let ran = charges.load(Ordering::SeqCst);
    println!("handler ran {ran} time(s)");
    ensure!(
        statuses
            == [
                (201, "-".to_string()),
                (201, "true".to_string()),
                (422, "-".to_string()),
                (400, "-".to_string()),
            ],
        "unexpected statuses: {statuses:?}"
    );
    ensure!(ran == 1, "the handler ran {ran} times, expected once");

    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}

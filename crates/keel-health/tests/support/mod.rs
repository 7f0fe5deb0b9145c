//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keel_health::{CheckConfig, FailureKind, HealthChecker, Probe, ProbeFailure, probe_fn};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// A probe whose answer the test flips, and which records when it ran.
#[derive(Clone)]
pub struct Script {
    pub healthy: Arc<AtomicBool>,
    pub checks: Arc<Mutex<Vec<Instant>>>,
}

impl Script {
    pub fn new(healthy: bool) -> Self {
        Script {
            healthy: Arc::new(AtomicBool::new(healthy)),
            checks: Arc::default(),
        }
    }

    pub fn set(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    pub fn probe(&self) -> impl Probe + use<> {
        let s = self.clone();
        probe_fn(move || {
            let s = s.clone();
            async move {
                s.checks.lock().push(Instant::now());
                if s.healthy.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err(ProbeFailure::new(FailureKind::Refused, "scripted failure"))
                }
            }
        })
        .named("script")
    }

    /// Check start times relative to `t0`.
    pub fn offsets(&self, t0: Instant) -> Vec<Duration> {
        self.checks.lock().iter().map(|t| *t - t0).collect()
    }
}

pub fn config(interval_ms: u64, timeout_ms: u64, failures: u32, recoveries: u32) -> CheckConfig {
    CheckConfig::builder()
        .interval(Duration::from_millis(interval_ms))
        .timeout(Duration::from_millis(timeout_ms))
        .failure_threshold(failures)
        .recovery_threshold(recoveries)
        .jitter_first_check(false)
        .build()
        .unwrap()
}

/// Lets the runtime run cancelled tasks to completion. Fails (returns the
/// count) if the live task count does not reach `expected`.
pub async fn settle(checker: &HealthChecker, expected: usize) -> usize {
    for _ in 0..100 {
        if checker.live_tasks() == expected {
            return expected;
        }
        tokio::task::yield_now().await;
    }
    checker.live_tasks()
}

/// What a tiny HTTP responder answers and what it saw.
#[derive(Clone)]
pub struct Responder {
    pub response: Arc<Mutex<String>>,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Responder {
    pub fn new(status_line: &str, body: &str) -> Self {
        let r = Responder {
            response: Arc::default(),
            requests: Arc::default(),
        };
        r.answer(status_line, body);
        r
    }

    pub fn answer(&self, status_line: &str, body: &str) {
        *self.response.lock() = format!(
            "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }

    /// Sends raw bytes instead of an HTTP response.
    pub fn raw(&self, bytes: &str) {
        *self.response.lock() = bytes.to_owned();
    }

    /// Reads one request head, records it, writes the response, closes.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, mut stream: S) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        self.requests
            .lock()
            .push(String::from_utf8_lossy(&buf).into_owned());
        let response = self.response.lock().clone();
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// Serves every connection of a TCP listener.
    pub fn spawn_tcp(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move { me.serve(stream).await });
            }
        })
    }

    /// Serves every connection of a Unix listener.
    pub fn spawn_unix(&self, listener: tokio::net::UnixListener) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move { me.serve(stream).await });
            }
        })
    }
}

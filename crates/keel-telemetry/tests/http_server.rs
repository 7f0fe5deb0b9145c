//! `HttpServer` over real loopback sockets: the header and body read
//! timeouts (paused tokio time, which also drives hyper's timer), and a
//! shutdown that stalled clients cannot hold.

use std::error::Error as _;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::{get, post};
use keel_telemetry::{BodyReadError, HttpServer, ReadTimeouts, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Reads the request body; answers 408 naming the body error when it
/// fails, so the test sees which one it was.
async fn upload(body: Body) -> (StatusCode, String) {
    match axum::body::to_bytes(body, 1 << 20).await {
        Ok(bytes) => (StatusCode::OK, format!("{} bytes", bytes.len())),
        Err(e) => {
            let mut source = e.source();
            while let Some(s) = source {
                if let Some(read) = s.downcast_ref::<BodyReadError>() {
                    return (StatusCode::REQUEST_TIMEOUT, read.to_string());
                }
                source = s.source();
            }
            (StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

fn app() -> Router {
    Router::new()
        .route("/upload", post(upload))
        .route("/hello", get(|| async { "hello" }))
}

async fn start(timeouts: ReadTimeouts) -> (Shutdown, HttpServer) {
    let shutdown = Shutdown::new();
    let server = HttpServer::bind_with("127.0.0.1:0".parse().unwrap(), app(), &shutdown, timeouts)
        .await
        .unwrap();
    (shutdown, server)
}

async fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let timeouts = ReadTimeouts::new(Duration::from_secs(10), Duration::from_secs(30)).unwrap();
    let (shutdown, server) = start(timeouts).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // The server closes the connection (hyper may first answer 408).
    let answer = read_all(&mut stream).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "{waited:?}"
    );

    // A well-behaved client is served as usual.
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_all(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello"), "{answer}");
    assert!(shutdown.drain(Duration::from_secs(1)).await.is_clean());
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_arriving_fails_the_read_after_the_body_timeout() {
    let timeouts = ReadTimeouts::new(Duration::from_secs(10), Duration::from_secs(30)).unwrap();
    let (shutdown, server) = start(timeouts).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\nconnection: close\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_all(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("timed out after 30s"), "{answer}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
        "{waited:?}"
    );
    // A body that keeps arriving, slower than the timeout in total but
    // never pausing that long, is read to the end.
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 40\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        stream.write_all(b"0123456789").await.unwrap();
    }
    let answer = read_all(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("40 bytes"), "{answer}");
    assert!(shutdown.drain(Duration::from_secs(1)).await.is_clean());
}

/// Real time: the timeouts are a minute, the drain bound 5 s; the drain
/// must finish well inside it although two clients are stalled.
#[tokio::test]
async fn stalled_clients_do_not_hold_the_drain() {
    let timeouts = ReadTimeouts::new(Duration::from_secs(60), Duration::from_secs(60)).unwrap();
    let (shutdown, server) = start(timeouts).await;
    let addr = server.local_addr();
    // Stalled in its headers.
    let mut headers = TcpStream::connect(addr).await.unwrap();
    headers
        .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // Stalled in its body, with the handler waiting for it.
    let mut body = TcpStream::connect(addr).await.unwrap();
    body.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    // An idle keep-alive connection.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Let the body request reach its handler.
    tokio::task::yield_now().await;

    let report = shutdown.drain(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");
    assert!(report.elapsed < Duration::from_secs(2), "{report:?}");
    server.wait().await.unwrap();

    // The body client was told why; the others were closed.
    let answer = read_all(&mut body).await;
    assert!(
        answer.is_empty() || answer.contains("shutting down"),
        "{answer}"
    );
    read_all(&mut headers).await;
    read_all(&mut idle).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

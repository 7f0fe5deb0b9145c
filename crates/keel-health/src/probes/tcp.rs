use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

use crate::probe::{FailureKind, Probe, ProbeFailure, ProbeResult};

/// Where a TCP-based probe connects: a fixed address, or a host name
/// resolved at every check (so a DNS change is followed).
#[derive(Debug, Clone)]
pub(crate) enum TcpTarget {
    Addr(SocketAddr),
    Host { host: String, port: u16 },
}

impl TcpTarget {
    pub(crate) fn new(host: &str, port: u16) -> Self {
        // "[::1]" as written in URLs.
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match bare.parse::<IpAddr>() {
            Ok(ip) => TcpTarget::Addr(SocketAddr::new(ip, port)),
            Err(_) => TcpTarget::Host {
                host: bare.to_owned(),
                port,
            },
        }
    }

    /// Connects, trying each resolved address in turn like `connect` does.
    pub(crate) async fn connect(&self) -> Result<TcpStream, ProbeFailure> {
        match self {
            TcpTarget::Addr(addr) => TcpStream::connect(addr)
                .await
                .map_err(|e| connect_failure(&addr.to_string(), &e)),
            TcpTarget::Host { host, port } => {
                // Resolution goes through tokio's blocking pool; literal IPs
                // above skip it.
                let addrs = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| {
                        ProbeFailure::new(FailureKind::Resolve, format!("resolve {host}: {e}"))
                    })?;
                let mut last = None;
                for addr in addrs {
                    match TcpStream::connect(addr).await {
                        Ok(stream) => return Ok(stream),
                        Err(e) => last = Some(connect_failure(&format!("{host}:{port}"), &e)),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    ProbeFailure::new(
                        FailureKind::Resolve,
                        format!("resolve {host}: no addresses"),
                    )
                }))
            }
        }
    }

    pub(crate) fn display(&self) -> String {
        match self {
            TcpTarget::Addr(addr) => addr.to_string(),
            TcpTarget::Host { host, port } => format!("{host}:{port}"),
        }
    }
}

fn connect_failure(target: &str, error: &std::io::Error) -> ProbeFailure {
    let kind = match FailureKind::of_io(error) {
        FailureKind::Io => FailureKind::Connect,
        other => other,
    };
    ProbeFailure::new(kind, format!("connect {target}: {error}"))
}

/// Healthy when a TCP connection to `host:port` opens. The connection is
/// closed at once; nothing is sent.
///
/// A host that parses as an IP address is connected to directly; a name is
/// resolved at every check (through tokio's blocking pool, which costs a
/// thread hop). Failures are `refused`, `connect`, `resolve` or (from the
/// checker) `timeout`.
///
/// By default the connection is closed normally (FIN), which leaves a
/// `TIME_WAIT` entry on the checker's side for a minute per check.
/// [`reset_on_close`](Self::reset_on_close) closes with a reset instead, as
/// HAProxy's checks do: no `TIME_WAIT`, but the server may log a reset.
#[derive(Debug, Clone)]
pub struct TcpProbe {
    target: TcpTarget,
    reset_on_close: bool,
    name: String,
}

impl TcpProbe {
    /// Probes `host:port`. `host` is an IP address (v6 with or without
    /// brackets) or a DNS name.
    pub fn new(host: impl AsRef<str>, port: u16) -> Self {
        Self::from_target(TcpTarget::new(host.as_ref(), port))
    }

    /// Probes a fixed socket address.
    pub fn from_addr(addr: SocketAddr) -> Self {
        Self::from_target(TcpTarget::Addr(addr))
    }

    fn from_target(target: TcpTarget) -> Self {
        let name = format!("tcp {}", target.display());
        TcpProbe {
            target,
            reset_on_close: false,
            name,
        }
    }

    /// Close each probe connection with a reset (`SO_LINGER` 0) instead of
    /// a FIN, so checks leave no `TIME_WAIT` sockets behind.
    pub fn reset_on_close(mut self, reset: bool) -> Self {
        self.reset_on_close = reset;
        self
    }
}

impl Probe for TcpProbe {
    async fn check(&self) -> ProbeResult {
        let stream = self.target.connect().await?;
        if self.reset_on_close {
            // Best effort: failing to set it only changes how we close.
            let _ = stream.set_zero_linger();
        }
        drop(stream);
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_addresses_skip_resolution() {
        assert!(matches!(
            TcpTarget::new("127.0.0.1", 22),
            TcpTarget::Addr(_)
        ));
        assert!(matches!(TcpTarget::new("::1", 22), TcpTarget::Addr(_)));
        assert!(matches!(TcpTarget::new("[::1]", 22), TcpTarget::Addr(_)));
        assert!(matches!(
            TcpTarget::new("localhost", 22),
            TcpTarget::Host { .. }
        ));
        assert_eq!(TcpProbe::new("[::1]", 8080).name(), "tcp [::1]:8080");
        assert_eq!(
            TcpProbe::new("db.internal", 5432).name(),
            "tcp db.internal:5432"
        );
    }
}

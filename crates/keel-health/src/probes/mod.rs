//! The stock probes. Each is cheap to construct and holds no connection
//! between checks: every check opens (and closes) what it needs, so a probe
//! exercises the same path a new client would.

mod http;
mod process;
mod socket_file;
mod tcp;

pub use http::HttpProbe;
#[cfg(unix)]
pub use http::UnixHttpProbe;
pub use process::ProcessProbe;
#[cfg(unix)]
pub use socket_file::SocketFileProbe;
pub use tcp::TcpProbe;

//! gRPC connections between Eddy processes, with one set of timeouts.

use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Metadata key of a JobManager's `UNAVAILABLE` answer that names the
/// leader's rpc address (a follower refusing a TaskManager's call).
pub const LEADER_METADATA: &str = "eddy-leader-rpc-addr";

/// Error of building a channel (a malformed address).
#[derive(Debug, thiserror::Error)]
#[error("invalid gRPC address {addr:?}")]
pub struct AddrError {
    pub addr: String,
    #[source]
    pub source: tonic::transport::Error,
}

/// A lazily connected channel to `addr` (`host:port` or `http://host:port`):
/// the connection is made on first use and re-made after failures.
pub fn connect(addr: &str) -> Result<Channel, AddrError> {
    let uri = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|source| AddrError {
        addr: addr.to_string(),
        source,
    })?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

//! Structured logging with `tracing`: `RUST_LOG` filters (default `info`, openraft at `warn`),
//! human or JSON lines on stderr.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `json` selects one JSON object per line.
/// Safe to call more than once (later calls are ignored).
pub fn init(service: &str, json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if result.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    }
}

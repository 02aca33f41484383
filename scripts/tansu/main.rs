//! tansu 0.6.0's `tansu` command (its src/bin/tansu.rs without the
//! client-error hints).

use tansu_broker::{TracingFormat, otel};
use tansu_sans_io::ErrorCode;

#[tokio::main]
async fn main() -> tansu_cli::Result<ErrorCode> {
    let _guard = otel::init(TracingFormat::Text)?;
    tansu_cli::Cli::main().await
}

//! `eddy-jobmanager`: parses flags, loads the layered config, starts logging
//! and runs the JobManager until SIGINT/SIGTERM.

use anyhow::Context as _;
use clap::Parser;
use eddy_jobmanager::config::{Config, Overrides};
use eddy_sdk::spec::HumanDuration;
use std::path::PathBuf;

/// Eddy JobManager: Raft-replicated metadata, scheduling, REST.
#[derive(Debug, Parser)]
#[command(name = "eddy-jobmanager", version)]
struct Cli {
    /// TOML config file (overrides the built-in defaults).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of durable state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// REST address, e.g. 127.0.0.1:8081 (port 0 picks a free port).
    #[arg(long)]
    rest_addr: Option<String>,
    /// The REST URL others reach this JobManager at (default: http:// + the
    /// bound REST address).
    #[arg(long)]
    rest_url: Option<String>,
    /// gRPC address for TaskManagers and Raft (port 0 picks a free port).
    #[arg(long)]
    rpc_addr: Option<String>,
    /// Raft node id.
    #[arg(long)]
    id: Option<u64>,
    /// Raft peers as id=host:port, comma-separated.
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Do not create a Raft group: wait for an existing group's leader to add
    /// this node (`eddy cluster add`).
    #[arg(long)]
    join: bool,
    /// Declare a TaskManager lost after this long without a heartbeat (e.g. 10s).
    #[arg(long)]
    heartbeat_timeout: Option<HumanDuration>,
    /// Write {"id","rest_addr","rpc_addr","pid"} here once the ports are bound.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let overrides = Overrides {
        id: cli.id,
        data_dir: cli.data_dir,
        rest_addr: cli.rest_addr,
        rest_url: cli.rest_url,
        rpc_addr: cli.rpc_addr,
        peers: cli.peers,
        join: cli.join,
        heartbeat_timeout: cli.heartbeat_timeout,
    };
    let config = Config::load(cli.config.as_deref(), &env, overrides)
        .context("cannot load the configuration")?;
    eddy_sdk::server::telemetry::init("eddy-jobmanager", config.log_format);
    // Nothing in the config is secret today; log it whole.
    tracing::info!(config = ?config, "effective configuration");
    eddy_jobmanager::run(config, cli.ready_file, eddy_sdk::server::shutdown::signal())
        .await
        .map_err(|e| {
            let chain = eddy_sdk::error::error_chain(&e);
            tracing::error!(error = ?chain, "jobmanager failed");
            anyhow::Error::new(e)
        })
}

//! `eddy-taskmanager`: parses flags, loads the layered config and runs the
//! TaskManager (see the library for everything else).

use clap::Parser;
use eddy_sdk::bytesize::ByteSize;
use eddy_taskmanager::config::{Config, Overrides};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "eddy-taskmanager",
    version,
    about = "Eddy TaskManager: offers slots and runs subtasks"
)]
struct Flags {
    /// TOML config file (layered over the built-in defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A JobManager gRPC address (repeatable).
    #[arg(long = "jobmanager", value_name = "ADDR")]
    jobmanagers: Vec<String>,
    /// gRPC address to bind (control + exchange); port 0 picks a free port.
    #[arg(long)]
    rpc_addr: Option<String>,
    /// Address to serve Prometheus /metrics on; port 0 picks a free port.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Number of slots (KPUs) to offer.
    #[arg(long)]
    slots: Option<u32>,
    /// Memory of one KPU (e.g. 4GiB).
    #[arg(long)]
    kpu_memory: Option<ByteSize>,
    /// CPU of one KPU in thousandths of a core (1000 = 1 vCPU).
    #[arg(long)]
    kpu_vcpu_millis: Option<u32>,
    /// Local disk of one KPU (e.g. 50GiB).
    #[arg(long)]
    kpu_disk: Option<ByteSize>,
    /// Local working directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Stable id of this TaskManager (generated when absent).
    #[arg(long)]
    id: Option<String>,
    /// Written as JSON once the ports are bound.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let overrides = Overrides {
        jobmanagers: flags.jobmanagers,
        rpc_addr: flags.rpc_addr,
        metrics_addr: flags.metrics_addr,
        slots: flags.slots,
        kpu_memory: flags.kpu_memory,
        kpu_vcpu_millis: flags.kpu_vcpu_millis,
        kpu_disk: flags.kpu_disk,
        data_dir: flags.data_dir,
        id: flags.id,
    };
    let config = Config::load(flags.config.as_deref(), &env, overrides)?;
    eddy_sdk::server::telemetry::init("eddy-taskmanager", config.log_format);
    tracing::info!(config = ?config, "effective configuration");
    // The control plane is light: slots run on their own threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("control")
        .enable_all()
        .build()?;
    runtime.block_on(eddy_taskmanager::run(
        config,
        flags.ready_file,
        eddy_sdk::server::shutdown::signal(),
    ))?;
    Ok(())
}

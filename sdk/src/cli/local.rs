//! `eddy local`: a whole cluster on this machine, as separate processes (see
//! [`super::cluster`]), until Ctrl-C or SIGTERM; optionally running the demo.

use super::cluster::{LocalCluster, Options, default_bin_dir, path_str};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct LocalArgs {
    /// How many JobManagers to start: 1, or a Raft group of 3 or 5 (any
    /// member can fail without stopping the jobs).
    #[arg(long, default_value_t = 1)]
    jobmanagers: u32,
    /// How many TaskManagers to start.
    #[arg(long, default_value_t = 2)]
    taskmanagers: u32,
    /// Slots (KPUs) per TaskManager.
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// Memory of one KPU (e.g. `512MiB`); the TaskManager's default otherwise.
    #[arg(long)]
    kpu_memory: Option<String>,
    /// REST port of the (first) JobManager; JobManager i (0-based) serves
    /// REST on this port + i. 0 picks free ports.
    #[arg(long, default_value_t = 8081)]
    rest_port: u16,
    /// Where the processes keep their data and logs (default: a new temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Submit the demo job once the cluster is up.
    #[arg(long)]
    demo: bool,
    /// Where `eddy-jobmanager` and `eddy-taskmanager` are (default: next to `eddy`).
    #[arg(long, env = "EDDY_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// How long the JobManager waits for a heartbeat before declaring a TaskManager lost.
    #[arg(long, default_value = "10s")]
    heartbeat_timeout: String,
}

/// The demo job; `${EDDY_OUT}` becomes `<data-dir>/demo-out`.
const DEMO_SPEC: &str = include_str!("../../../examples/demo.yaml");

pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    let opts = Options {
        jobmanagers: args.jobmanagers,
        taskmanagers: args.taskmanagers,
        slots: args.slots,
        kpu_memory: args.kpu_memory.clone(),
        rest_port: args.rest_port,
        data_dir: args.data_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("eddy-local-{}", std::process::id()))
        }),
        bin_dir: match &args.bin_dir {
            Some(d) => d.clone(),
            None => default_bin_dir()?,
        },
        heartbeat_timeout: args.heartbeat_timeout.clone(),
        taskmanager_env: Vec::new(),
    };
    let mut cluster = LocalCluster::start(&opts).await?;
    let result = serve(&args, &mut cluster).await;
    cluster.stop().await;
    let data_dir = cluster.data_dir.display();
    if let Err(e) = &result {
        eprintln!("logs are in {data_dir}");
        return Err(anyhow::anyhow!("{e:#}"));
    }
    println!("stopped; data and logs are in {data_dir}");
    Ok(())
}

async fn serve(args: &LocalArgs, cluster: &mut LocalCluster) -> anyhow::Result<()> {
    let url = cluster.url.clone();
    let jobmanagers = match args.jobmanagers {
        1 => "1 JobManager".to_string(),
        n => format!("{n} JobManagers (one Raft group)"),
    };
    println!(
        "Eddy local cluster is up: {jobmanagers}, {} TaskManagers x {} slots",
        args.taskmanagers, args.slots
    );
    // One line per JobManager, jobmanager-1 first; any of them answers.
    for u in &cluster.urls {
        println!("REST:     {u}");
    }
    println!("data/logs: {}", cluster.data_dir.display());
    if args.demo {
        let out = cluster.data_dir.join("demo-out");
        let spec = DEMO_SPEC.replace("${EDDY_OUT}", path_str(&out)?);
        let submitted = cluster.client().submit(&spec).await?;
        println!(
            "demo job: {} (output in {})",
            submitted.job_id,
            out.display()
        );
        println!("try:      eddy --url {url} status {}", submitted.job_id);
    }
    println!("press Ctrl-C to stop");

    tokio::select! {
        _ = shutdown_signal() => Ok(()),
        exited = cluster.first_exit() => Err(exited),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    println!("\nstopping the cluster…");
}

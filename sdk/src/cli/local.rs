//! `eddy local`: a whole cluster on this machine, as separate processes — one
//! JobManager and N TaskManagers — started from the binaries next to `eddy`.
//!
//! Every child dies with this process: they get SIGTERM on Ctrl-C or SIGTERM,
//! SIGKILL if they do not stop in time, and the kernel's parent-death signal
//! if `eddy local` itself is killed.

use crate::client::Client;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(clap::Args, Debug)]
pub struct LocalArgs {
    /// How many TaskManagers to start.
    #[arg(long, default_value_t = 2)]
    taskmanagers: u32,
    /// Slots (KPUs) per TaskManager.
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// Memory of one KPU (e.g. `512MiB`); the TaskManager's default otherwise.
    #[arg(long)]
    kpu_memory: Option<String>,
    /// REST port of the JobManager; 0 picks a free one.
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

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("cannot find the eddy executable")?
            .parent()
            .map(Path::to_path_buf)
            .context("the eddy executable has no parent directory")?,
    };
    for bin in ["eddy-jobmanager", "eddy-taskmanager"] {
        if !bin_dir.join(bin).is_file() {
            bail!(
                "{bin} not found in {} (build the workspace, or pass --bin-dir)",
                bin_dir.display()
            );
        }
    }
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("eddy-local-{}", std::process::id())),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize().unwrap_or(data_dir);
    let mut procs: Vec<Proc> = Vec::new();
    let result = start_and_wait(&args, &bin_dir, &data_dir, &mut procs).await;
    stop_all(&mut procs).await;
    if let Err(e) = &result {
        eprintln!("logs are in {}", data_dir.display());
        return Err(anyhow::anyhow!("{e:#}"));
    }
    println!("stopped; data and logs are in {}", data_dir.display());
    Ok(())
}

async fn start_and_wait(
    args: &LocalArgs,
    bin_dir: &Path,
    data_dir: &Path,
    procs: &mut Vec<Proc>,
) -> anyhow::Result<()> {
    let jm_dir = data_dir.join("jobmanager-1");
    std::fs::create_dir_all(&jm_dir)?;
    let jm_ready = jm_dir.join("ready.json");
    let _ = std::fs::remove_file(&jm_ready);
    let jm = spawn(
        "jobmanager-1",
        &bin_dir.join("eddy-jobmanager"),
        &[
            "--id",
            "1",
            "--data-dir",
            path_str(&jm_dir)?,
            "--rest-addr",
            &format!("127.0.0.1:{}", args.rest_port),
            "--rpc-addr",
            "127.0.0.1:0",
            "--heartbeat-timeout",
            &args.heartbeat_timeout,
            "--ready-file",
            path_str(&jm_ready)?,
        ],
        &jm_dir,
    )?;
    procs.push(jm);
    let ready = wait_ready(&jm_ready, &mut procs[0]).await?;
    let rest_addr = field(&ready, "rest_addr")?;
    let rpc_addr = field(&ready, "rpc_addr")?;
    let url = format!("http://{rest_addr}");

    for i in 0..args.taskmanagers {
        let name = format!("taskmanager-{i}");
        let dir = data_dir.join(&name);
        std::fs::create_dir_all(&dir)?;
        let ready_file = dir.join("ready.json");
        let _ = std::fs::remove_file(&ready_file);
        let slots = args.slots.to_string();
        let mut tm_args = vec![
            "--id",
            name.as_str(),
            "--jobmanager",
            rpc_addr.as_str(),
            "--slots",
            slots.as_str(),
            "--data-dir",
            path_str(&dir)?,
            "--ready-file",
            path_str(&ready_file)?,
        ];
        if let Some(mem) = &args.kpu_memory {
            tm_args.extend(["--kpu-memory", mem.as_str()]);
        }
        let tm = spawn(&name, &bin_dir.join("eddy-taskmanager"), &tm_args, &dir)?;
        procs.push(tm);
        let idx = procs.len() - 1;
        wait_ready(&ready_file, &mut procs[idx]).await?;
    }

    let client = Client::new(&url);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.overview().await {
            Ok(o) if o.taskmanagers >= args.taskmanagers => break,
            _ if Instant::now() > deadline => {
                bail!("TaskManagers did not register with the JobManager within 60s")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        check_alive(procs)?;
    }
    println!(
        "Eddy local cluster is up: 1 JobManager, {} TaskManagers x {} slots",
        args.taskmanagers, args.slots
    );
    println!("REST:     {url}");
    println!("data/logs: {}", data_dir.display());
    if args.demo {
        let out = data_dir.join("demo-out");
        let spec = DEMO_SPEC.replace("${EDDY_OUT}", path_str(&out)?);
        let submitted = client.submit(&spec).await?;
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
        exited = first_exit(procs) => Err(exited),
    }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

fn field(v: &serde_json::Value, name: &str) -> anyhow::Result<String> {
    v.get(name)
        .and_then(|f| f.as_str())
        .map(str::to_string)
        .with_context(|| format!("ready file lacks `{name}`"))
}

#[allow(unsafe_code)]
fn spawn(name: &str, bin: &Path, args: &[&str], dir: &Path) -> anyhow::Result<Proc> {
    let log = dir.join("node.log");
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // prctl(2), which is async-signal-safe. It makes the kernel kill the child
    // when `eddy local` dies, even by SIGKILL, so no process is left behind.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(Proc {
        name: name.to_string(),
        child,
        log,
    })
}

async fn wait_ready(path: &Path, proc: &mut Proc) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            return Ok(v);
        }
        if let Some(status) = proc.child.try_wait()? {
            bail!(
                "{} exited during startup ({status}); last log lines:\n{}",
                proc.name,
                tail(&proc.log, 20)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not become ready within 60s; last log lines:\n{}",
                proc.name,
                tail(&proc.log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn check_alive(procs: &mut [Proc]) -> anyhow::Result<()> {
    for p in procs.iter_mut() {
        if let Some(status) = p.child.try_wait()? {
            bail!(
                "{} exited ({status}); last log lines:\n{}",
                p.name,
                tail(&p.log, 20)
            );
        }
    }
    Ok(())
}

async fn first_exit(procs: &mut [Proc]) -> anyhow::Error {
    loop {
        if let Err(e) = check_alive(procs) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
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

/// SIGTERM every child (TaskManagers first), then SIGKILL whatever is still
/// running after a grace period.
async fn stop_all(procs: &mut [Proc]) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for p in procs.iter().rev() {
        if let Some(pid) = p.child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in procs.iter_mut().rev() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(remaining, p.child.wait())
            .await
            .is_err()
        {
            eprintln!("{} did not stop within 10s; killing it", p.name);
            let _ = p.child.kill().await;
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

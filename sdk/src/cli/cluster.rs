//! A whole cluster on this machine as separate processes — one JobManager or
//! a Raft group of several, and N TaskManagers — started from the binaries
//! next to `eddy`. Used by `eddy local` and `eddy bench`.
//!
//! Every child dies with this process: [`LocalCluster::stop`] sends SIGTERM
//! (SIGKILL if a child does not stop in time), and the kernel's parent-death
//! signal kills them if `eddy` itself is killed.

use crate::client::Client;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// What to start.
#[derive(Clone, Debug)]
pub struct Options {
    /// JobManagers: 1, or the size of a Raft group (3 or 5).
    pub jobmanagers: u32,
    pub taskmanagers: u32,
    pub slots: u32,
    /// Memory of one KPU (e.g. `512MiB`); the TaskManager's default otherwise.
    pub kpu_memory: Option<String>,
    /// REST port of the first JobManager; JobManager i (0-based) uses
    /// `rest_port + i`. 0 picks free ports.
    pub rest_port: u16,
    /// Where the processes keep their data and logs.
    pub data_dir: PathBuf,
    /// Where `eddy-jobmanager` and `eddy-taskmanager` are.
    pub bin_dir: PathBuf,
    pub heartbeat_timeout: String,
    /// Extra environment of the TaskManagers (`EDDY_*` config overrides).
    pub taskmanager_env: Vec<(String, String)>,
}

/// The directory of the running `eddy` executable: where the server binaries
/// are installed next to it.
pub fn default_bin_dir() -> anyhow::Result<PathBuf> {
    std::env::current_exe()
        .context("cannot find the eddy executable")?
        .parent()
        .map(Path::to_path_buf)
        .context("the eddy executable has no parent directory")
}

pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// The OS process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// The started processes: the JobManagers first, then the TaskManagers.
pub struct LocalCluster {
    procs: Vec<Proc>,
    jobmanagers: usize,
    /// Every JobManager's REST URL, comma-separated (what `--url` takes).
    pub url: String,
    /// Each JobManager's REST URL, in id order.
    pub urls: Vec<String>,
    pub data_dir: PathBuf,
}

impl LocalCluster {
    /// Starts the JobManager, then each TaskManager, and waits until all of
    /// them registered. On failure, whatever started is stopped again.
    pub async fn start(opts: &Options) -> anyhow::Result<LocalCluster> {
        for bin in ["eddy-jobmanager", "eddy-taskmanager"] {
            if !opts.bin_dir.join(bin).is_file() {
                bail!(
                    "{bin} not found in {} (build the workspace, or pass --bin-dir)",
                    opts.bin_dir.display()
                );
            }
        }
        std::fs::create_dir_all(&opts.data_dir)
            .with_context(|| format!("cannot create {}", opts.data_dir.display()))?;
        let data_dir = opts
            .data_dir
            .canonicalize()
            .unwrap_or_else(|_| opts.data_dir.clone());
        let mut cluster = LocalCluster {
            procs: Vec::new(),
            jobmanagers: 0,
            url: String::new(),
            urls: Vec::new(),
            data_dir,
        };
        match cluster.start_all(opts).await {
            Ok(()) => Ok(cluster),
            Err(e) => {
                cluster.stop().await;
                Err(e.context(format!("logs are in {}", cluster.data_dir.display())))
            }
        }
    }

    async fn start_all(&mut self, opts: &Options) -> anyhow::Result<()> {
        if !(1..=9).contains(&opts.jobmanagers) {
            bail!(
                "--jobmanagers must be between 1 and 9 (3 or 5 for a fault-tolerant group), not {}",
                opts.jobmanagers
            );
        }
        let rpc_addrs = self.start_jobmanagers(opts).await?;
        for i in 0..opts.taskmanagers {
            let name = format!("taskmanager-{i}");
            let dir = self.data_dir.join(&name);
            std::fs::create_dir_all(&dir)?;
            let ready_file = dir.join("ready.json");
            let _ = std::fs::remove_file(&ready_file);
            let slots = opts.slots.to_string();
            let mut args = vec!["--id", name.as_str()];
            for addr in &rpc_addrs {
                args.extend(["--jobmanager", addr.as_str()]);
            }
            args.extend([
                "--slots",
                slots.as_str(),
                "--data-dir",
                path_str(&dir)?,
                "--ready-file",
                path_str(&ready_file)?,
            ]);
            if let Some(mem) = &opts.kpu_memory {
                args.extend(["--kpu-memory", mem.as_str()]);
            }
            let bin = opts.bin_dir.join("eddy-taskmanager");
            let tm = spawn(&name, &bin, &args, &opts.taskmanager_env, &dir)?;
            self.procs.push(tm);
            let idx = self.procs.len() - 1;
            wait_ready(&ready_file, &mut self.procs[idx]).await?;
        }

        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.leader_sees(opts.taskmanagers).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("TaskManagers did not register with the JobManager leader within 60s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.check_alive()?;
        }
    }

    /// Whether the JobManager that leads counts `n` TaskManagers (only the
    /// leader hears from them).
    async fn leader_sees(&self, n: u32) -> bool {
        for url in &self.urls {
            if let Ok(o) = Client::new(url).overview().await
                && o.is_leader
            {
                return o.taskmanagers >= n;
            }
        }
        false
    }

    /// Starts the JobManagers (a Raft group when there are several: each
    /// one's rpc port is chosen up front, since every member must know the
    /// others' addresses) and waits until each one is ready. Returns their
    /// rpc addresses.
    async fn start_jobmanagers(&mut self, opts: &Options) -> anyhow::Result<Vec<String>> {
        let n = opts.jobmanagers;
        let rpc_addrs: Vec<String> = if n == 1 {
            vec!["127.0.0.1:0".to_string()]
        } else {
            free_ports(n as usize)?
                .into_iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect()
        };
        let peers = if n == 1 {
            String::new()
        } else {
            rpc_addrs
                .iter()
                .enumerate()
                .map(|(i, a)| format!("{}={a}", i + 1))
                .collect::<Vec<_>>()
                .join(",")
        };
        // Jobs with a `checkpoint` section checkpoint into the cluster's own
        // directory unless they name a storage (a local cluster shares one
        // filesystem).
        let checkpoints = self.data_dir.join("checkpoints");
        let jm_env = [(
            "EDDY_CHECKPOINT__STORAGE".to_string(),
            path_str(&checkpoints)?.to_string(),
        )];
        let jm_bin = opts.bin_dir.join("eddy-jobmanager");
        let mut ready_files = Vec::new();
        for (i, rpc_addr) in rpc_addrs.iter().enumerate() {
            let id = (i + 1).to_string();
            let name = format!("jobmanager-{id}");
            let dir = self.data_dir.join(&name);
            std::fs::create_dir_all(&dir)?;
            let ready = dir.join("ready.json");
            let _ = std::fs::remove_file(&ready);
            let rest_port = if opts.rest_port == 0 {
                0
            } else {
                opts.rest_port
                    .checked_add(u16::try_from(i)?)
                    .context("the REST ports run past 65535")?
            };
            let rest_addr = format!("127.0.0.1:{rest_port}");
            let mut args = vec![
                "--id",
                id.as_str(),
                "--data-dir",
                path_str(&dir)?,
                "--rest-addr",
                &rest_addr,
                "--rpc-addr",
                rpc_addr.as_str(),
                "--heartbeat-timeout",
                &opts.heartbeat_timeout,
                "--ready-file",
                path_str(&ready)?,
            ];
            if !peers.is_empty() {
                args.extend(["--peers", peers.as_str()]);
            }
            self.procs
                .push(spawn(&name, &jm_bin, &args, &jm_env, &dir)?);
            self.jobmanagers += 1;
            ready_files.push(ready);
        }
        let mut bound = Vec::new();
        for (i, ready) in ready_files.iter().enumerate() {
            let ready = wait_ready(ready, &mut self.procs[i]).await?;
            self.urls
                .push(format!("http://{}", field(&ready, "rest_addr")?));
            bound.push(field(&ready, "rpc_addr")?);
        }
        self.url = self.urls.join(",");
        Ok(bound)
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url)
    }

    /// The TaskManager processes, in start order.
    pub fn taskmanagers(&self) -> &[Proc] {
        self.procs.get(self.jobmanagers..).unwrap_or_default()
    }

    /// An error naming the first process that exited, with its last log lines.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
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

    /// Resolves when any process exits.
    pub async fn first_exit(&mut self) -> anyhow::Error {
        loop {
            if let Err(e) = self.check_alive() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM every child (TaskManagers first), then SIGKILL whatever is
    /// still running after a grace period.
    pub async fn stop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        for p in self.procs.iter().rev() {
            if let Some(pid) = p.pid().and_then(|id| i32::try_from(id).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in self.procs.iter_mut().rev() {
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
}

/// `n` distinct ports free right now on the loopback interface. Another
/// process could take one before the JobManager binds it; the JobManager
/// then fails to start and says which address was taken.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot find free ports for the JobManagers")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

pub fn path_str(p: &Path) -> anyhow::Result<&str> {
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
fn spawn(
    name: &str,
    bin: &Path,
    args: &[&str],
    env: &[(String, String)],
    dir: &Path,
) -> anyhow::Result<Proc> {
    let log = dir.join("node.log");
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // prctl(2), which is async-signal-safe. It makes the kernel kill the child
    // when `eddy` dies, even by SIGKILL, so no process is left behind.
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

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

//! A whole cluster on this machine as separate processes — one JobManager and
//! N TaskManagers — started from the binaries next to `eddy`. Used by
//! `eddy local` and `eddy bench`.
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
    pub taskmanagers: u32,
    pub slots: u32,
    /// Memory of one KPU (e.g. `512MiB`); the TaskManager's default otherwise.
    pub kpu_memory: Option<String>,
    /// REST port of the JobManager; 0 picks a free one.
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

/// The started processes: the JobManager first, then the TaskManagers.
pub struct LocalCluster {
    procs: Vec<Proc>,
    pub url: String,
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
            url: String::new(),
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
        let jm_dir = self.data_dir.join("jobmanager-1");
        std::fs::create_dir_all(&jm_dir)?;
        let jm_ready = jm_dir.join("ready.json");
        let _ = std::fs::remove_file(&jm_ready);
        let rest_addr = format!("127.0.0.1:{}", opts.rest_port);
        let jm_args = [
            "--id",
            "1",
            "--data-dir",
            path_str(&jm_dir)?,
            "--rest-addr",
            &rest_addr,
            "--rpc-addr",
            "127.0.0.1:0",
            "--heartbeat-timeout",
            &opts.heartbeat_timeout,
            "--ready-file",
            path_str(&jm_ready)?,
        ];
        let jm_bin = opts.bin_dir.join("eddy-jobmanager");
        // Jobs with a `checkpoint` section checkpoint into the cluster's own
        // directory unless they name a storage (a local cluster shares one
        // filesystem).
        let checkpoints = self.data_dir.join("checkpoints");
        let jm_env = [(
            "EDDY_CHECKPOINT__STORAGE".to_string(),
            path_str(&checkpoints)?.to_string(),
        )];
        self.procs
            .push(spawn("jobmanager-1", &jm_bin, &jm_args, &jm_env, &jm_dir)?);
        let ready = wait_ready(&jm_ready, &mut self.procs[0]).await?;
        let rpc_addr = field(&ready, "rpc_addr")?;
        self.url = format!("http://{}", field(&ready, "rest_addr")?);

        for i in 0..opts.taskmanagers {
            let name = format!("taskmanager-{i}");
            let dir = self.data_dir.join(&name);
            std::fs::create_dir_all(&dir)?;
            let ready_file = dir.join("ready.json");
            let _ = std::fs::remove_file(&ready_file);
            let slots = opts.slots.to_string();
            let mut args = vec![
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
            if let Some(mem) = &opts.kpu_memory {
                args.extend(["--kpu-memory", mem.as_str()]);
            }
            let bin = opts.bin_dir.join("eddy-taskmanager");
            let tm = spawn(&name, &bin, &args, &opts.taskmanager_env, &dir)?;
            self.procs.push(tm);
            let idx = self.procs.len() - 1;
            wait_ready(&ready_file, &mut self.procs[idx]).await?;
        }

        let client = Client::new(&self.url);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.overview().await {
                Ok(o) if o.taskmanagers >= opts.taskmanagers => return Ok(()),
                _ if Instant::now() > deadline => {
                    bail!("TaskManagers did not register with the JobManager within 60s")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            self.check_alive()?;
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url)
    }

    /// The TaskManager processes, in start order.
    pub fn taskmanagers(&self) -> &[Proc] {
        self.procs.get(1..).unwrap_or_default()
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

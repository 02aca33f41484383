//! One process of a test cluster: a real binary started with its own
//! directory, log file and ready file, that a test can kill, pause, resume
//! and restart.

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One process of the cluster.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    bin: PathBuf,
    args: Vec<String>,
    /// Extra environment (`EDDY_*` configuration).
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Stopped with SIGSTOP and not resumed.
    paused: bool,
    /// Cut off the network ([`Cluster::cut`]) and not healed.
    pub(crate) cut: bool,
    /// The ready file's content from the last start.
    pub ready: serde_json::Value,
    /// `RUST_LOG` of the process.
    log_filter: String,
}

/// `RUST_LOG` of the cluster's processes: `EDDY_NODE_LOG` (default `info`),
/// then `extra` directives.
pub(crate) fn node_log_filter(extra: Option<&str>) -> String {
    let base = std::env::var("EDDY_NODE_LOG").unwrap_or_else(|_| "info".into());
    match extra {
        Some(extra) => format!("{base},{extra}"),
        None => base,
    }
}

impl Node {
    pub(crate) fn start(
        name: &str,
        bin: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        dir: PathBuf,
        log_filter: String,
    ) -> anyhow::Result<Node> {
        let mut node = Node {
            name: name.to_string(),
            dir,
            bin,
            args,
            env,
            child: None,
            paused: false,
            cut: false,
            ready: serde_json::Value::Null,
            log_filter,
        };
        node.spawn()?;
        Ok(node)
    }

    fn ready_file(&self) -> PathBuf {
        self.dir.join("ready.json")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let _ = std::fs::remove_file(self.ready_file());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (build the workspace first)",
                    self.bin.display()
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(self.ready_file())
                && let Ok(v) = serde_json::from_str(&text)
            {
                self.ready = v;
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{} exited during startup ({status}):\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            if Instant::now() > deadline {
                bail!("{} not ready within 60s:\n{}", self.name, self.log_tail(30));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        let pid = self.pid().context("process not running")?;
        kill(pid, sig).with_context(|| format!("cannot send {sig} to {}", self.name))
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
        Ok(())
    }

    /// SIGSTOP: the process stops answering but keeps its sockets.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    /// Started, not killed, not paused and not cut off: it can answer.
    pub fn is_live(&self) -> bool {
        self.child.is_some() && !self.paused && !self.cut
    }

    /// `http://<rest_addr>` (JobManagers).
    pub fn rest_url(&self) -> String {
        format!("http://{}", self.ready_str("rest_addr"))
    }

    /// Starts the process again with the same arguments and data directory,
    /// on the same ports it had bound (so peers and clients find it again).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9()?;
        for (flag, field) in [
            ("--rest-addr", "rest_addr"),
            ("--rpc-addr", "rpc_addr"),
            ("--metrics-addr", "metrics_addr"),
        ] {
            let bound = self.ready_str(field);
            if bound.is_empty() {
                continue;
            }
            if let Some(i) = self.args.iter().position(|a| a == flag) {
                self.args[i + 1] = bound;
            } else {
                self.args.extend([flag.to_string(), bound]);
            }
        }
        self.spawn()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn ready_str(&self, field: &str) -> String {
        self.ready
            .get(field)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    }

    /// The last lines of the node's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        format!(
            "--- {} ---\n{}",
            self.name,
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

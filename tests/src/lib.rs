//! The multi-process test harness: starts real `eddy-jobmanager` (one, or a
//! Raft group with `.jobmanagers(3)`, whose rpc ports are picked up front
//! since every member must know the others') and `eddy-taskmanager`
//! processes on loopback ports (port 0 + a ready file),
//! injects faults (SIGKILL, SIGSTOP/SIGCONT, restart), and cleans up.
//!
//! Binaries come from `EDDY_BIN_DIR`, else the cargo target directory this
//! test binary was built into. Dropping a [`Cluster`] SIGKILLs its processes;
//! `EDDY_TEST_KEEP=1` keeps the temp dirs (configs, logs, ready files) and
//! prints where they are.

use anyhow::{Context, bail};
use eddy_sdk::client::Client;
use eddy_sdk::rest::{JobDetail, JobState};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod ha;
pub mod kafka;
pub mod members;
pub mod netns;
pub mod nexmark_reference;
mod node;
pub mod windowed_job;

pub use node::Node;
pub(crate) use node::node_log_filter;

/// Where the built binaries are.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("EDDY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf()
}

/// The sum of the samples of `metric` in Prometheus text whose labels
/// include every `(name, value)` of `labels`.
pub fn metric_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: Vec<String> = labels
        .iter()
        .map(|(name, value)| format!("{name}=\"{value}\""))
        .collect();
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter(|l| wanted.iter().all(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Logs of the test itself (`RUST_LOG` filters).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// How to start a cluster.
pub struct ClusterBuilder {
    jobmanagers: usize,
    taskmanagers: usize,
    slots: u32,
    heartbeat_timeout: String,
    kpu_memory: Option<String>,
    netns: bool,
    jobmanager_env: Vec<(String, String)>,
    log: Option<String>,
}

impl ClusterBuilder {
    /// JobManagers: 1 (the default) or a Raft group of 3 or 5, with ids
    /// 1..=n named `jobmanager-<id>`.
    pub fn jobmanagers(mut self, n: usize) -> Self {
        self.jobmanagers = n.max(1);
        self
    }
    pub fn taskmanagers(mut self, n: usize) -> Self {
        self.taskmanagers = n;
        self
    }
    pub fn slots(mut self, n: u32) -> Self {
        self.slots = n;
        self
    }
    /// How long the JobManager waits for heartbeats before a TaskManager is lost.
    pub fn heartbeat_timeout(mut self, t: &str) -> Self {
        self.heartbeat_timeout = t.to_string();
        self
    }
    pub fn kpu_memory(mut self, m: &str) -> Self {
        self.kpu_memory = Some(m.to_string());
        self
    }
    /// Sets an environment variable of every JobManager (an `EDDY_*`
    /// configuration key, e.g. `EDDY_RAFT__SNAPSHOT_LOGS`).
    pub fn jobmanager_env(mut self, key: &str, value: &str) -> Self {
        self.jobmanager_env.push((key.into(), value.into()));
        self
    }
    /// More `RUST_LOG` directives for every process, after `EDDY_NODE_LOG`
    /// (default `info`), e.g. `eddy_taskmanager::operators::kafka=debug`.
    pub fn node_log(mut self, directives: &str) -> Self {
        self.log = Some(directives.to_string());
        self
    }
    /// Runs every process in its own network namespace ([`netns`]), so
    /// [`Cluster::cut`] can partition one off. Needs root.
    pub fn network_namespaces(mut self) -> Self {
        self.netns = true;
        self
    }

    pub async fn start(self) -> anyhow::Result<Cluster> {
        init_logging();
        let dir = tempfile::Builder::new().prefix("eddy-test-").tempdir()?;
        let bins = bin_dir();
        let mut net = if self.netns {
            Some(netns::Network::create()?)
        } else {
            None
        };
        let names: Vec<String> = (1..=self.jobmanagers)
            .map(|id| format!("jobmanager-{id}"))
            .collect();
        // A group's members must know each other's rpc addresses up front.
        let rpc_addrs: Vec<String> = if let Some(net) = &mut net {
            // Each namespace has its own ports: any fixed one is free.
            names
                .iter()
                .map(|name| Ok(format!("{}:6123", net.add_host(name)?.ip)))
                .collect::<anyhow::Result<_>>()?
        } else if self.jobmanagers == 1 {
            vec!["127.0.0.1:0".into()]
        } else {
            free_ports(self.jobmanagers)?
                .into_iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect()
        };
        let peers = rpc_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut jms = Vec::new();
        for (i, rpc_addr) in rpc_addrs.iter().enumerate() {
            let name = &names[i];
            let jm_dir = dir.path().join(name);
            let rest_addr = match &net {
                Some(net) => format!("{}:0", net.host(name).expect("added above").ip),
                None => "127.0.0.1:0".into(),
            };
            let mut args: Vec<String> = vec![
                "--id".into(),
                (i + 1).to_string(),
                "--data-dir".into(),
                jm_dir.display().to_string(),
                "--rest-addr".into(),
                rest_addr,
                "--rpc-addr".into(),
                rpc_addr.clone(),
                "--heartbeat-timeout".into(),
                self.heartbeat_timeout.clone(),
                "--ready-file".into(),
                jm_dir.join("ready.json").display().to_string(),
            ];
            if self.jobmanagers > 1 {
                args.extend(["--peers".into(), peers.clone()]);
            }
            let (bin, args) = in_namespace(net.as_ref(), name, bins.join("eddy-jobmanager"), args);
            jms.push(Node::start(
                name,
                bin,
                args,
                self.jobmanager_env.clone(),
                jm_dir,
                node_log_filter(self.log.as_deref()),
            )?);
        }
        let mut cluster = Cluster {
            dir: Some(dir),
            jms,
            tms: Vec::new(),
            slots: self.slots,
            kpu_memory: self.kpu_memory,
            net,
            jobmanager_env: self.jobmanager_env,
            heartbeat_timeout: self.heartbeat_timeout,
            log: self.log,
        };
        for _ in 0..self.taskmanagers {
            cluster.add_taskmanager()?;
        }
        cluster.wait_for_taskmanagers(self.taskmanagers).await?;
        Ok(cluster)
    }
}

/// The command line that runs `bin args` as process `name`: in its own
/// network namespace when the cluster has them.
fn in_namespace(
    net: Option<&netns::Network>,
    name: &str,
    bin: PathBuf,
    args: Vec<String>,
) -> (PathBuf, Vec<String>) {
    match net {
        Some(net) => {
            let (bin, args) = net.wrap(name, &bin, args);
            (PathBuf::from(bin), args)
        }
        None => (bin, args),
    }
}

/// `n` distinct loopback ports free right now (a JobManager group's rpc
/// ports, which every member must know before any of them starts).
pub(crate) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// A running cluster of real processes.
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    /// The JobManagers, `jms[i]` with Raft id `i + 1`.
    pub jms: Vec<Node>,
    pub tms: Vec<Node>,
    slots: u32,
    kpu_memory: Option<String>,
    /// The network namespaces, when the cluster runs in them (dropped after
    /// the processes).
    net: Option<netns::Network>,
    /// Extra environment of every JobManager.
    pub(crate) jobmanager_env: Vec<(String, String)>,
    /// The JobManagers' `--heartbeat-timeout`.
    pub(crate) heartbeat_timeout: String,
    /// Extra `RUST_LOG` directives ([`ClusterBuilder::node_log`]).
    pub(crate) log: Option<String>,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            jobmanagers: 1,
            taskmanagers: 2,
            slots: 1,
            heartbeat_timeout: "3s".into(),
            kpu_memory: Some("256MiB".into()),
            netns: false,
            jobmanager_env: Vec::new(),
            log: None,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the temp dir lives as long as the cluster")
            .path()
    }

    /// The REST URLs of the JobManagers that can answer (not killed, not
    /// paused), comma-separated: what a [`Client`] takes.
    pub fn rest_url(&self) -> String {
        let live: Vec<String> = self
            .jms
            .iter()
            .filter(|n| n.is_live())
            .map(Node::rest_url)
            .collect();
        if live.is_empty() {
            // Nothing answers; the first one's URL gives a clear error.
            return self.jms[0].rest_url();
        }
        live.join(",")
    }

    /// A client of every JobManager that can answer.
    pub fn client(&self) -> Client {
        Client::new(&self.rest_url())
    }

    /// A client of JobManager `jms[i]` alone.
    pub fn client_of(&self, i: usize) -> Client {
        Client::new(&self.jms[i].rest_url())
    }

    /// The index in `jms` of the JobManager that says it leads, among those
    /// that can answer.
    pub async fn leader(&self) -> Option<usize> {
        for i in (0..self.jms.len()).filter(|i| self.jms[*i].is_live()) {
            if let Ok(o) = self.client_of(i).overview().await
                && o.is_leader
            {
                return Some(i);
            }
        }
        None
    }

    /// Waits until a JobManager that can answer leads, other than
    /// `jms[not]`, and returns its index.
    pub async fn wait_for_leader(&self, not: Option<usize>) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(i) = self.leader().await
                && Some(i) != not
            {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("no JobManager leads\n{}", self.log_tails(40));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts one more TaskManager (named `taskmanager-<n>`).
    pub fn add_taskmanager(&mut self) -> anyhow::Result<&mut Node> {
        let i = self.tms.len();
        let name = format!("taskmanager-{i}");
        let dir = self.dir().join(&name);
        let mut args = vec!["--id".to_string(), name.clone()];
        for jm in &self.jms {
            args.extend(["--jobmanager".into(), jm.ready_str("rpc_addr")]);
        }
        args.extend([
            "--slots".into(),
            self.slots.to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--ready-file".into(),
            dir.join("ready.json").display().to_string(),
        ]);
        if let Some(m) = &self.kpu_memory {
            args.extend(["--kpu-memory".into(), m.clone()]);
        }
        if let Some(net) = &mut self.net {
            let ip = net.add_host(&name)?.ip;
            args.extend([
                "--rpc-addr".into(),
                format!("{ip}:0"),
                "--metrics-addr".into(),
                format!("{ip}:0"),
            ]);
        }
        let (bin, args) = in_namespace(
            self.net.as_ref(),
            &name,
            bin_dir().join("eddy-taskmanager"),
            args,
        );
        let node = Node::start(
            &name,
            bin,
            args,
            Vec::new(),
            dir,
            node_log_filter(self.log.as_deref()),
        )?;
        self.tms.push(node);
        Ok(self.tms.last_mut().expect("just pushed"))
    }

    /// Cuts process `name` off the network: every link to and from it
    /// (JobManagers, TaskManagers, the test) drops its packets until
    /// [`Cluster::heal`]. Needs [`ClusterBuilder::network_namespaces`].
    pub fn cut(&mut self, name: &str) -> anyhow::Result<()> {
        self.net
            .as_ref()
            .context("the cluster runs without network namespaces")?
            .cut(name)?;
        self.node_mut(name)?.cut = true;
        Ok(())
    }

    /// Plugs a process cut off by [`Cluster::cut`] back in.
    pub fn heal(&mut self, name: &str) -> anyhow::Result<()> {
        self.net
            .as_ref()
            .context("the cluster runs without network namespaces")?
            .heal(name)?;
        self.node_mut(name)?.cut = false;
        Ok(())
    }

    fn node_mut(&mut self, name: &str) -> anyhow::Result<&mut Node> {
        self.jms
            .iter_mut()
            .chain(self.tms.iter_mut())
            .find(|n| n.name == name)
            .with_context(|| format!("no process named {name}"))
    }

    /// Waits until the leader counts `n` live TaskManagers (only the
    /// leader hears from them).
    pub async fn wait_for_taskmanagers(&self, n: usize) -> anyhow::Result<()> {
        let clients: Vec<Client> = (0..self.jms.len())
            .filter(|i| self.jms[*i].is_live())
            .map(|i| self.client_of(i))
            .collect();
        self.wait_until(
            Duration::from_secs(60),
            &format!("{n} TaskManagers registered"),
            || {
                let clients = clients.clone();
                async move {
                    for c in &clients {
                        if let Ok(o) = c.overview().await
                            && o.is_leader
                        {
                            return Ok(o.taskmanagers as usize >= n);
                        }
                    }
                    Ok(false)
                }
            },
        )
        .await
    }

    /// Polls `check` until it returns true; fails with every node's log tail
    /// after `timeout` (a generous bound against hangs, not a speed assertion).
    pub async fn wait_until<F, Fut>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if check().await? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for: {what}\n{}", self.log_tails(40));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the job reaches `state`; fails early if it reaches another
    /// terminal state.
    pub async fn wait_for_job_state(
        &self,
        job_id: &str,
        state: JobState,
        timeout: Duration,
    ) -> anyhow::Result<JobDetail> {
        let client = self.client();
        let deadline = Instant::now() + timeout;
        loop {
            match client.job(job_id).await {
                Ok(job) if job.state == state => return Ok(job),
                Ok(job) if job.state.is_terminal() => {
                    bail!(
                        "job {job_id} ended {} while waiting for {state}: {:?}\n{}",
                        job.state,
                        job.failure,
                        self.log_tails(40)
                    )
                }
                _ => {}
            }
            if Instant::now() > deadline {
                let last = client
                    .job(job_id)
                    .await
                    .map(|j| j.state.to_string())
                    .unwrap_or_else(|e| e.to_string());
                bail!(
                    "job {job_id} did not reach {state} (last: {last})\n{}",
                    self.log_tails(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tails(&self, lines: usize) -> String {
        self.jms
            .iter()
            .chain(self.tms.iter())
            .map(|n| n.log_tail(lines))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for tm in &mut self.tms {
            let _ = tm.kill9();
        }
        for jm in &mut self.jms {
            let _ = jm.kill9();
        }
        if std::env::var("EDDY_TEST_KEEP").is_ok_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            let path = dir.keep();
            eprintln!("EDDY_TEST_KEEP=1: cluster files kept in {}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn metric_sum_adds_the_series_with_every_wanted_label() {
        let text = "# TYPE m counter\n\
                    m_total{job_id=\"a\",node=\"x\"} 2\n\
                    m_total{job_id=\"a\",node=\"y\"} 3\n\
                    m_total{job_id=\"b\",node=\"x\"} 5\n\
                    m_total_other{job_id=\"a\",node=\"x\"} 7\n\
                    n_total 11\n";
        assert_eq!(metric_sum(text, "m_total", &[]), 10.0);
        assert_eq!(metric_sum(text, "m_total", &[("job_id", "a")]), 5.0);
        assert_eq!(
            metric_sum(text, "m_total", &[("job_id", "a"), ("node", "x")]),
            2.0
        );
        assert_eq!(metric_sum(text, "n_total", &[]), 11.0);
    }
}

//! A Kafka-protocol broker for tests: tansu 0.6.0 with our transactions patch
//! (`scripts/tansu/`), built by `scripts/setup.sh` into a cache outside the
//! clone. [`KafkaBroker::start`] runs it on a free loopback port; the helpers
//! create topics, produce sequence-numbered JSON records and consume with
//! `read_committed`.
//!
//! When setup was told not to install it (`EDDY_SKIP_KAFKA_BROKER=1`) and the
//! binary is missing, [`broker_bin`] returns `None` and tests skip with a
//! message; otherwise a missing binary fails the test.

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on waiting for the broker to answer (against hangs only).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The patched tansu binary, or `None` when setup skipped it on purpose.
/// Panics with what to run when it is missing otherwise.
pub fn broker_bin() -> Option<PathBuf> {
    if let Ok(bin) = std::env::var("EDDY_KAFKA_BROKER_BIN") {
        return Some(PathBuf::from(bin));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tansu/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--path")
        .output()
        .expect("scripts/tansu/build.sh runs");
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if bin.is_file() {
        return Some(bin);
    }
    if std::env::var("EDDY_SKIP_KAFKA_BROKER").as_deref() == Ok("1") {
        eprintln!(
            "SKIPPED: no Kafka broker at {} (EDDY_SKIP_KAFKA_BROKER=1); run scripts/setup.sh without it to test against one",
            bin.display()
        );
        return None;
    }
    panic!(
        "the Kafka test broker is missing at {}: run scripts/setup.sh (or set EDDY_SKIP_KAFKA_BROKER=1 to skip these tests)",
        bin.display()
    );
}

/// Where the broker keeps its data.
#[derive(Clone, Debug)]
pub enum Engine {
    /// In memory: fast, lost when the process ends.
    Memory,
    /// A SQLite file in this directory: survives a restart.
    Sqlite(PathBuf),
}

/// One tansu broker process on a loopback port.
pub struct KafkaBroker {
    bin: PathBuf,
    engine: Engine,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl KafkaBroker {
    /// Starts a broker and waits until it answers a metadata request.
    /// `None` when the tests are to be skipped (see [`broker_bin`]).
    pub fn start(engine: Engine) -> anyhow::Result<Option<Self>> {
        let Some(bin) = broker_bin() else {
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("tansu.log");
        let mut broker = Self {
            bin,
            engine,
            port: 0,
            child: None,
            log,
            _dir: dir,
        };
        // tansu binds the port it is given (no port 0 + ready file), so pick a
        // free one and retry if another process takes it meanwhile.
        let mut last = None;
        for _ in 0..5 {
            broker.port = free_port()?;
            match broker.spawn_and_wait() {
                Ok(()) => return Ok(Some(broker)),
                Err(e) => {
                    broker.kill9();
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// The broker's process id while it runs (for CPU accounting).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        // tansu opens a sqlite:// URL's path relative to its working
        // directory, so it runs in the data directory.
        let (storage, cwd) = match &self.engine {
            Engine::Memory => ("memory://tansu/", self._dir.path().to_path_buf()),
            Engine::Sqlite(dir) => {
                std::fs::create_dir_all(dir)?;
                ("sqlite://tansu.db", dir.clone())
            }
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--storage-engine")
            .arg(storage)
            .current_dir(cwd)
            .env(
                "RUST_LOG",
                std::env::var("EDDY_KAFKA_BROKER_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let consumer: BaseConsumer = self.config().create()?;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "tansu exited with {status} before answering: {}",
                    self.log_tail()
                );
            }
            if consumer
                .fetch_metadata(None, Duration::from_secs(2))
                .is_ok_and(|m| !m.brokers().is_empty())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "tansu did not answer within {READY_TIMEOUT:?}: {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of the broker's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A client config with `bootstrap.servers` set.
    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap())
            .set("broker.address.family", "v4");
        config
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (SIGTERM) and starts again on the same port and storage.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn_and_wait()
    }

    /// Starts again after [`Self::stop`] or [`Self::kill9`].
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn_and_wait()
    }

    /// Creates a topic with `partitions` partitions.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        let results = admin
            .create_topics(
                &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await?;
        for result in results {
            result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
        }
        Ok(())
    }

    /// A transactional producer with this id, `init_transactions` done.
    pub fn transactional_producer(&self, id: &str) -> anyhow::Result<BaseProducer> {
        let producer: BaseProducer = self
            .config()
            .set("transactional.id", id)
            .set("enable.idempotence", "true")
            .create()?;
        producer.init_transactions(Duration::from_secs(30))?;
        Ok(producer)
    }

    /// Produces `{"seq": n}` for each `n` in `seqs` (key = n) round-robin
    /// over `partitions` partitions, without a transaction, and flushes.
    pub fn produce_seq(
        &self,
        topic: &str,
        partitions: i32,
        seqs: std::ops::Range<u64>,
    ) -> anyhow::Result<()> {
        let producer: BaseProducer = self.config().create()?;
        send_seq(&producer, topic, partitions, seqs)?;
        producer.flush(Duration::from_secs(30))?;
        Ok(())
    }

    /// Reads `topic` from the beginning with `isolation.level=read_committed`
    /// until `idle` passes without a new record; returns the payloads in
    /// the order read, per partition.
    pub fn consume_committed(&self, topic: &str, idle: Duration) -> anyhow::Result<Vec<String>> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", format!("eddy-test-{}", rand::random::<u64>()))
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()?;
        consumer.subscribe(&[topic])?;
        let mut out = Vec::new();
        let mut last = Instant::now();
        let hard = Instant::now() + Duration::from_secs(120);
        while last.elapsed() < idle && Instant::now() < hard {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into());
                    last = Instant::now();
                }
                Some(Err(e)) => bail!("consuming {topic}: {e}"),
                None => {}
            }
        }
        Ok(out)
    }
}

/// Sends `{"seq": n}` for each `n` (key = n) to partition `n % partitions`.
pub fn send_seq(
    producer: &BaseProducer,
    topic: &str,
    partitions: i32,
    seqs: std::ops::Range<u64>,
) -> anyhow::Result<()> {
    for n in seqs {
        let key = n.to_string();
        let payload = format!("{{\"seq\":{n}}}");
        let partition = (n % partitions as u64) as i32;
        let mut record = BaseRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    producer.poll(Duration::from_millis(50));
                    record = r;
                }
                Err((e, _)) => bail!("producing to {topic}: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    Ok(())
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Bound on reading a topic (against hangs only).
const READ_BOUND: Duration = Duration::from_secs(120);

/// Produces `values` (partition, payload) without a transaction, and flushes.
pub fn produce(servers: &str, topic: &str, values: &[(i32, &str)]) -> anyhow::Result<()> {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()?;
    for (partition, v) in values {
        p.send(
            BaseRecord::<(), str>::to(topic)
                .partition(*partition)
                .payload(*v),
        )
        .map_err(|(e, _)| e)?;
    }
    p.flush(Duration::from_secs(90))?;
    Ok(())
}

/// Reads `topic` (all partitions, read_committed) until `want` records came,
/// then as long as more keep coming within `quiet`: the values.
pub fn read_all(
    servers: &str,
    topic: &str,
    want: usize,
    quiet: Duration,
) -> anyhow::Result<Vec<String>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", format!("checker-{}", rand::random::<u64>()))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    c.subscribe(&[topic])?;
    let deadline = Instant::now() + READ_BOUND;
    let mut out = Vec::new();
    let mut last = Instant::now();
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "read {} of {want} records of {topic}",
            out.len()
        );
        match c.poll(Duration::from_millis(100)) {
            Some(m) => {
                let m = m?;
                out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
                last = Instant::now();
            }
            None if out.len() >= want && last.elapsed() >= quiet => return Ok(out),
            None => {}
        }
    }
}

/// The `seq` field of JSON values, sorted.
pub fn sorted_seqs(values: &[String]) -> Vec<i64> {
    let mut seqs: Vec<i64> = values
        .iter()
        .map(|v| {
            let v: serde_json::Value = serde_json::from_str(v).expect("JSON values");
            v["seq"].as_i64().expect("a seq")
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

/// `rounds` times, 2.5 s apart: SIGKILLs a TaskManager that runs a subtask
/// of `job` and starts it again a second later (it registers as a spare).
pub async fn kill_job_taskmanagers(
    cluster: &mut crate::Cluster,
    job: &str,
    rounds: usize,
) -> anyhow::Result<()> {
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let detail = cluster.client().job(job).await?;
        let victim = (0..cluster.tms.len())
            .find(|i| {
                let name = format!("taskmanager-{i}");
                detail
                    .vertices
                    .iter()
                    .any(|v| v.subtasks.iter().any(|s| s.taskmanager == name))
            })
            .unwrap_or(round % cluster.tms.len());
        tracing::info!(round, victim, "--- SIGKILL a TaskManager running the job");
        cluster.tms[victim].kill9()?;
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        cluster.tms[victim].restart()?;
    }
    Ok(())
}

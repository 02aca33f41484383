//! What the benchmark reads from the processes it runs: the TaskManagers'
//! Kafka counters (Prometheus text on `/metrics`) and CPU seconds and peak
//! RSS from `/proc`.

use anyhow::Context;
use std::time::Instant;

/// Sums `name` over the series of `node` in job `job` in one `/metrics` text.
pub fn counter(text: &str, name: &str, job: &str, node: &str) -> u64 {
    eddy_tests::metric_sum(text, name, &[("job_id", job), ("node", node)]) as u64
}

/// The Kafka source's records read and the sink's records produced (for
/// `exactly_once`, committed), summed over the TaskManagers.
pub async fn kafka_counts(
    http: &reqwest::Client,
    metrics_urls: &[String],
    job: &str,
) -> anyhow::Result<(u64, u64)> {
    let (mut read, mut written) = (0, 0);
    for url in metrics_urls {
        let text = http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("GET {url}"))?
            .text()
            .await?;
        read += counter(&text, "eddy_taskmanager_kafka_records_in_total", job, "src");
        written += counter(
            &text,
            "eddy_taskmanager_kafka_records_out_total",
            job,
            "out",
        );
    }
    Ok((read, written))
}

/// User + system CPU seconds of a process so far (0 if it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / clock_ticks() as f64
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t as u64)
}

/// Peak resident set size of a process in MiB (`VmHWM`), 0 if unknown.
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The 1-minute load average.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// CPU seconds of a set of processes between two points in time.
pub struct CpuWindow {
    pids: Vec<Vec<u32>>,
    start: Vec<f64>,
    at: Instant,
}

impl CpuWindow {
    /// Starts counting for groups of processes (e.g. the broker, the
    /// TaskManagers, this process).
    pub fn start(pids: Vec<Vec<u32>>) -> Self {
        let start = pids.iter().map(|g| group_cpu(g)).collect();
        Self {
            pids,
            start,
            at: Instant::now(),
        }
    }

    /// Each group's CPU use since the start, in % of one core.
    pub fn percent(&self) -> Vec<f64> {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        self.pids
            .iter()
            .zip(&self.start)
            .map(|(g, s)| (group_cpu(g) - s) / wall * 100.0)
            .collect()
    }
}

fn group_cpu(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

//! The results of `eddy bench`: a JSON document and a markdown table.

use serde::{Deserialize, Serialize};
use std::fmt::Write;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// When the run started (RFC 3339, UTC).
    pub date: String,
    /// The build's commit, when known (`EDDY_COMMIT` or `git` in the cwd).
    pub commit: Option<String>,
    pub machine: Machine,
    /// The command line that produced this report.
    pub command: String,
    pub runs: Vec<ThroughputRun>,
    pub latency: Vec<LatencyRun>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: Option<String>,
    pub memory_bytes: Option<u64>,
    pub kernel: Option<String>,
}

/// One query at one parallelism, flat out over a fixed number of events.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThroughputRun {
    pub query: String,
    pub parallelism: u32,
    pub job_id: String,
    /// Events generated, all three types counted (Nexmark's convention).
    pub events: u64,
    /// Rows the source emitted (the events of the query's table).
    pub source_rows: u64,
    /// Rows that reached the sink.
    pub sink_rows: u64,
    /// The JobManager's RUNNING-to-FINISHED time of the job.
    pub seconds: f64,
    pub events_per_second: f64,
    pub events_per_second_per_slot: f64,
    /// The sources' rate in the middle of the run (10% to 90% of each
    /// source subtask's rows), in events: without the job's start and end.
    #[serde(default)]
    pub steady_events_per_second: Option<f64>,
    /// CPU (user + system) of all TaskManagers per million events.
    pub cpu_seconds_per_million_events: f64,
    /// Peak resident memory of each TaskManager during the run.
    pub peak_rss_bytes: Vec<u64>,
    /// Bytes the subtasks sent over remote (TaskManager-to-TaskManager) channels.
    pub bytes_between_taskmanagers: u64,
    /// Records windows dropped as late (0 expected: the generator's event
    /// time is monotone per subtask).
    pub late_records_dropped: u64,
    /// The checkpoints the run completed (`--checkpoint-interval`), as the
    /// JobManager counted them; the last one is the job's final checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<CheckpointFigures>,
    /// Where the results were written (`--write-output`), else discarded.
    pub output_dir: Option<String>,
    /// The spec as submitted.
    pub spec: serde_json::Value,
}

/// A run's checkpoints, from `GET /v1/jobs/{id}/checkpoints`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointFigures {
    pub completed: u64,
    pub failed: u64,
    /// State size over all subtasks: average and largest checkpoint.
    pub avg_state_bytes: u64,
    pub max_state_bytes: u64,
    /// Trigger to completion: average and longest.
    pub avg_duration_ms: u64,
    pub max_duration_ms: u64,
}

/// One query paced at a fixed rate below capacity: latency-marker ages at the sink.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyRun {
    pub query: String,
    pub parallelism: u32,
    pub events_per_second: f64,
    pub seconds: f64,
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn millions(x: f64) -> String {
    format!("{:.2}M", x / 1e6)
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1024.0 * 1024.0))
}

fn mib_or_bytes(bytes: u64) -> String {
    if bytes < 1024 * 1024 {
        format!("{bytes} B")
    } else {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
    }
}

impl Report {
    /// The results as a markdown section: one row per query and parallelism,
    /// latency on the rows of the parallelism it was measured at.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "Measured {} on {} CPUs ({}), {} GiB, Linux {}; commit {}.\n",
            self.date,
            m.cpus,
            m.cpu_model.as_deref().unwrap_or("unknown CPU"),
            m.memory_bytes
                .map_or_else(|| "?".into(), |b| format!("{:.0}", b as f64 / 1073741824.0)),
            m.kernel.as_deref().unwrap_or("?"),
            self.commit.as_deref().unwrap_or("unknown"),
        );
        let _ = writeln!(s, "Command: `{}`\n", self.command);
        s.push_str(
            "| query | p | events | events/s | steady events/s | events/s/slot | CPU s / M events | peak RSS per TM (MiB) | bytes between TMs | latency p50 / p99 (ms) |\n",
        );
        s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.runs {
            let latency = self
                .latency
                .iter()
                .find(|l| l.query == r.query && l.parallelism == r.parallelism)
                .map_or_else(
                    || "–".to_string(),
                    |l| format!("{:.1} / {:.1}", l.p50_ms, l.p99_ms),
                );
            let rss: Vec<String> = r.peak_rss_bytes.iter().map(|b| mib(*b)).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {} |",
                r.query,
                r.parallelism,
                millions(r.events as f64),
                millions(r.events_per_second),
                r.steady_events_per_second
                    .map_or_else(|| "–".to_string(), millions),
                millions(r.events_per_second_per_slot),
                r.cpu_seconds_per_million_events,
                rss.join(" / "),
                mib_or_bytes(r.bytes_between_taskmanagers),
                latency,
            );
        }
        let checkpointed: Vec<&ThroughputRun> = self
            .runs
            .iter()
            .filter(|r| r.checkpoints.is_some())
            .collect();
        if !checkpointed.is_empty() {
            s.push_str("\n| query | p | checkpoints completed / failed | state avg / max (MiB) | duration avg / max (ms) |\n");
            s.push_str("|---|---|---|---|---|\n");
            for r in checkpointed {
                if let Some(c) = &r.checkpoints {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} / {} | {} / {} | {} / {} |",
                        r.query,
                        r.parallelism,
                        c.completed,
                        c.failed,
                        mib(c.avg_state_bytes),
                        mib(c.max_state_bytes),
                        c.avg_duration_ms,
                        c.max_duration_ms,
                    );
                }
            }
        }
        if let Some(l) = self.latency.first() {
            let _ = writeln!(
                s,
                "\nLatency: each query paced at {} events/s for {:.0} s at parallelism {}; \
                 ages of latency markers at the sink (markers are not held back by windows).",
                l.events_per_second, l.seconds, l.parallelism
            );
        }
        s
    }
}

/// What this machine is, from `/proc` and `uname`.
pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|k| k.trim().to_string());
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_model,
        memory_bytes,
        kernel,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn markdown_puts_latency_on_its_parallelism_row() {
        let run = |p: u32| ThroughputRun {
            query: "q0".into(),
            parallelism: p,
            job_id: "j".into(),
            events: 10_000_000,
            source_rows: 9_200_000,
            sink_rows: 9_200_000,
            seconds: 1.0,
            events_per_second: 10e6,
            events_per_second_per_slot: 10e6 / f64::from(p),
            steady_events_per_second: Some(11e6),
            cpu_seconds_per_million_events: 0.1,
            peak_rss_bytes: vec![64 << 20, 32 << 20],
            bytes_between_taskmanagers: 0,
            late_records_dropped: 0,
            checkpoints: (p == 2).then_some(CheckpointFigures {
                completed: 4,
                failed: 0,
                avg_state_bytes: 3 << 20,
                max_state_bytes: 5 << 20,
                avg_duration_ms: 120,
                max_duration_ms: 300,
            }),
            output_dir: None,
            spec: serde_json::Value::Null,
        };
        let report = Report {
            date: "2026-11-23T00:00:00Z".into(),
            commit: Some("abc".into()),
            machine: machine(),
            command: "eddy bench".into(),
            runs: vec![run(1), run(2)],
            latency: vec![LatencyRun {
                query: "q0".into(),
                parallelism: 2,
                events_per_second: 100_000.0,
                seconds: 10.0,
                samples: 100,
                p50_ms: 1.25,
                p99_ms: 7.5,
            }],
        };
        let md = report.markdown();
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| q0")).collect();
        assert_eq!(rows.len(), 3, "two runs and one checkpointed run");
        assert_eq!(rows[2], "| q0 | 2 | 4 / 0 | 3 / 5 | 120 / 300 |");
        assert!(rows[0].ends_with("| – |"), "{}", rows[0]);
        assert!(rows[1].contains("| 1.2 / 7.5 |"), "{}", rows[1]);
        assert!(rows[0].contains("| 64 / 32 |"), "{}", rows[0]);
    }
}

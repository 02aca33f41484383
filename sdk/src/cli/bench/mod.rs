//! `eddy bench`: the Nexmark suite on a local cluster of real processes.
//!
//! Starts one JobManager and one TaskManager per slot needed (one slot each,
//! so parallelism 2 crosses process boundaries), then runs every query at
//! every parallelism flat out over a fixed number of events, measuring:
//!
//! * throughput: events over the JobManager's RUNNING-to-FINISHED time, and
//!   the steady rate in the middle of the run (`progress.rs`);
//! * CPU seconds of all TaskManagers per million events (`/proc`);
//! * each TaskManager's peak RSS during the run (reset between runs);
//! * bytes sent over remote channels (TaskManager to TaskManager);
//!
//! and then, per query, a separate run paced at a fixed rate below capacity
//! whose sink records the ages of latency markers (p50/p99).
//!
//! Results go to `<out>/results.json` and `<out>/results.md`. `--quick` is the
//! CI mode: few events, parallelism 2, every query's output written to
//! `<out>/output/<query>-p<p>/` for the correctness check in the test suite.

mod procstat;
mod progress;
mod queries;
mod report;

use super::cluster::{LocalCluster, Options, default_bin_dir};
use crate::client::Client;
use crate::rest::{JobDetail, JobState};
use anyhow::{Context, bail};
use progress::Progress;
use queries::{Query, Run};
use report::{LatencyRun, Report, ThroughputRun};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Events per throughput run (all three Nexmark types counted).
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Parallelisms to run each query at.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2])]
    parallelism: Vec<u32>,
    /// Queries to run (default: all of q0 q1 q2 q5 q11 q12).
    #[arg(long, value_delimiter = ',')]
    queries: Vec<String>,
    /// CI mode: 200 000 events at 1 000 events per second of event time (so
    /// bidders have several sessions and windows), parallelism 2, 2 s latency
    /// runs, results written to files for checking.
    #[arg(long)]
    quick: bool,
    /// Pace of the latency runs, events per second over all subtasks.
    #[arg(long, default_value_t = 100_000.0)]
    latency_rate: f64,
    /// Length of each latency run, in seconds of wall time (0: no latency runs).
    #[arg(long, default_value_t = 10.0)]
    latency_seconds: f64,
    /// Parallelism of the latency runs.
    #[arg(long, default_value_t = 2)]
    latency_parallelism: u32,
    /// Write every throughput run's results as JSON lines under `<out>/output/`.
    #[arg(long)]
    write_output: bool,
    /// Where results go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Memory of one KPU (e.g. `1GiB`); the TaskManager's default otherwise.
    #[arg(long)]
    kpu_memory: Option<String>,
    /// Where `eddy-jobmanager` and `eddy-taskmanager` are (default: next to `eddy`).
    #[arg(long, env = "EDDY_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Take checkpoints this often in the throughput runs (e.g. `10s`), into
    /// the cluster's directory; none by default.
    #[arg(long)]
    checkpoint_interval: Option<String>,
    /// The state backend of checkpointed runs: memory or rocksdb.
    #[arg(long, default_value = "memory")]
    state_backend: String,
    /// Events per second of event time in the throughput runs, over all
    /// subtasks (default: Nexmark's 10 000). Flat out, the generator then
    /// runs event time about 1 000 times faster than the wall clock; a rate
    /// near the throughput makes event time follow the wall clock, as in a
    /// live stream.
    #[arg(long)]
    event_time_rate: Option<f64>,
    /// Watermark alignment of the windows in the throughput runs (e.g.
    /// `10s` of event time): an upstream subtask this far ahead of the
    /// slowest is not read until it catches up. Off by default.
    #[arg(long)]
    max_drift: Option<String>,
}

/// The quick mode's settings.
const QUICK_EVENTS: u64 = 200_000;
const QUICK_LATENCY_SECONDS: f64 = 2.0;
/// At Nexmark's 10 000 events/s of event time a bidder is active for ~5 s,
/// so no bidder ever has two 10 s-gap sessions; 1 000 makes them common.
const QUICK_EVENT_TIME_RATE: f64 = 1_000.0;
/// Latency markers per source subtask per second in the latency runs: enough
/// samples for a p99 in a few seconds, still nothing next to the data.
const MARKER_INTERVAL: &str = "10ms";

pub async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    if args.quick {
        args.events = QUICK_EVENTS;
        args.parallelism = vec![2];
        args.latency_seconds = args.latency_seconds.min(QUICK_LATENCY_SECONDS);
        args.write_output = true;
    }
    if args.parallelism.is_empty() || args.parallelism.contains(&0) {
        bail!("--parallelism takes positive numbers");
    }
    if args.events == 0 {
        bail!("--events must be positive");
    }
    if args
        .event_time_rate
        .is_some_and(|r| !(r.is_finite() && r > 0.0))
    {
        bail!("--event-time-rate must be a positive number of events per second");
    }
    let max_drift = args
        .max_drift
        .as_deref()
        .map(str::parse::<crate::spec::HumanDuration>)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--max-drift: {e}"))?;
    if max_drift.is_some_and(|d| d.is_zero()) {
        bail!("--max-drift must be positive");
    }
    let queries = queries::select(&args.queries)?;
    let checkpoint = match &args.checkpoint_interval {
        None => None,
        Some(interval) => Some(
            serde_yaml::from_str::<crate::spec::CheckpointSpec>(&format!(
                "{{interval: \"{interval}\", backend: \"{}\"}}",
                args.state_backend
            ))
            .context("--checkpoint-interval and --state-backend")?,
        ),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let out = args.out.canonicalize()?;
    let slots = args
        .parallelism
        .iter()
        .copied()
        .chain([args.latency_parallelism])
        .max()
        .unwrap_or(1);
    let opts = Options {
        jobmanagers: 1,
        taskmanagers: slots,
        slots: 1,
        kpu_memory: args.kpu_memory.clone(),
        rest_port: 0,
        data_dir: out.join("cluster"),
        bin_dir: match &args.bin_dir {
            Some(d) => d.clone(),
            None => default_bin_dir()?,
        },
        heartbeat_timeout: "10s".into(),
        taskmanager_env: vec![(
            "EDDY_LATENCY_MARKER_INTERVAL".into(),
            MARKER_INTERVAL.into(),
        )],
    };
    let _ = std::fs::remove_dir_all(&opts.data_dir);
    eprintln!(
        "starting a local cluster: 1 JobManager, {slots} TaskManagers x 1 slot (logs in {})",
        opts.data_dir.display()
    );
    let mut cluster = LocalCluster::start(&opts).await?;
    let result = run_suite(
        &args,
        &queries,
        checkpoint.as_ref(),
        max_drift,
        &out,
        &mut cluster,
    )
    .await;
    cluster.stop().await;
    let report = result?;
    let json = out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    let md = out.join("results.md");
    let table = report.markdown();
    std::fs::write(&md, &table)?;
    println!("{table}");
    println!("results: {} and {}", json.display(), md.display());
    Ok(())
}

async fn run_suite(
    args: &BenchArgs,
    queries: &[&'static Query],
    checkpoint: Option<&crate::spec::CheckpointSpec>,
    max_drift: Option<crate::spec::HumanDuration>,
    out: &Path,
    cluster: &mut LocalCluster,
) -> anyhow::Result<Report> {
    let mut report = Report {
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        commit: commit(),
        machine: report::machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        runs: Vec::new(),
        latency: Vec::new(),
    };
    let total = queries.len() * args.parallelism.len();
    let mut n = 0;
    for q in queries {
        for &p in &args.parallelism {
            n += 1;
            let label = format!("[{n}/{total}] {} p={p}", q.name);
            let output = args
                .write_output
                .then(|| out.join("output").join(format!("{}-p{p}", q.name)));
            if let Some(dir) = &output {
                let _ = std::fs::remove_dir_all(dir);
            }
            let run = Run {
                parallelism: p,
                events: args.events,
                rate: None,
                event_time_rate: if args.quick {
                    Some(QUICK_EVENT_TIME_RATE)
                } else {
                    args.event_time_rate
                },
                output: output.as_deref(),
                checkpoint,
                max_drift,
            };
            let r = throughput(cluster, q, &run, &label).await?;
            report.runs.push(r);
        }
    }
    if args.latency_seconds > 0.0 {
        for (i, q) in queries.iter().enumerate() {
            let label = format!(
                "[latency {}/{}] {} p={} at {} events/s",
                i + 1,
                queries.len(),
                q.name,
                args.latency_parallelism,
                args.latency_rate
            );
            let l = latency(cluster, q, args, &label).await?;
            report.latency.push(l);
        }
    }
    Ok(report)
}

async fn throughput(
    cluster: &mut LocalCluster,
    query: &Query,
    run: &Run<'_>,
    label: &str,
) -> anyhow::Result<ThroughputRun> {
    let spec = query.spec(run)?;
    let pids: Vec<u32> = cluster
        .taskmanagers()
        .iter()
        .filter_map(|p| p.pid())
        .collect();
    for &pid in &pids {
        procstat::reset_peak_rss(pid);
    }
    let cpu_before: f64 = pids.iter().filter_map(|&p| procstat::cpu_seconds(p)).sum();
    let (detail, progress) = run_job(cluster, &spec, label, run.events).await?;
    let cpu_after: f64 = pids.iter().filter_map(|&p| procstat::cpu_seconds(p)).sum();
    let seconds = job_seconds(&detail)?;
    let checkpoints = match run.checkpoint {
        Some(_) => Some(checkpoint_figures(
            &cluster.client().checkpoints(&detail.id).await?,
        )),
        None => None,
    };
    let events = run.events as f64;
    let subtasks = || detail.vertices.iter().flat_map(|v| &v.subtasks);
    let source_rows = detail.vertices.first().map_or(0, |v| v.records_in);
    Ok(ThroughputRun {
        query: query.name.into(),
        parallelism: run.parallelism,
        job_id: detail.id.clone(),
        events: run.events,
        source_rows,
        sink_rows: detail.vertices.last().map_or(0, |v| v.records_in),
        seconds,
        events_per_second: events / seconds,
        events_per_second_per_slot: events / seconds / f64::from(run.parallelism),
        // Rows of the query's table stand for all events in the same ratio.
        steady_events_per_second: progress
            .steady_rows_per_second()
            .filter(|_| source_rows > 0)
            .map(|rows| rows * events / source_rows as f64),
        cpu_seconds_per_million_events: (cpu_after - cpu_before) / (events / 1e6),
        peak_rss_bytes: pids
            .iter()
            .map(|&p| procstat::peak_rss_bytes(p).unwrap_or(0))
            .collect(),
        bytes_between_taskmanagers: subtasks().map(|s| s.metrics.bytes_out).sum(),
        late_records_dropped: subtasks().map(|s| s.metrics.late_records_dropped).sum(),
        checkpoints,
        output_dir: run.output.map(|d| d.display().to_string()),
        spec: serde_json::to_value(&spec)?,
    })
}

fn checkpoint_figures(stats: &crate::rest::CheckpointStats) -> report::CheckpointFigures {
    report::CheckpointFigures {
        completed: stats.counts.completed,
        failed: stats.counts.failed,
        avg_state_bytes: stats.summary.state_size_bytes.avg,
        max_state_bytes: stats.summary.state_size_bytes.max,
        avg_duration_ms: stats.summary.end_to_end_duration_ms.avg,
        max_duration_ms: stats.summary.end_to_end_duration_ms.max,
    }
}

async fn latency(
    cluster: &mut LocalCluster,
    query: &Query,
    args: &BenchArgs,
    label: &str,
) -> anyhow::Result<LatencyRun> {
    let events = (args.latency_rate * args.latency_seconds).round().max(1.0) as u64;
    let run = Run {
        parallelism: args.latency_parallelism,
        events,
        rate: Some(args.latency_rate),
        event_time_rate: None,
        output: None,
        checkpoint: None,
        max_drift: None,
    };
    let spec = query.spec(&run)?;
    let (detail, _) = run_job(cluster, &spec, label, events).await?;
    let sink = detail
        .vertices
        .iter()
        .rev()
        .find_map(|v| v.latency.clone())
        .with_context(|| {
            format!(
                "{}: no latency marker reached the sink of job {}",
                query.name, detail.id
            )
        })?;
    Ok(LatencyRun {
        query: query.name.into(),
        parallelism: run.parallelism,
        events_per_second: args.latency_rate,
        seconds: job_seconds(&detail)?,
        samples: sink.samples,
        p50_ms: sink.p50_ms,
        p99_ms: sink.p99_ms,
    })
}

/// How often a run's job is polled: a tenth of the heartbeat interval, so
/// that the source counts' change points are that close (`progress.rs`).
const POLL: Duration = Duration::from_millis(100);

/// Submits `spec`, shows progress until the job ends, and returns its final
/// detail and its sources' progress; a job that does not finish is an error
/// with its failure.
async fn run_job(
    cluster: &mut LocalCluster,
    spec: &crate::spec::JobSpec,
    label: &str,
    events: u64,
) -> anyhow::Result<(JobDetail, Progress)> {
    let client: Client = cluster.client();
    let job = client.submit(&spec.to_json()).await?.job_id;
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_line = Instant::now();
    let mut progress = Progress::default();
    loop {
        cluster.check_alive()?;
        let detail = client.job(&job).await?;
        if let Some(source) = detail.vertices.first() {
            progress.observe(
                Instant::now(),
                source.subtasks.iter().map(|s| s.metrics.records_in),
            );
        }
        let rows = detail.vertices.first().map_or(0, |v| v.records_in);
        let line = format!(
            "{label}: {} {:.1}M source rows ({:.0}% of {:.1}M events) {:.0}s",
            detail.state,
            rows as f64 / 1e6,
            // Bids are 46 of every 50 events; the other queries' tables are not run.
            100.0 * rows as f64 / (events as f64 * 0.92),
            events as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
        match detail.state {
            JobState::Finished => {
                eprintln!("{}{line}", if tty { "\r\x1b[2K" } else { "" });
                return Ok((detail, progress));
            }
            JobState::Failed | JobState::Canceled => {
                eprintln!();
                let why = detail
                    .failure
                    .as_ref()
                    .map_or_else(|| "no failure recorded".into(), |f| f.chain.join(": "));
                bail!("{label}: job {job} ended {}: {why}", detail.state);
            }
            _ if tty => eprint!("\r\x1b[2K{line}"),
            // Without a terminal, a line every 10 s is enough for a log.
            _ if last_line.elapsed() > Duration::from_secs(10) => {
                eprintln!("{line}");
                last_line = Instant::now();
            }
            _ => {}
        }
        let _ = std::io::stderr().flush();
        tokio::time::sleep(POLL).await;
    }
}

/// The JobManager's RUNNING-to-FINISHED time.
fn job_seconds(d: &JobDetail) -> anyhow::Result<f64> {
    let parse = |t: &Option<String>, what: &str| -> anyhow::Result<i64> {
        let t = t
            .as_deref()
            .with_context(|| format!("job {} has no {what}", d.id))?;
        Ok(chrono::DateTime::parse_from_rfc3339(t)
            .with_context(|| format!("job {} has a bad {what} {t:?}", d.id))?
            .timestamp_millis())
    };
    let ms = parse(&d.end_time, "end time")? - parse(&d.start_time, "start time")?;
    // A run shorter than the clock's resolution still took some time.
    Ok((ms.max(1)) as f64 / 1000.0)
}

/// The commit being measured: `EDDY_COMMIT`, else `git` in the cwd.
fn commit() -> Option<String> {
    if let Ok(c) = std::env::var("EDDY_COMMIT") {
        return Some(c);
    }
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

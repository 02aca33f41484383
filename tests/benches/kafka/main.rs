//! Kafka -> filter -> Kafka: throughput and end-to-end latency of Eddy's
//! Kafka connector against the patched tansu broker (memory engine), with
//! the broker alone measured in the same run for comparison.
//!
//! Run (release Eddy binaries; this harness only drives them):
//!
//! ```text
//! EDDY_BIN_DIR=<target>/release cargo bench -p eddy-tests --bench kafka -- [options]
//! ```
//!
//! (`cargo bench --profile dev ...` builds the harness without optimisation;
//! the figures come from the Eddy binaries and the broker, which it only
//! starts and reads.) Without `EDDY_BIN_DIR` the binaries of the target
//! directory the bench was built into are used.
//!
//! Options:
//! - `--records N` input records for the throughput runs (500000)
//! - `--pad N` length of the `pad` string, sizing the records (80: ~150 bytes)
//! - `--parallelism 1,2` job parallelism; the input topic has as many partitions
//! - `--delivery exactly_once,at_least_once,none` the sink's modes
//! - `--checkpoint-interval 1s` for the throughput runs
//! - `--rate 2000` records/s of the latency runs' producer
//! - `--latency-seconds 30`, `--warmup-seconds 5` (not counted)
//! - `--latency-intervals 1s,10s` checkpoint intervals of the `exactly_once`
//!   latency runs (the other modes run at the first)
//! - `--fetch-wait-ms 10` `fetch.wait.max.ms` of every consumer, the job's
//!   source included (`default`: librdkafka's 500). tansu holds every fetch
//!   for half the remaining wait even when it has records (Kafka answers at
//!   once), so the default would cap each partition at one fetch per 250 ms
//!   and add 250-500 ms per consumer to the latency
//! - `--only throughput|latency`, `--no-verify` (skip reading the output back)
//! - `--quick` 20000 records, 8 s latency runs at 1 s (a smoke test)
//!
//! Throughput: each run starts a fresh cluster (one JobManager, two
//! TaskManagers with one slot each) and reads the pre-loaded input from the
//! earliest offset; records/s is the sources' rate between 10% and 90% of
//! the input, from the TaskManagers' `eddy_taskmanager_kafka_records_in_total`
//! sampled every 100 ms; "end to end" runs from RUNNING until the sinks'
//! `..._records_out_total` (committed, for exactly-once) holds every record
//! that passes. The broker-alone row is a plain librdkafka consume -> filter
//! -> produce loop in this process over the same topic. Prints Markdown.

mod data;
mod latency;
mod probe;
mod throughput;

use anyhow::{Context, bail};
use eddy_tests::kafka::{Engine, KafkaBroker};
use std::time::Instant;

struct Args {
    records: u64,
    pad: usize,
    parallelism: Vec<i32>,
    delivery: Vec<String>,
    interval: String,
    rate: u64,
    latency_seconds: u64,
    warmup: u64,
    latency_intervals: Vec<String>,
    throughput: bool,
    latency: bool,
    verify: bool,
    fetch_wait_ms: Option<u32>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        records: 500_000,
        pad: 80,
        parallelism: vec![1, 2],
        delivery: ["exactly_once", "at_least_once", "none"]
            .map(String::from)
            .to_vec(),
        interval: "1s".into(),
        rate: 2000,
        latency_seconds: 30,
        warmup: 5,
        latency_intervals: vec!["1s".into(), "10s".into()],
        throughput: true,
        latency: true,
        verify: true,
        fetch_wait_ms: Some(10),
    };
    let list = |v: &str| v.split(',').map(str::to_string).collect::<Vec<_>>();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {} // what `cargo bench` passes
            "--quick" => {
                a.records = 20_000;
                a.latency_seconds = 8;
                a.warmup = 2;
                a.latency_intervals = vec!["1s".into()];
            }
            "--records" => a.records = value()?.parse()?,
            "--pad" => a.pad = value()?.parse()?,
            "--parallelism" => {
                a.parallelism = list(&value()?)
                    .iter()
                    .map(|p| p.parse())
                    .collect::<Result<_, _>>()?
            }
            "--delivery" => a.delivery = list(&value()?),
            "--checkpoint-interval" => a.interval = value()?,
            "--rate" => a.rate = value()?.parse()?,
            "--latency-seconds" => a.latency_seconds = value()?.parse()?,
            "--warmup-seconds" => a.warmup = value()?.parse()?,
            "--latency-intervals" => a.latency_intervals = list(&value()?),
            "--only" => match value()?.as_str() {
                "throughput" => a.latency = false,
                "latency" => a.throughput = false,
                other => bail!("--only throughput|latency, not {other}"),
            },
            "--no-verify" => a.verify = false,
            "--fetch-wait-ms" => {
                a.fetch_wait_ms = match value()?.as_str() {
                    "default" => None,
                    ms => Some(ms.parse()?),
                }
            }
            other => {
                bail!("unknown option {other} (see the header of tests/benches/kafka/main.rs)")
            }
        }
    }
    Ok(a)
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    data::set_fetch_wait_ms(args.fetch_wait_ms);
    let Some(broker) = KafkaBroker::start(Engine::Memory)? else {
        bail!("no Kafka broker (EDDY_SKIP_KAFKA_BROKER=1): nothing to measure");
    };
    let pad = "x".repeat(args.pad);
    let mut out = String::new();
    out += &format!(
        "commit {}, binaries {}, {} cores, fetch.wait.max.ms {}, load average at start {}\n\n",
        commit(),
        eddy_tests::bin_dir().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.fetch_wait_ms
            .map_or("500 (default)".into(), |ms| ms.to_string()),
        probe::load_average()
    );
    if args.throughput {
        out += &throughput_section(&args, &broker, &pad).await?;
    }
    if args.latency {
        out += &latency_section(&args, &broker, &pad).await?;
    }
    out += &format!("load average at the end {}\n", probe::load_average());
    println!("\n{out}");
    Ok(())
}

async fn throughput_section(
    args: &Args,
    broker: &KafkaBroker,
    pad: &str,
) -> anyhow::Result<String> {
    let setup = throughput::Setup {
        broker,
        records: args.records,
        interval: args.interval.clone(),
        verify: args.verify,
    };
    let mut rows = Vec::new();
    let mut bytes_per_record = 0.0;
    for &p in &args.parallelism {
        let input = format!("in-p{p}");
        broker.create_topic(&input, p).await?;
        eprintln!("pre-loading {} records into {input}", args.records);
        let cpu = probe::CpuWindow::start(vec![broker.pid().into_iter().collect()]);
        let pre =
            tokio::task::block_in_place(|| data::preload(broker, &input, p, args.records, pad))?;
        let pre_cpu = cpu.percent()[0];
        bytes_per_record = pre.value_bytes as f64 / pre.records as f64;
        let mb = |r: f64| r * bytes_per_record / 1e6;
        let r = pre.records as f64 / pre.secs;
        rows.push(format!(
            "| producer alone (pre-load) | {p} | {} | {} | {:.1} | | | {:.1} | | {pre_cpu:.0} | | | |",
            pre.records,
            fmt_rate(r),
            mb(r),
            pre.secs
        ));
        eprintln!("broker alone: consume -> filter -> produce over {input}");
        let base_out = format!("base-p{p}");
        broker.create_topic(&base_out, p).await?;
        let cpu = probe::CpuWindow::start(vec![
            broker.pid().into_iter().collect(),
            vec![std::process::id()],
        ]);
        let pipe =
            tokio::task::block_in_place(|| data::pipe(broker, &input, p, &base_out, args.records))?;
        let pc = cpu.percent();
        let base = pipe.steady.unwrap_or(args.records as f64 / pipe.secs);
        rows.push(format!(
            "| broker alone (librdkafka loop, 1 thread) | {p} | {} | {} | {:.1} | | | {:.1} | 1.00 | {:.0} | {:.0} (this loop) | | |",
            args.records,
            fmt_rate(base),
            mb(base),
            pipe.secs,
            pc[0],
            pc[1]
        ));
        for delivery in &args.delivery {
            eprintln!("eddy: {delivery} at parallelism {p}");
            let run = throughput::run(&setup, &input, p, delivery).await?;
            let total = run.steady.unwrap_or(args.records as f64 / run.end_to_end);
            let per_slot = total / f64::from(run.parallelism);
            let checked = match (&run.problem, run.checked) {
                (Some(problem), _) => format!("**{problem}**"),
                (None, true) => "each once".into(),
                (None, false) => "not checked".into(),
            };
            rows.push(format!(
                "| Eddy, {} | {p} | {} | {} | {:.1} | {} | {:.2} | {:.1} | {:.2} | {:.0} | {:.0} | {:.0} | {checked} |",
                run.delivery,
                args.records,
                fmt_rate(total),
                mb(total),
                fmt_rate(per_slot),
                mb(per_slot),
                run.end_to_end,
                total / base,
                run.broker_cpu,
                run.tm_cpu,
                run.tm_rss,
            ));
        }
    }
    Ok(format!(
        "Throughput: {} records of {bytes_per_record:.0} bytes (JSON value), filter `{}` keeps half, checkpoints every {}\n\n\
         | what | parallelism | records | records/s | MB/s | records/s per slot | MB/s per slot | time (s) | vs broker alone | broker CPU % | TaskManagers CPU % | TM peak RSS MiB | output |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n{}\n\n",
        args.records,
        data::PREDICATE,
        args.interval,
        rows.join("\n")
    ))
}

async fn latency_section(args: &Args, broker: &KafkaBroker, pad: &str) -> anyhow::Result<String> {
    let params = latency::Params {
        rate: args.rate,
        seconds: args.latency_seconds,
        warmup: args.warmup,
    };
    let first = args
        .latency_intervals
        .first()
        .cloned()
        .unwrap_or("1s".into());
    let mut plan: Vec<(Option<&str>, String)> = vec![(None, first.clone())];
    for interval in &args.latency_intervals {
        plan.push((Some("exactly_once"), interval.clone()));
    }
    for delivery in ["at_least_once", "none"] {
        if args.delivery.iter().any(|d| d == delivery) {
            plan.push((Some(delivery), first.clone()));
        }
    }
    let mut rows = Vec::new();
    for (i, (delivery, interval)) in plan.into_iter().enumerate() {
        eprintln!(
            "latency: {} at {interval}",
            delivery.unwrap_or("broker alone")
        );
        let started = Instant::now();
        let run = latency::run(broker, i, delivery, &interval, &params, pad).await?;
        eprintln!("  took {:.0} s", started.elapsed().as_secs_f64());
        rows.push(format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {} |",
            run.what,
            run.interval.as_deref().unwrap_or("-"),
            run.samples,
            run.p50,
            run.p99,
            run.max,
            run.missing
        ));
    }
    Ok(format!(
        "Latency: producer at {} records/s for {} s or 3 checkpoint intervals after the warm-up if longer \
         (first {} s not counted), parallelism 1, \
         consumer read_committed for exactly_once, read_uncommitted otherwise; milliseconds from send to receive\n\n\
         | path | checkpoint interval | samples | p50 ms | p99 ms | max ms | missing |\n\
         |---|---|---|---|---|---|---|\n{}\n\n",
        args.rate,
        args.latency_seconds,
        args.warmup,
        rows.join("\n")
    ))
}

//! End-to-end latency at a fixed input rate: a producer writes records with
//! their send time (`ts`, µs), a consumer of the output subtracts it from
//! its receive time. The same with no job in between (the consumer reads
//! the input topic) gives the broker's and clients' own share.

use crate::data::{self, int_field, now_us};
use crate::throughput::job_spec;
use anyhow::bail;
use eddy_sdk::rest::JobState;
use eddy_tests::Cluster;
use eddy_tests::kafka::KafkaBroker;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What one latency run measures.
pub struct Params {
    pub rate: u64,
    pub seconds: u64,
    pub warmup: u64,
}

/// One latency run's figures (milliseconds).
pub struct Run {
    pub what: String,
    pub interval: Option<String>,
    pub samples: usize,
    pub missing: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// The job's output when `delivery` is set, else the input itself.
pub async fn run(
    broker: &KafkaBroker,
    index: usize,
    delivery: Option<&str>,
    interval: &str,
    params: &Params,
    pad: &str,
) -> anyhow::Result<Run> {
    let input = format!("lat-in-{index}");
    let output = format!("lat-out-{index}");
    broker.create_topic(&input, 1).await?;
    broker.create_topic(&output, 1).await?;
    let cluster = match delivery {
        Some(delivery) => {
            let cluster = Cluster::builder().taskmanagers(1).slots(1).start().await?;
            let spec = job_spec(
                &format!("kafka-latency-{index}"),
                &broker.bootstrap(),
                &input,
                &output,
                1,
                delivery,
                interval,
                &cluster.dir().join("checkpoints"),
            );
            let job = cluster.client().submit(&spec).await?.job_id;
            cluster
                .wait_for_job_state(&job, JobState::Running, Duration::from_secs(120))
                .await?;
            Some(cluster)
        }
        None => None,
    };
    let (read_topic, isolation) = match delivery {
        Some("exactly_once") => (output.clone(), "read_committed"),
        Some(_) => (output.clone(), "read_uncommitted"),
        None => (input.clone(), "read_uncommitted"),
    };
    let filtered = delivery.is_some();
    let sent = Arc::new(AtomicU64::new(0));
    let done_sending = Arc::new(AtomicBool::new(false));
    // The consumer's last wait for records after the producer stopped.
    let grace = Duration::from_secs(30) + parse_secs(interval);
    let consumer = {
        let consumer = data::consumer_from_start(broker, &read_topic, 1, isolation)?;
        let (sent, done_sending) = (sent.clone(), done_sending.clone());
        std::thread::spawn(move || consume(consumer, &sent, &done_sending, filtered, grace))
    };
    let producer: BaseProducer = broker.config().create()?;
    // At least three checkpoint intervals after the warm-up.
    let seconds = params
        .seconds
        .max(params.warmup + 3 * parse_secs(interval).as_secs());
    let rate = params.rate;
    let pad = pad.to_string();
    let input_topic = input.clone();
    let sent_in = sent.clone();
    let produced = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let start = Instant::now();
        let total = rate * seconds;
        for seq in 0..total {
            let due = start + Duration::from_secs_f64(seq as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                producer.poll(wait);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let value = data::record(seq, now_us(), &pad);
            data::send(
                &producer,
                &input_topic,
                Some(0),
                &seq.to_string(),
                value.as_bytes(),
            )?;
            sent_in.store(seq + 1, Ordering::SeqCst);
        }
        producer.flush(Duration::from_secs(60))?;
        Ok(())
    })
    .await;
    done_sending.store(true, Ordering::SeqCst);
    produced??;
    let got = match consumer.join() {
        Ok(got) => got?,
        Err(_) => bail!("the latency consumer panicked"),
    };
    drop(cluster);
    let total = sent.load(Ordering::SeqCst);
    let expected: u64 = if filtered {
        data::passing(total)
    } else {
        total
    };
    let from = params.warmup * params.rate;
    let mut lat: Vec<f64> = got
        .iter()
        .filter(|(seq, _)| *seq >= from)
        .map(|(_, us)| *us as f64 / 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    let pick = |q: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1]
    };
    Ok(Run {
        what: delivery.map_or("broker alone (producer -> consumer)".into(), |d| {
            format!("Eddy, {d}")
        }),
        interval: delivery.map(|_| interval.to_string()),
        samples: lat.len(),
        missing: expected.saturating_sub(got.len() as u64),
        p50: pick(0.50),
        p99: pick(0.99),
        max: pick(1.0),
    })
}

/// Reads until every record sent (that passes the filter, if `filtered`)
/// came, or `grace` after the producer stopped: `(seq, latency µs)`.
fn consume(
    consumer: rdkafka::consumer::BaseConsumer,
    sent: &AtomicU64,
    done_sending: &AtomicBool,
    filtered: bool,
    grace: Duration,
) -> anyhow::Result<Vec<(u64, i64)>> {
    let mut got = Vec::new();
    // When the producer stopped, and how many records are to come.
    let mut stopped: Option<(Instant, u64)> = None;
    loop {
        if stopped.is_none() && done_sending.load(Ordering::SeqCst) {
            let total = sent.load(Ordering::SeqCst);
            let want = if filtered {
                data::passing(total)
            } else {
                total
            };
            stopped = Some((Instant::now(), want));
        }
        if let Some((at, want)) = stopped
            && (got.len() as u64 >= want || at.elapsed() > grace)
        {
            return Ok(got);
        }
        let Some(m) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let m = m?;
        let received = now_us();
        let payload = m.payload().unwrap_or_default();
        if let (Some(seq), Some(ts)) = (int_field(payload, "seq"), int_field(payload, "ts")) {
            got.push((seq as u64, received - ts));
        }
    }
}

/// `500ms`, `1s`, `2m` as a duration (0 if not understood).
pub fn parse_secs(text: &str) -> Duration {
    let text = text.trim();
    let (num, unit) = text.split_at(text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len()));
    let n: f64 = num.trim().parse().unwrap_or(0.0);
    Duration::from_secs_f64(match unit {
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => n,
    })
}

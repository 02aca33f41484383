//! The records, the filter as the harness knows it, and the broker-alone
//! runs: pre-loading the input (a producer alone) and a plain librdkafka
//! consume -> filter -> produce loop (the pipeline without Eddy).

use anyhow::{Context, bail};
use eddy_tests::kafka::KafkaBroker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `fetch.wait.max.ms` for every consumer (the harness's and the job's
/// source), `None` for librdkafka's default (500). tansu answers a fetch only
/// after sleeping half of the remaining wait even when it has records
/// (`tansu-storage` `service/fetch.rs`), where Kafka answers as soon as
/// `fetch.min.bytes` are there; a short wait makes tansu behave like Kafka.
static FETCH_WAIT_MS: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();

/// Sets [`FETCH_WAIT_MS`] (once, at the start).
pub fn set_fetch_wait_ms(ms: Option<u32>) {
    let _ = FETCH_WAIT_MS.set(ms);
}

/// The source's `properties` for [`FETCH_WAIT_MS`], as a YAML flow map entry.
pub fn source_properties() -> String {
    match FETCH_WAIT_MS.get().copied().flatten() {
        Some(ms) => format!(", properties: {{fetch.wait.max.ms: '{ms}'}}"),
        None => String::new(),
    }
}

/// The job's filter.
pub const PREDICATE: &str = "amount >= 10";

/// `amount` in cents: 0..2000, each value once per 2000 consecutive `seq`
/// (7919 is prime), so exactly half of every 2000 records pass the filter.
fn amount_cents(seq: u64) -> u64 {
    seq.wrapping_mul(7919) % 2000
}

/// Whether record `seq` passes [`PREDICATE`].
pub fn passes(seq: u64) -> bool {
    amount_cents(seq) >= 1000
}

/// How many of `0..n` pass.
pub fn passing(n: u64) -> u64 {
    (0..n).filter(|s| passes(*s)).count() as u64
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The JSON value of record `seq`; `ts` is in microseconds.
pub fn record(seq: u64, ts_us: i64, pad: &str) -> String {
    let c = amount_cents(seq);
    format!(
        r#"{{"seq":{seq},"user_id":{},"amount":{}.{:02},"ts":{ts_us},"pad":"{pad}"}}"#,
        seq % 10_007,
        c / 100,
        c % 100
    )
}

/// The job's source schema for [`record`].
pub const SCHEMA: &str = "[{name: seq, type: int64}, {name: user_id, type: int64}, \
    {name: amount, type: float64}, {name: ts, type: int64}, {name: pad, type: utf8}]";

/// The integer after `"field":` in a JSON text (the harness's records and
/// Eddy's JSON output have no spaces there).
pub fn int_field(json: &[u8], field: &str) -> Option<i64> {
    let text = std::str::from_utf8(json).ok()?;
    let at = text.find(&format!("\"{field}\":"))? + field.len() + 3;
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

/// Sends one record, waiting while the producer's queue is full.
pub fn send(
    producer: &BaseProducer,
    topic: &str,
    partition: Option<i32>,
    key: &str,
    value: &[u8],
) -> anyhow::Result<()> {
    let mut rec = BaseRecord::to(topic).key(key).payload(value);
    if let Some(p) = partition {
        rec = rec.partition(p);
    }
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                producer.poll(Duration::from_millis(5));
                rec = r;
            }
            Err((e, _)) => bail!("producing to {topic}: {e}"),
        }
    }
}

/// What pre-loading the input took.
pub struct Preload {
    pub records: u64,
    pub value_bytes: u64,
    pub secs: f64,
}

/// Produces records `0..n` to `topic`, record `seq` to partition
/// `seq % partitions`, and waits for every acknowledgement.
pub fn preload(
    broker: &KafkaBroker,
    topic: &str,
    partitions: i32,
    n: u64,
    pad: &str,
) -> anyhow::Result<Preload> {
    let producer: BaseProducer = broker
        .config()
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "500000")
        .create()?;
    let start = Instant::now();
    let mut value_bytes = 0;
    for seq in 0..n {
        let value = record(seq, now_us(), pad);
        value_bytes += value.len() as u64;
        let partition = (seq % partitions as u64) as i32;
        send(
            &producer,
            topic,
            Some(partition),
            &seq.to_string(),
            value.as_bytes(),
        )?;
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(300))?;
    Ok(Preload {
        records: n,
        value_bytes,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// A consumer of every partition of `topic` from its beginning.
pub fn consumer_from_start(
    broker: &KafkaBroker,
    topic: &str,
    partitions: i32,
    isolation: &str,
) -> anyhow::Result<BaseConsumer> {
    let mut consumer = broker
        .config()
        .set("group.id", format!("kafka-bench-{}", rand::random::<u64>()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", isolation)
        .clone();
    if let Some(ms) = FETCH_WAIT_MS.get().copied().flatten() {
        consumer.set("fetch.wait.max.ms", ms.to_string());
    }
    let consumer: BaseConsumer = consumer.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Reading progress: when the count passed 10% and 90% of the total.
pub struct Steady {
    total: u64,
    first: Option<(Instant, u64)>,
    last: Option<(Instant, u64)>,
}

impl Steady {
    pub fn new(total: u64) -> Self {
        Self {
            total,
            first: None,
            last: None,
        }
    }

    /// Notes `count` records done at `at`.
    pub fn note(&mut self, at: Instant, count: u64) {
        if self.first.is_none() && count * 10 >= self.total {
            self.first = Some((at, count));
        }
        if self.last.is_none() && count * 10 >= self.total * 9 {
            self.last = Some((at, count));
        }
    }

    /// Records per second between the 10% and the 90% mark, or `None` if
    /// both fell in one sample.
    pub fn rate(&self) -> Option<f64> {
        let ((t1, c1), (t2, c2)) = (self.first?, self.last?);
        let secs = t2.duration_since(t1).as_secs_f64();
        (secs > 0.0 && c2 > c1).then(|| (c2 - c1) as f64 / secs)
    }
}

/// A broker-alone pipe run.
pub struct Pipe {
    /// Records/s read between the 10% and 90% marks.
    pub steady: Option<f64>,
    /// First poll to the last acknowledgement.
    pub secs: f64,
}

/// Reads the `n` records of `input` from the beginning, produces those that
/// pass the filter (key and value as read) to `output`, and waits for their
/// acknowledgements: the pipeline's broker traffic without Eddy, at least
/// once, librdkafka's defaults on both clients as in Eddy's connector.
pub fn pipe(
    broker: &KafkaBroker,
    input: &str,
    partitions: i32,
    output: &str,
    n: u64,
) -> anyhow::Result<Pipe> {
    let consumer = consumer_from_start(broker, input, partitions, "read_committed")?;
    let producer: BaseProducer = broker.config().create()?;
    let start = Instant::now();
    let mut steady = Steady::new(n);
    let mut read = 0u64;
    let deadline = start + Duration::from_secs(1800);
    while read < n {
        if Instant::now() > deadline {
            bail!("the broker-alone pipe read {read} of {n} records of {input}");
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.with_context(|| format!("consuming {input}"))?;
        let key = m.key().unwrap_or_default();
        let seq: u64 = std::str::from_utf8(key)?.parse()?;
        if passes(seq) {
            send(
                &producer,
                output,
                None,
                std::str::from_utf8(key)?,
                m.payload().unwrap_or_default(),
            )?;
        }
        producer.poll(Duration::ZERO);
        read += 1;
        steady.note(Instant::now(), read);
    }
    producer.flush(Duration::from_secs(300))?;
    Ok(Pipe {
        steady: steady.rate(),
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Checks an output topic: `want` records, each a distinct `seq` that
/// passes the filter. Returns a description of what is wrong, if anything.
pub fn verify(
    broker: &KafkaBroker,
    topic: &str,
    partitions: i32,
    isolation: &str,
    want: u64,
) -> anyhow::Result<Option<String>> {
    let consumer = consumer_from_start(broker, topic, partitions, isolation)?;
    let mut seen = std::collections::HashSet::new();
    let (mut count, mut wrong) = (0u64, 0u64);
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(if count >= want { 2 } else { 20 }) {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        count += 1;
        last = Instant::now();
        match int_field(m.payload().unwrap_or_default(), "seq") {
            Some(seq) if passes(seq as u64) => {
                seen.insert(seq);
            }
            _ => wrong += 1,
        }
    }
    let distinct = seen.len() as u64;
    Ok((count != want || distinct != want || wrong != 0).then(|| {
        format!("{count} records, {distinct} distinct, {wrong} unexpected; {want} expected")
    }))
}

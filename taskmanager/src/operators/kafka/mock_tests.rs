//! The source and sink against librdkafka's mock cluster (in process, no
//! broker). The mock does not hide aborted transactions from read_committed
//! consumers and does not fence, so exactly-once under failures is tested
//! against a real Kafka-protocol broker in `tests/tests/kafka.rs`; here the
//! data paths, offsets in checkpoints and the error policies are.

use super::sink::KafkaSink;
use super::source::KafkaSource;
use crate::operators::harness::{StateImage, barrier, task_context};
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use eddy_sdk::FailureClass;
use eddy_sdk::ids::{CheckpointId, NodeId};
use eddy_sdk::keygroup::key_group_range;
use eddy_sdk::operator::{Collector, Operator, Source, SourcePoll, StateChanges};
use eddy_sdk::spec::{JobSpec, KafkaSpec, NodeKind, parse_yaml_or_json};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Bound on every wait, against hangs only.
const BOUND: Duration = Duration::from_secs(60);

fn job(servers: &str, extra: &str) -> JobSpec {
    parse_yaml_or_json(&format!(
        "name: k\ncheckpoint: {{interval: 1s}}\nnodes:\n  - {{id: src, kind: kafka, bootstrap_servers: '{servers}', topics: [orders], format: json, schema: [{{name: seq, type: int64}}], metadata: [partition, offset]{extra}}}\n  - {{id: out, kind: blackhole, input: src}}\n"
    ))
    .unwrap()
}

fn source(spec: &JobSpec, subtask: u32, parallelism: u32) -> KafkaSource {
    let NodeKind::Kafka(KafkaSpec::Source(k)) = &spec.nodes[0].kind else {
        panic!("a kafka source")
    };
    let schemas = eddy_sdk::plan::infer_schemas(spec).unwrap();
    let id = NodeId::from("src");
    let schema = schemas.get(&id).unwrap().clone();
    KafkaSource::new(&id, k, schema, &task_context(subtask, parallelism, true)).unwrap()
}

fn produce(servers: &str, topic: &str, values: impl IntoIterator<Item = (i32, String)>) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    for (partition, v) in values {
        p.send(
            BaseRecord::<(), str>::to(topic)
                .partition(partition)
                .payload(&v),
        )
        .unwrap();
    }
    p.flush(BOUND).unwrap();
}

fn seqs(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect()
}

/// Polls the sources until they emitted `want` rows in all.
fn poll_until(sources: &mut [&mut KafkaSource], want: usize) -> Vec<RecordBatch> {
    let deadline = Instant::now() + BOUND;
    let mut out = Vec::new();
    let mut rows = 0;
    while rows < want {
        assert!(Instant::now() < deadline, "read {rows} of {want} rows");
        let mut idle = true;
        for s in sources.iter_mut() {
            let mut c = Collector::new();
            if let SourcePoll::Ready = s.poll(&mut c).unwrap() {
                idle = false;
            }
            for e in c.drain() {
                if let eddy_sdk::operator::Element::Batch(b) = e {
                    rows += b.num_rows();
                    out.push(b);
                }
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    out
}

fn snapshot(s: &mut dyn Source, n: u64) -> StateImage {
    let mut changes = StateChanges::new();
    s.snapshot_state(&barrier(n), &mut changes).unwrap();
    let mut image = StateImage::default();
    image.apply(changes);
    image
}

/// Two subtasks read a 4-partition topic, each its own partitions; a
/// snapshot of both restores into one subtask that reads on from there:
/// every record is emitted exactly once over the two runs.
#[test]
fn source_mock_offsets_restore_at_another_parallelism_without_loss_or_duplicates() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("orders", 4, 1).unwrap();
    let servers = cluster.bootstrap_servers();
    produce(
        &servers,
        "orders",
        (0..200).map(|i| (i % 4, format!(r#"{{"seq": {i}}}"#))),
    );
    let spec = job(&servers, "");
    let (mut a, mut b) = (source(&spec, 0, 2), source(&spec, 1, 2));
    let first = poll_until(&mut [&mut a, &mut b], 200);
    let images = [snapshot(&mut a, 1), snapshot(&mut b, 1)];
    drop((a, b));
    produce(
        &servers,
        "orders",
        (200..400).map(|i| (i % 4, format!(r#"{{"seq": {i}}}"#))),
    );
    let mut c = source(&spec, 0, 1);
    c.restore_state(StateImage::restore(
        &[&images[0], &images[1]],
        key_group_range(128, 1, 0),
    ))
    .unwrap();
    let second = poll_until(&mut [&mut c], 200);
    let mut all: Vec<i64> = seqs(&first);
    all.extend(seqs(&second));
    all.sort_unstable();
    assert_eq!(all, (0..400).collect::<Vec<i64>>());
    // Partitions came out whole per subtask: partition and offset columns.
    for b in &first {
        let partitions = b.column(1).as_primitive::<Int64Type>();
        let offsets = b.column(2).as_primitive::<Int64Type>();
        for (i, seq) in b
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .enumerate()
        {
            assert_eq!(partitions.value(i), seq % 4);
            assert_eq!(offsets.value(i), seq / 4);
        }
    }
}

/// `fail` names topic, partition and offset; `skip` drops and counts; `dead_letter`
/// writes the record, with the error in a header, to the named topic.
#[test]
fn source_mock_bad_records_follow_on_error() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("orders", 1, 1).unwrap();
    cluster.create_topic("orders-bad", 1, 1).unwrap();
    let servers = cluster.bootstrap_servers();
    produce(
        &servers,
        "orders",
        [
            (0, r#"{"seq": 1}"#.to_string()),
            (0, "{oops".into()),
            (0, r#"{"seq": 3}"#.into()),
        ],
    );
    // fail
    let spec = job(&servers, "");
    let mut s = source(&spec, 0, 1);
    let deadline = Instant::now() + BOUND;
    let err = loop {
        assert!(Instant::now() < deadline, "no failure");
        match s.poll(&mut Collector::new()) {
            Err(e) => break e,
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert_eq!(err.class, FailureClass::BadData);
    assert!(
        err.message.contains("topic orders partition 0 offset 1"),
        "{}",
        err.message
    );
    // skip
    let spec = job(&servers, ", on_error: skip");
    let mut s = source(&spec, 0, 1);
    assert_eq!(seqs(&poll_until(&mut [&mut s], 2)), vec![1, 3]);
    let labels = super::metrics::NodeLabels::new(&task_context(0, 1, true), &NodeId::from("src"));
    let skipped = super::metrics::METRICS
        .records_skipped
        .get_or_create(&labels)
        .get();
    assert_eq!(skipped, 1, "the skipped record is counted");
    // dead_letter
    let spec = job(
        &servers,
        ", on_error: dead_letter, dead_letter_topic: orders-bad",
    );
    let mut s = source(&spec, 0, 1);
    assert_eq!(seqs(&poll_until(&mut [&mut s], 2)), vec![1, 3]);
    snapshot(&mut s, 1); // flushes the dead letters
    let got = consume(&servers, "orders-bad", 1);
    assert_eq!(got[0].0, b"{oops".to_vec());
    assert!(got[0].1.contains("does not decode"), "{}", got[0].1);
}

/// Reads `n` records of `topic` partition 0 from the start: (value, the
/// `eddy.error` header).
fn consume(servers: &str, topic: &str, n: usize) -> Vec<(Vec<u8>, String)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "test")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + BOUND;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(Instant::now() < deadline, "read {} of {n}", out.len());
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let error = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "eddy.error"))
                .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                .unwrap_or_default();
            out.push((m.payload().unwrap_or_default().to_vec(), error));
        }
    }
    out
}

fn sink(spec: &JobSpec) -> KafkaSink {
    let NodeKind::Kafka(KafkaSpec::Sink(k)) = &spec.nodes[1].kind else {
        panic!("a kafka sink")
    };
    let schemas = eddy_sdk::plan::infer_schemas(spec).unwrap();
    let input = schemas.get(&NodeId::from("gen")).unwrap().clone();
    KafkaSink::new(&NodeId::from("out"), k, &input, &task_context(0, 1, true)).unwrap()
}

fn seq_batch(range: std::ops::Range<i64>) -> RecordBatch {
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("seq", arrow::datatypes::DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![std::sync::Arc::new(
            arrow::array::Int64Array::from_iter_values(range),
        )],
    )
    .unwrap()
}

/// The exactly-once sink writes a checkpoint's records only at its commit
/// notice, in one transaction, and a checkpoint aborted before it is written
/// with the next committed one. (The mock stores no transactional offsets,
/// so the commit marker that makes a restore write a buffer at most once is
/// tested against a real broker, `tests/tests/kafka.rs`.)
#[test]
fn sink_mock_exactly_once_writes_only_at_commit_notices() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("big", 1, 1).unwrap();
    let servers = cluster.bootstrap_servers();
    let spec = parse_yaml_or_json(&format!(
        "name: k\ncheckpoint: {{interval: 1s}}\nnodes:\n  - {{id: gen, kind: datagen, fields: [{{name: seq, type: int64, gen: sequence}}]}}\n  - {{id: out, kind: kafka, input: gen, bootstrap_servers: '{servers}', topic: big, key: [seq], delivery: exactly_once}}\n"
    ))
    .unwrap();
    let high = || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .set("group.id", "count")
            .create()
            .unwrap();
        c.fetch_watermarks("big", 0, BOUND).unwrap().1
    };
    let mut s = sink(&spec);
    let mut out = Collector::new();
    s.on_batch(seq_batch(0..10), &mut out).unwrap();
    let mut image = StateImage::default();
    let mut changes = StateChanges::new();
    s.snapshot_state(&barrier(1), &mut changes).unwrap();
    assert!(!changes.is_empty(), "the buffer is in the checkpoint");
    image.apply(changes);
    // Checkpoint 1 is aborted; 2 is taken and committed.
    s.on_batch(seq_batch(10..25), &mut out).unwrap();
    let mut changes = StateChanges::new();
    s.snapshot_state(&barrier(2), &mut changes).unwrap();
    image.apply(changes);
    // A transaction is written only at a notice: nothing yet.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(high(), 0);
    s.notify_checkpoint_complete(CheckpointId(2)).unwrap();
    // Once the transaction is committed, the next barrier drops the
    // buffers from the state.
    let deadline = Instant::now() + BOUND;
    let mut n = 3;
    while !image.is_empty() {
        assert!(Instant::now() < deadline, "the buffers stay in the state");
        std::thread::sleep(Duration::from_millis(50));
        let mut changes = StateChanges::new();
        s.snapshot_state(&barrier(n), &mut changes).unwrap();
        image.apply(changes);
        n += 1;
    }
    drop(s);
    let got = consume(&servers, "big", 25);
    let values: BTreeSet<String> = got
        .iter()
        .map(|(v, _)| String::from_utf8(v.clone()).unwrap())
        .collect();
    assert_eq!(values.len(), 25);
    assert!(values.contains(r#"{"seq":24}"#));
    // Each record once (the mock writes no commit control records).
    assert_eq!(high(), 25);
}

/// Per-partition watermarks: the source's watermark is the minimum over its
/// partitions, so a partition without records holds it back until it has
/// been idle for `idle_timeout`; then the active partition alone drives it.
#[test]
fn source_mock_idle_partition_stops_holding_the_watermark_back() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("orders", 2, 1).unwrap();
    let servers = cluster.bootstrap_servers();
    produce(
        &servers,
        "orders",
        (0..10).map(|i| (0, format!(r#"{{"seq": {i}, "ts": {}}}"#, 1000 + i))),
    );
    let spec = parse_yaml_or_json(&format!(
        "name: k\nnodes:\n  - {{id: src, kind: kafka, bootstrap_servers: '{servers}', topics: [orders], schema: [{{name: seq, type: int64}}, {{name: ts, type: timestamp_ms}}], event_time: {{column: ts, max_out_of_orderness: 0s}}, idle_timeout: 300ms}}\n  - {{id: out, kind: blackhole, input: src}}\n"
    ))
    .unwrap();
    let mut s = source(&spec, 0, 1);
    let deadline = Instant::now() + BOUND;
    let (mut rows, mut marks) = (0, Vec::new());
    while marks.is_empty() {
        assert!(Instant::now() < deadline, "no watermark");
        let mut c = Collector::new();
        s.poll(&mut c).unwrap();
        for e in c.drain() {
            match e {
                eddy_sdk::operator::Element::Batch(b) => rows += b.num_rows(),
                eddy_sdk::operator::Element::Watermark(wm) => marks.push((rows, wm)),
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Partition 1 never had a record: the first watermark comes once it is
    // idle, from partition 0 alone (its highest event time read, minus 1).
    let (read, wm) = marks[0];
    assert!(read > 0);
    assert_eq!(wm, 1000 + read as i64 - 2);
}

/// `format: raw` with every metadata column, over a `topic_pattern`: a
/// matching topic created while the source runs is found by discovery and
/// read from its start.
#[test]
fn source_mock_raw_metadata_and_pattern_discovery() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("ev-a", 1, 1).unwrap();
    let servers = cluster.bootstrap_servers();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .create()
        .unwrap();
    p.send(
        BaseRecord::to("ev-a")
            .partition(0)
            .key("k1")
            .payload("\u{1}raw")
            .timestamp(1234)
            .headers(
                rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                    key: "h",
                    value: Some("v"),
                }),
            ),
    )
    .unwrap();
    p.flush(BOUND).unwrap();
    let spec = parse_yaml_or_json(&format!(
        "name: k\nnodes:\n  - {{id: src, kind: kafka, bootstrap_servers: '{servers}', topic_pattern: '^ev-.*', format: raw, metadata: [key, headers, timestamp, topic, partition, offset], partition_discovery_interval: 200ms}}\n  - {{id: out, kind: blackhole, input: src}}\n"
    ))
    .unwrap();
    let mut s = source(&spec, 0, 1);
    let first = poll_until(&mut [&mut s], 1);
    let b = &first[0];
    assert_eq!(b.column(0).as_binary::<i32>().value(0), b"\x01raw");
    assert_eq!(b.column(1).as_string::<i32>().value(0), "k1");
    assert_eq!(b.column(2).as_string::<i32>().value(0), r#"{"h":"v"}"#);
    assert_eq!(
        b.column(3)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
            .value(0),
        1234
    );
    assert_eq!(b.column(4).as_string::<i32>().value(0), "ev-a");
    cluster.create_topic("ev-b", 1, 1).unwrap();
    cluster.create_topic("other", 1, 1).unwrap();
    produce(&servers, "other", [(0, "no".to_string())]);
    produce(&servers, "ev-b", [(0, "yes".to_string())]);
    let later = poll_until(&mut [&mut s], 1);
    assert_eq!(later[0].column(0).as_binary::<i32>().value(0), b"yes");
    assert_eq!(later[0].column(4).as_string::<i32>().value(0), "ev-b");
}

/// `at_least_once` with `format: raw` and round-robin partitioning: every
/// record is acknowledged by the barrier, spread over the partitions.
#[test]
fn sink_mock_at_least_once_raw_round_robin() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("raw", 2, 1).unwrap();
    let servers = cluster.bootstrap_servers();
    let spec = parse_yaml_or_json(&format!(
        "name: k\nnodes:\n  - {{id: gen, kind: datagen, fields: [{{name: value, type: utf8, gen: sequence}}]}}\n  - {{id: out, kind: kafka, input: gen, bootstrap_servers: '{servers}', topic: raw, format: raw}}\n"
    ))
    .unwrap();
    let mut s = sink(&spec);
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("value", arrow::datatypes::DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![std::sync::Arc::new(arrow::array::StringArray::from(vec![
            "a", "b", "c", "d",
        ]))],
    )
    .unwrap();
    s.on_batch(batch, &mut Collector::new()).unwrap();
    s.snapshot_state(&barrier(1), &mut StateChanges::new())
        .unwrap();
    // Acknowledged at the barrier: both partitions hold two records now.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", "count")
        .create()
        .unwrap();
    for partition in 0..2 {
        assert_eq!(c.fetch_watermarks("raw", partition, BOUND).unwrap().1, 2);
    }
    assert_eq!(consume(&servers, "raw", 2).len(), 2);
}

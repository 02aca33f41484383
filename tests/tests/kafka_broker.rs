//! The test broker (tansu 0.6.0 + scripts/tansu's patch) behaves as Kafka
//! specifies for what the Kafka connector relies on: transactions under
//! read_committed, fencing, transactional offsets, SQLite durability.
//! These guard our patch.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use eddy_tests::kafka::{Engine, KafkaBroker, send_seq};
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use std::ops::Range;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const IDLE: Duration = Duration::from_secs(3);

fn seqs(payloads: &[String]) -> Vec<u64> {
    let mut out: Vec<u64> = payloads
        .iter()
        .map(|p| {
            serde_json::from_str::<serde_json::Value>(p).expect("json")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect();
    out.sort_unstable();
    out
}

/// A memory-engine broker with `topic` of `partitions` partitions, or
/// `None` when the broker tests are skipped.
async fn broker_with_topic(topic: &str, partitions: i32) -> Option<KafkaBroker> {
    let broker = KafkaBroker::start(Engine::Memory).unwrap()?;
    broker.create_topic(topic, partitions).await.unwrap();
    Some(broker)
}

/// How a test transaction ends.
enum End {
    Commit,
    Abort,
    /// Left open (flushed only).
    Open,
}

/// One transaction of `{"seq": n}` records for `seqs`.
fn txn(p: &BaseProducer, topic: &str, partitions: i32, seqs: Range<u64>, end: End) {
    p.begin_transaction().unwrap();
    send_seq(p, topic, partitions, seqs).unwrap();
    match end {
        End::Commit => p.commit_transaction(T).unwrap(),
        End::Abort => {
            p.flush(T).unwrap();
            p.abort_transaction(T).unwrap();
        }
        End::Open => p.flush(T).unwrap(),
    }
}

/// A read_committed consumer sees exactly `expected` in `topic`.
fn assert_committed(broker: &KafkaBroker, topic: &str, expected: Range<u64>) {
    let got = seqs(&broker.consume_committed(topic, IDLE).unwrap());
    assert_eq!(
        got,
        expected.collect::<Vec<_>>(),
        "broker log: {}",
        broker.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_and_abort_visibility_under_read_committed() {
    let Some(broker) = broker_with_topic("t", 2).await else {
        return;
    };
    let p = broker.transactional_producer("txn-visibility").unwrap();

    txn(&p, "t", 2, 0..10, End::Commit);

    txn(&p, "t", 2, 100..110, End::Abort);

    txn(&p, "t", 2, 10..20, End::Commit);

    assert_committed(&broker, "t", 0..20);
}

#[tokio::test(flavor = "multi_thread")]
async fn second_init_transactions_fences_the_old_producer() {
    let Some(broker) = broker_with_topic("t", 1).await else {
        return;
    };
    let old = broker.transactional_producer("txn-fence").unwrap();
    txn(&old, "t", 1, 0..5, End::Open);

    let new = broker.transactional_producer("txn-fence").unwrap();
    let err = old.commit_transaction(Duration::from_secs(10));
    assert!(
        err.is_err(),
        "the old producer's commit must fail: it is fenced"
    );

    txn(&new, "t", 1, 5..10, End::Commit);

    assert_committed(&broker, "t", 5..10);
}

#[tokio::test(flavor = "multi_thread")]
async fn reinit_aborts_a_killed_producers_open_transaction() {
    let Some(broker) = broker_with_topic("t", 2).await else {
        return;
    };
    {
        let p = broker.transactional_producer("txn-killed").unwrap();
        txn(&p, "t", 2, 0..10, End::Open);
        // Dropped without commit or abort: like a process that died.
        std::mem::forget(p);
    }
    let p = broker.transactional_producer("txn-killed").unwrap();
    txn(&p, "t", 2, 10..20, End::Commit);

    assert_committed(&broker, "t", 10..20);
}

#[tokio::test(flavor = "multi_thread")]
async fn transactional_offset_commits() {
    let Some(broker) = broker_with_topic("in", 1).await else {
        return;
    };
    broker.create_topic("out", 1).await.unwrap();
    let consumer: BaseConsumer = broker
        .config()
        .set("group.id", "txn-offsets")
        .create()
        .unwrap();
    let p = broker.transactional_producer("txn-offsets").unwrap();
    let offsets = |o: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("in", 0, Offset::Offset(o))
            .unwrap();
        tpl
    };
    let committed = || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("in", 0);
        let committed = consumer.committed_offsets(tpl, T).unwrap();
        committed.find_partition("in", 0).unwrap().offset()
    };
    let group = consumer.group_metadata().expect("group metadata");

    // One transaction: records `seqs` to "out" and offset `o` of "in", then
    // the group's committed offset must be `expected`.
    let offsets_txn = |seqs: Range<u64>, o: i64, commit: bool, expected: i64| {
        p.begin_transaction().unwrap();
        send_seq(&p, "out", 1, seqs).unwrap();
        p.send_offsets_to_transaction(&offsets(o), &group, T)
            .unwrap();
        p.flush(T).unwrap();
        if commit {
            p.commit_transaction(T).unwrap();
        } else {
            p.abort_transaction(T).unwrap();
        }
        let log = broker.log_tail();
        assert_eq!(committed(), Offset::Offset(expected), "broker log: {log}");
    };
    // Offsets only (no records: guards the memory engine part of the patch).
    offsets_txn(0..0, 7, true, 7);
    offsets_txn(0..0, 9, false, 7);
    // Offsets with records.
    offsets_txn(0..3, 11, true, 11);
    offsets_txn(3..6, 13, false, 11);
    let got = seqs(&broker.consume_committed("out", IDLE).unwrap());
    assert_eq!(got, vec![0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_engine_keeps_committed_data_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let Some(mut broker) = KafkaBroker::start(Engine::Sqlite(data.path().into())).unwrap() else {
        return;
    };
    broker.create_topic("t", 2).await.unwrap();
    let p = broker.transactional_producer("txn-sqlite").unwrap();
    txn(&p, "t", 2, 0..10, End::Commit);
    txn(&p, "t", 2, 100..105, End::Abort);
    drop(p);
    broker.produce_seq("t", 2, 10..15).unwrap();

    broker.restart().unwrap();

    assert_committed(&broker, "t", 0..15);
}

/// Two transactional producers committing at the same time to the same
/// partitions (as the sink subtasks of one job do), then re-initialised (as
/// after a restart) and committing once more: a read_committed consumer
/// sees every record. Guards the memory engine's EndTxn against a race in
/// which one producer's EndTxn completed another's before that one had
/// written its commit markers (see scripts/tansu/README.md).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_transactions_on_shared_partitions_all_complete() {
    const TXNS: u64 = 60;
    const PER_TXN: u64 = 4;
    let Some(broker) = broker_with_topic("t", 2).await else {
        return;
    };
    let broker = std::sync::Arc::new(broker);
    let run = |id: &'static str, base: u64| {
        let broker = std::sync::Arc::clone(&broker);
        std::thread::spawn(move || {
            let p = broker.transactional_producer(id).unwrap();
            for i in 0..TXNS {
                let from = base + i * PER_TXN;
                txn(&p, "t", 2, from..from + PER_TXN, End::Commit);
            }
        })
    };
    let a = run("txn-race-a", 0);
    let b = run("txn-race-b", TXNS * PER_TXN);
    a.join().unwrap();
    b.join().unwrap();
    let end = 2 * TXNS * PER_TXN;
    for (i, id) in ["txn-race-a", "txn-race-b"].into_iter().enumerate() {
        let p = broker.transactional_producer(id).unwrap();
        let from = end + i as u64 * PER_TXN;
        txn(&p, "t", 2, from..from + PER_TXN, End::Commit);
    }
    assert_committed(&broker, "t", 0..end + 2 * PER_TXN);
}

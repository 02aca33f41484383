//! The test broker (tansu 0.6.0 + scripts/tansu's patch) behaves as Kafka
//! specifies for what the Kafka connector relies on: transactions under
//! read_committed, fencing, transactional offsets, SQLite durability.
//! These guard our patch.

use eddy_tests::kafka::{Engine, KafkaBroker, send_seq};
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
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

#[tokio::test(flavor = "multi_thread")]
async fn commit_and_abort_visibility_under_read_committed() {
    let Some(broker) = KafkaBroker::start(Engine::Memory).unwrap() else {
        return;
    };
    broker.create_topic("t", 2).await.unwrap();
    let p = broker.transactional_producer("txn-visibility").unwrap();

    p.begin_transaction().unwrap();
    send_seq(&p, "t", 2, 0..10).unwrap();
    p.commit_transaction(T).unwrap();

    p.begin_transaction().unwrap();
    send_seq(&p, "t", 2, 100..110).unwrap();
    p.flush(T).unwrap();
    p.abort_transaction(T).unwrap();

    p.begin_transaction().unwrap();
    send_seq(&p, "t", 2, 10..20).unwrap();
    p.commit_transaction(T).unwrap();

    let got = seqs(&broker.consume_committed("t", IDLE).unwrap());
    assert_eq!(
        got,
        (0..20).collect::<Vec<_>>(),
        "broker log: {}",
        broker.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn second_init_transactions_fences_the_old_producer() {
    let Some(broker) = KafkaBroker::start(Engine::Memory).unwrap() else {
        return;
    };
    broker.create_topic("t", 1).await.unwrap();
    let old = broker.transactional_producer("txn-fence").unwrap();
    old.begin_transaction().unwrap();
    send_seq(&old, "t", 1, 0..5).unwrap();
    old.flush(T).unwrap();

    let new = broker.transactional_producer("txn-fence").unwrap();
    let err = old.commit_transaction(T);
    assert!(
        err.is_err(),
        "the old producer's commit must fail: it is fenced"
    );

    new.begin_transaction().unwrap();
    send_seq(&new, "t", 1, 5..10).unwrap();
    new.commit_transaction(T).unwrap();

    let got = seqs(&broker.consume_committed("t", IDLE).unwrap());
    assert_eq!(
        got,
        (5..10).collect::<Vec<_>>(),
        "broker log: {}",
        broker.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reinit_aborts_a_killed_producers_open_transaction() {
    let Some(broker) = KafkaBroker::start(Engine::Memory).unwrap() else {
        return;
    };
    broker.create_topic("t", 2).await.unwrap();
    {
        let p = broker.transactional_producer("txn-killed").unwrap();
        p.begin_transaction().unwrap();
        send_seq(&p, "t", 2, 0..10).unwrap();
        p.flush(T).unwrap();
        // Dropped without commit or abort: like a process that died.
        std::mem::forget(p);
    }
    let p = broker.transactional_producer("txn-killed").unwrap();
    p.begin_transaction().unwrap();
    send_seq(&p, "t", 2, 10..20).unwrap();
    p.commit_transaction(T).unwrap();

    let got = seqs(&broker.consume_committed("t", IDLE).unwrap());
    assert_eq!(
        got,
        (10..20).collect::<Vec<_>>(),
        "broker log: {}",
        broker.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn transactional_offset_commits() {
    let Some(broker) = KafkaBroker::start(Engine::Memory).unwrap() else {
        return;
    };
    broker.create_topic("in", 1).await.unwrap();
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
    let partition = || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("in", 0);
        tpl
    };
    let group = consumer.group_metadata().expect("group metadata");

    // Offsets only, committed: visible.
    p.begin_transaction().unwrap();
    p.send_offsets_to_transaction(&offsets(7), &group, T)
        .unwrap();
    p.commit_transaction(T).unwrap();
    // Offsets only, aborted: not visible.
    p.begin_transaction().unwrap();
    p.send_offsets_to_transaction(&offsets(9), &group, T)
        .unwrap();
    p.abort_transaction(T).unwrap();
    // Offsets with records, committed.
    p.begin_transaction().unwrap();
    send_seq(&p, "out", 1, 0..3).unwrap();
    p.send_offsets_to_transaction(&offsets(11), &group, T)
        .unwrap();
    p.commit_transaction(T).unwrap();

    let committed = consumer.committed_offsets(partition(), T).unwrap();
    let offset = committed.find_partition("in", 0).unwrap().offset();
    assert_eq!(
        offset,
        Offset::Offset(11),
        "broker log: {}",
        broker.log_tail()
    );

    // A transaction with offsets 13 aborted leaves 11.
    p.begin_transaction().unwrap();
    send_seq(&p, "out", 1, 3..6).unwrap();
    p.send_offsets_to_transaction(&offsets(13), &group, T)
        .unwrap();
    p.flush(T).unwrap();
    p.abort_transaction(T).unwrap();
    let committed = consumer.committed_offsets(partition(), T).unwrap();
    let offset = committed.find_partition("in", 0).unwrap().offset();
    assert_eq!(
        offset,
        Offset::Offset(11),
        "broker log: {}",
        broker.log_tail()
    );
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
    p.begin_transaction().unwrap();
    send_seq(&p, "t", 2, 0..10).unwrap();
    p.commit_transaction(T).unwrap();
    p.begin_transaction().unwrap();
    send_seq(&p, "t", 2, 100..105).unwrap();
    p.flush(T).unwrap();
    p.abort_transaction(T).unwrap();
    drop(p);
    broker.produce_seq("t", 2, 10..15).unwrap();

    broker.restart().unwrap();

    let got = seqs(&broker.consume_committed("t", IDLE).unwrap());
    assert_eq!(
        got,
        (0..15).collect::<Vec<_>>(),
        "broker log: {}",
        broker.log_tail()
    );
}

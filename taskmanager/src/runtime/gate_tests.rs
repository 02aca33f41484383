use super::*;
use crate::exchange::ChannelFailure;

type Sender = mpsc::Sender<ChannelItem>;

/// A gate over channels `a` and `b`, with watermark alignment at `max_drift`.
fn two_channels(max_drift: Option<i64>) -> (Sender, Sender, InputGate) {
    let (tx0, rx0) = mpsc::channel(8);
    let (tx1, rx1) = mpsc::channel(8);
    let gate = InputGate::new(vec![("a".into(), rx0), ("b".into(), rx1)]).with_max_drift(max_drift);
    (tx0, tx1, gate)
}

#[test]
fn gate_state_emits_min_only_when_it_advances() {
    let mut g = GateState::new(2);
    assert_eq!(
        g.on_watermark(0, 10),
        None,
        "channel 1 has no watermark yet"
    );
    assert_eq!(g.on_watermark(1, 5), Some(5));
    assert_eq!(g.on_watermark(1, 7), Some(7));
    assert_eq!(
        g.on_watermark(1, 6),
        None,
        "a stale watermark changes nothing"
    );
    assert_eq!(g.on_watermark(1, 20), Some(10));
    assert_eq!(g.on_watermark(0, 10), None);
}

#[test]
fn gate_state_ended_channel_counts_as_infinity() {
    let mut g = GateState::new(2);
    g.on_watermark(0, 3);
    assert_eq!(g.on_watermark(1, 8), Some(3));
    assert_eq!(g.on_end(0), (Some(8), false));
    assert_eq!(g.on_end(1), (Some(i64::MAX), true));
}

#[tokio::test]
async fn input_gate_merges_watermarks_and_ends_after_all_channels() {
    let (tx0, tx1, mut gate) = two_channels(None);
    tx0.send(Ok(Element::Watermark(100))).await.unwrap();
    tx1.send(Ok(Element::Watermark(50))).await.unwrap();
    assert!(matches!(gate.next().await.unwrap(), Element::Watermark(50)));
    tx0.send(Ok(Element::Watermark(i64::MAX))).await.unwrap();
    tx0.send(Ok(Element::EndOfStream)).await.unwrap();
    tx1.send(Ok(Element::Watermark(60))).await.unwrap();
    // Whichever channel the gate reads first, the minimum becomes 60.
    assert!(matches!(gate.next().await.unwrap(), Element::Watermark(60)));
    tx1.send(Ok(Element::EndOfStream)).await.unwrap();
    assert!(matches!(
        gate.next().await.unwrap(),
        Element::Watermark(i64::MAX)
    ));
    assert!(matches!(gate.next().await.unwrap(), Element::EndOfStream));
}

#[tokio::test]
async fn input_gate_channel_closed_without_end_fails() {
    let (tx, rx) = mpsc::channel(1);
    let mut gate = InputGate::new(vec![("up[0]".into(), rx)]);
    drop(tx);
    let err = gate.next().await.unwrap_err();
    assert!(err.to_string().contains("up[0]"), "{err}");
}

#[tokio::test]
async fn input_gate_channel_failure_fails_with_reason() {
    let (tx, rx) = mpsc::channel(1);
    let mut gate = InputGate::new(vec![("up[0]".into(), rx)]);
    tx.send(Err(ChannelFailure("undecodable Arrow IPC frame".into())))
        .await
        .unwrap();
    let err = gate.next().await.unwrap_err();
    assert!(
        eddy_sdk::error::error_chain(&err)
            .join(": ")
            .contains("undecodable"),
        "{err}"
    );
}

fn barrier(n: u64) -> Element {
    Element::Barrier(Barrier {
        checkpoint: eddy_sdk::ids::CheckpointId(n),
        timestamp_ms: 0,
        kind: eddy_sdk::operator::BarrierKind::Checkpoint,
    })
}

fn batch(v: i64) -> Element {
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Int64, false),
    ]));
    Element::Batch(
        arrow::record_batch::RecordBatch::try_new(
            schema,
            vec![std::sync::Arc::new(arrow::array::Int64Array::from(vec![v]))],
        )
        .unwrap(),
    )
}

fn value(e: &Element) -> Option<i64> {
    match e {
        Element::Batch(b) => Some(
            b.column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .value(0),
        ),
        _ => None,
    }
}

/// Rows behind a barrier on one channel wait until the barrier arrived on
/// every channel; then the barrier is emitted once, before them.
#[tokio::test]
async fn input_gate_aligns_barriers_and_holds_back_rows_behind_them() {
    let (tx0, tx1, mut gate) = two_channels(None);
    tx0.send(Ok(batch(1))).await.unwrap();
    tx0.send(Ok(barrier(7))).await.unwrap();
    tx0.send(Ok(batch(100))).await.unwrap();
    tx1.send(Ok(batch(2))).await.unwrap();
    let mut before = Vec::new();
    for _ in 0..2 {
        before.push(value(&gate.next().await.unwrap()).unwrap());
    }
    before.sort_unstable();
    assert_eq!(before, [1, 2], "only rows before the barrier pass");
    // Channel a is blocked: its row 100, already queued, must not come out.
    let pending = ready(&mut gate);
    assert!(pending.is_none(), "a blocked channel was read: {pending:?}");
    tx1.send(Ok(barrier(7))).await.unwrap();
    assert!(matches!(gate.next().await.unwrap(), Element::Barrier(b) if b.checkpoint.0 == 7));
    assert_eq!(value(&gate.next().await.unwrap()), Some(100));
}

/// A channel that ends during an alignment no longer holds it up.
#[tokio::test]
async fn input_gate_ended_channel_completes_an_alignment() {
    let (tx0, tx1, mut gate) = two_channels(None);
    tx0.send(Ok(barrier(3))).await.unwrap();
    tx1.send(Ok(Element::Watermark(i64::MAX))).await.unwrap();
    tx1.send(Ok(Element::EndOfStream)).await.unwrap();
    let mut seen = Vec::new();
    loop {
        match gate.next().await.unwrap() {
            Element::Barrier(b) => {
                seen.push(b.checkpoint.0);
                break;
            }
            _ => continue,
        }
    }
    assert_eq!(seen, [3]);
}

/// A newer barrier abandons the alignment of an older one (given up
/// upstream); a late barrier of the abandoned checkpoint is dropped.
#[tokio::test]
async fn input_gate_newer_barrier_abandons_older_alignment() {
    let (tx0, tx1, mut gate) = two_channels(None);
    tx0.send(Ok(barrier(1))).await.unwrap();
    tx1.send(Ok(barrier(2))).await.unwrap();
    tx0.send(Ok(barrier(2))).await.unwrap();
    tx1.send(Ok(barrier(1))).await.unwrap();
    tx1.send(Ok(batch(5))).await.unwrap();
    assert_eq!(drain(&mut gate), ["b2", "v5"]);
}

/// Whether the gate has an element ready without waiting (the channels'
/// items are already queued, so this does not depend on timing).
fn ready(gate: &mut InputGate) -> Option<Element> {
    use futures::FutureExt;
    gate.next().now_or_never().map(|r| r.unwrap())
}

/// Every element ready now, as `w<watermark>`, `b<checkpoint>` or `v<value>`.
fn drain(gate: &mut InputGate) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(e) = ready(gate) {
        out.push(match e {
            Element::Watermark(wm) => format!("w{wm}"),
            Element::Barrier(b) => format!("b{}", b.checkpoint.0),
            e => format!("v{}", value(&e).unwrap()),
        });
    }
    out
}

/// A channel more than the drift ahead of the slowest is not read until
/// the slowest catches up; its rows then come out in order.
#[tokio::test]
async fn watermark_alignment_holds_a_channel_ahead_of_the_slowest() {
    let (tx0, tx1, mut gate) = two_channels(Some(100));
    tx1.send(Ok(Element::Watermark(10))).await.unwrap();
    tx0.send(Ok(Element::Watermark(500))).await.unwrap();
    tx0.send(Ok(batch(1))).await.unwrap();
    // Both watermarks are read (the gate's becomes 10), a's row is not.
    assert_eq!(drain(&mut gate), ["w10"]);
    assert_eq!(gate.alignment_holds(), 1);
    // b moves to 400: a (500) is within 100 of it and is read again.
    tx1.send(Ok(Element::Watermark(400))).await.unwrap();
    assert_eq!(drain(&mut gate), ["w400", "v1"]);
    assert_eq!(gate.alignment_holds(), 1, "one hold, released once");
}

/// Alignment never blocks a barrier: while one is being aligned, the
/// channel ahead is read up to its barrier.
#[tokio::test]
async fn watermark_alignment_yields_to_a_barrier_alignment() {
    let (tx0, tx1, mut gate) = two_channels(Some(100));
    tx1.send(Ok(Element::Watermark(0))).await.unwrap();
    tx1.send(Ok(barrier(4))).await.unwrap();
    tx0.send(Ok(Element::Watermark(1_000))).await.unwrap();
    tx0.send(Ok(batch(7))).await.unwrap();
    tx0.send(Ok(barrier(4))).await.unwrap();
    let out = drain(&mut gate);
    assert_eq!(out.last().map(String::as_str), Some("b4"), "{out:?}");
    assert!(out.contains(&"v7".to_string()), "{out:?}");
}

/// Channels without a watermark yet, or ended, hold nobody back.
#[tokio::test]
async fn watermark_alignment_ignores_silent_and_ended_channels() {
    let (tx0, rx0) = mpsc::channel(8);
    let (tx1, rx1) = mpsc::channel(8);
    let (tx2, rx2) = mpsc::channel(8);
    let mut gate = InputGate::new(vec![
        ("a".into(), rx0),
        ("b".into(), rx1),
        ("c".into(), rx2),
    ])
    .with_max_drift(Some(100));
    // c stays open and sends nothing.
    tx1.send(Ok(Element::Watermark(0))).await.unwrap();
    tx1.send(Ok(Element::Watermark(i64::MAX))).await.unwrap();
    tx1.send(Ok(Element::EndOfStream)).await.unwrap();
    // Read b to its end first: a is then the only channel with a watermark.
    while ready(&mut gate).is_some() {}
    tx0.send(Ok(Element::Watermark(5_000))).await.unwrap();
    tx0.send(Ok(batch(3))).await.unwrap();
    assert_eq!(drain(&mut gate), ["v3"], "nothing holds a back");
    assert_eq!(gate.alignment_holds(), 0);
    drop(tx2);
}

//! The `aggregate` operator against a reference model: per batch, one
//! update per changed key with its current values; state TTL; sweeps and
//! compaction. Fixtures here are shared with `snapshot_tests.rs`.

use super::*;
use crate::operators::harness::{OperatorHarness, StateImage, batches, task_context, watermarks};
use crate::state::ManualClock;
use arrow::array::{Array, AsArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{Field, Float64Type, Int64Type, Schema};
use eddy_sdk::operator::Element;
use eddy_sdk::spec::{AggregateFn, AggregateSpec, HumanDuration};
use proptest::prelude::*;
use std::collections::BTreeMap;

pub(super) const MAXP: u32 = 128;

pub(super) fn input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new("f", DataType::Float64, true),
    ]))
}

/// An input row: key `k` and `s` (one of "a", "b", "c"), value `v`; the
/// float column is `v / 4`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Row {
    pub k: Option<i64>,
    pub s: u8,
    pub v: Option<i64>,
}

const NAMES: [&str; 3] = ["a", "b", "c"];

pub(super) fn to_batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        input_schema(),
        vec![
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.k))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| NAMES[r.s as usize % 3]),
            )),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.v))),
            Arc::new(Float64Array::from_iter(
                rows.iter().map(|r| r.v.map(|v| v as f64 / 4.0)),
            )),
        ],
    )
    .unwrap()
}

pub(super) fn spec(key_by: &[&str], ttl_ms: Option<u64>) -> GroupAggregateSpec {
    let agg = |func, column: Option<&str>, alias: &str| AggregateSpec {
        func,
        column: column.map(str::to_string),
        alias: alias.to_string(),
    };
    GroupAggregateSpec {
        key_by: key_by.iter().map(|s| s.to_string()).collect(),
        aggregates: vec![
            agg(AggregateFn::Count, None, "n"),
            agg(AggregateFn::Count, Some("v"), "nv"),
            agg(AggregateFn::Sum, Some("v"), "total"),
            agg(AggregateFn::Min, Some("v"), "lo"),
            agg(AggregateFn::Max, Some("v"), "hi"),
            agg(AggregateFn::Avg, Some("v"), "mean"),
            agg(AggregateFn::Sum, Some("f"), "ftotal"),
        ],
        state_ttl: ttl_ms.map(HumanDuration::from_millis),
    }
}

/// Subtask `i` of `p` of an `aggregate` node on `clock`.
pub(super) fn subtask(
    spec: &GroupAggregateSpec,
    i: u32,
    p: u32,
    clock: &Arc<ManualClock>,
) -> OperatorHarness {
    let op = Aggregate::new(
        &NodeId::from("agg"),
        spec,
        &input_schema(),
        &task_context(i, p, true),
    )
    .unwrap()
    .with_clock(clock.clone());
    OperatorHarness::new(vec![Box::new(op)])
}

/// A key as the model sees it: the `key_by` columns of `[k, s]` that are set.
pub(super) type Key = (Option<i64>, Option<String>);

/// One key's aggregates, as emitted.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Values {
    pub n: i64,
    pub nv: i64,
    pub total: Option<i64>,
    pub lo: Option<i64>,
    pub hi: Option<i64>,
    pub mean: Option<f64>,
    pub ftotal: Option<f64>,
}

/// The reference: per key, its values and last update time.
#[derive(Default)]
pub(super) struct Model {
    pub ttl: Option<i64>,
    pub keys: BTreeMap<Key, (Values, f64, i64)>,
}

impl Model {
    /// The key of `row` under `key_by` (`k`, `s`, or both).
    pub fn key(key_by: &[&str], row: &Row) -> Key {
        (
            key_by.contains(&"k").then_some(row.k).flatten(),
            key_by
                .contains(&"s")
                .then(|| NAMES[row.s as usize % 3].to_string()),
        )
    }

    /// Folds a batch in at `now`; returns its updates in first-appearance order.
    pub fn batch(&mut self, key_by: &[&str], rows: &[Row], now: i64) -> Vec<(Key, Values)> {
        let mut order: Vec<Key> = Vec::new();
        for row in rows {
            let key = Self::key(key_by, row);
            if !order.contains(&key) {
                order.push(key.clone());
                let expired = self
                    .keys
                    .get(&key)
                    .is_some_and(|(_, _, t)| self.ttl.is_some_and(|ttl| t + ttl <= now));
                if expired {
                    self.keys.remove(&key);
                }
            }
            let (vals, sum, at) = self.keys.entry(key).or_default();
            *at = now;
            vals.n += 1;
            if let Some(v) = row.v {
                vals.nv += 1;
                vals.total = Some(vals.total.unwrap_or(0).wrapping_add(v));
                vals.lo = Some(vals.lo.map_or(v, |lo| lo.min(v)));
                vals.hi = Some(vals.hi.map_or(v, |hi| hi.max(v)));
                *sum += v as f64;
                vals.mean = Some(*sum / vals.nv as f64);
                vals.ftotal = Some(vals.ftotal.unwrap_or(0.0) + v as f64 / 4.0);
            }
        }
        order
            .into_iter()
            .map(|k| {
                let v = self.keys[&k].0.clone();
                (k, v)
            })
            .collect()
    }

    /// Keys not expired at `now`.
    pub fn live(&self, now: i64) -> usize {
        self.keys
            .values()
            .filter(|(_, _, t)| self.ttl.is_none_or(|ttl| t + ttl > now))
            .count()
    }
}

/// The rows of update batches, in order.
pub(super) fn updates(key_by: &[&str], out: &[Element]) -> Vec<(Key, Values)> {
    let mut got = Vec::new();
    for b in batches(out) {
        let col = |name: &str| b.column(b.schema().index_of(name).unwrap()).clone();
        let int = |name: &str, i: usize| {
            let c = col(name);
            c.is_valid(i)
                .then(|| c.as_primitive::<Int64Type>().value(i))
        };
        let float = |name: &str, i: usize| {
            let c = col(name);
            c.is_valid(i)
                .then(|| c.as_primitive::<Float64Type>().value(i))
        };
        for i in 0..b.num_rows() {
            let k = key_by.contains(&"k").then(|| int("k", i)).flatten();
            let s = key_by
                .contains(&"s")
                .then(|| col("s").as_string::<i32>().value(i).to_string());
            got.push((
                (k, s),
                Values {
                    n: int("n", i).unwrap(),
                    nv: int("nv", i).unwrap(),
                    total: int("total", i),
                    lo: int("lo", i),
                    hi: int("hi", i),
                    mean: float("mean", i),
                    ftotal: float("ftotal", i),
                },
            ));
        }
    }
    got
}

#[test]
fn aggregate_emits_one_update_per_changed_key_with_its_current_values() {
    let clock = ManualClock::new(0);
    let key_by = ["k"];
    let mut h = subtask(&spec(&key_by, None), 0, 1, &clock);
    let row = |k, v| Row {
        k: Some(k),
        s: 0,
        v,
    };
    let out = h
        .batch(to_batch(&[row(1, Some(5)), row(2, None), row(1, Some(-3))]))
        .unwrap();
    let got = updates(&key_by, &out);
    assert_eq!(got.len(), 2, "one row per key: {got:?}");
    assert_eq!(got[0].0, (Some(1), None));
    assert_eq!(
        got[0].1,
        Values {
            n: 2,
            nv: 2,
            total: Some(2),
            lo: Some(-3),
            hi: Some(5),
            mean: Some(1.0),
            ftotal: Some(0.5),
        }
    );
    assert_eq!((got[1].1.n, got[1].1.nv, got[1].1.total), (1, 0, None));

    let out = h.batch(to_batch(&[row(2, Some(7))])).unwrap();
    let got = updates(&key_by, &out);
    assert_eq!(got.len(), 1, "only the changed key: {got:?}");
    assert_eq!(
        (got[0].1.n, got[0].1.total, got[0].1.mean),
        (2, Some(7), Some(7.0))
    );
}

#[test]
fn aggregate_forwards_watermarks_and_emits_nothing_at_the_end() {
    let clock = ManualClock::new(0);
    let mut h = subtask(&spec(&["k"], Some(10)), 0, 1, &clock);
    h.batch(to_batch(&[Row {
        k: Some(1),
        s: 0,
        v: Some(1),
    }]))
    .unwrap();
    let out = h.watermark(42).unwrap();
    assert_eq!(watermarks(&out), [42]);
    assert!(batches(&out).is_empty());
    let out = h.end().unwrap();
    assert!(batches(&out).is_empty(), "nothing more at the end");
    assert!(matches!(out.as_slice(), [Element::EndOfStream]));
}

#[test]
fn aggregate_expired_key_restarts_from_zero_and_is_deleted_at_the_next_barrier() {
    let clock = ManualClock::new(1_000);
    let key_by = ["k"];
    let mut h = subtask(&spec(&key_by, Some(100)), 0, 1, &clock);
    let row = |k, v| Row {
        k: Some(k),
        s: 0,
        v: Some(v),
    };
    h.batch(to_batch(&[row(1, 10), row(2, 20)])).unwrap();
    h.checkpoint(1).unwrap();
    assert_eq!(h.image(0).len(), 2);

    clock.advance(60);
    h.batch(to_batch(&[row(2, 1)])).unwrap(); // key 2 refreshed at 1060
    clock.advance(40); // 1100: key 1 (written at 1000) has expired
    let got = updates(&key_by, &h.batch(to_batch(&[row(1, 5)])).unwrap());
    assert_eq!(got[0].1.n, 1, "an expired key starts from zero: {got:?}");
    assert_eq!(got[0].1.total, Some(5));

    clock.advance(100); // 1200: both expired, neither touched since
    h.checkpoint(2).unwrap();
    assert!(h.image(0).is_empty(), "expired keys deleted at the barrier");
    assert_eq!(h.image(0).last_changes, (false, 2), "two deletes");
    let got = updates(&key_by, &h.batch(to_batch(&[row(2, 3)])).unwrap());
    assert_eq!((got[0].1.n, got[0].1.total), (1, Some(3)));
}

#[test]
fn aggregate_sweeps_and_compacts_expired_keys_without_barriers() {
    let clock = ManualClock::new(0);
    let key_by = ["k", "s"];
    let spec = spec(&key_by, Some(500));
    let mut op = Aggregate::new(
        &NodeId::from("agg"),
        &spec,
        &input_schema(),
        &task_context(0, 1, false),
    )
    .unwrap()
    .with_clock(clock.clone());
    let mut out = Collector::new();
    let rows: Vec<Row> = (0..3_000)
        .map(|k| Row {
            k: Some(k),
            s: (k % 3) as u8,
            v: Some(k),
        })
        .collect();
    op.on_batch(to_batch(&rows), &mut out).unwrap();
    assert_eq!(op.live_keys(), 3_000);
    clock.advance(2_000);
    let hot = [Row {
        k: Some(7),
        s: 1,
        v: Some(1),
    }];
    op.on_batch(to_batch(&hot), &mut out).unwrap();
    assert_eq!(
        op.live_keys(),
        1,
        "the sweep after the batch dropped the idle keys"
    );
    assert!(
        op.keys_held() < 10,
        "compacted: {} keys held",
        op.keys_held()
    );
    out.drain();
    op.on_batch(to_batch(&[hot[0], rows[5]]), &mut out).unwrap();
    let got = updates(&key_by, &out.drain().collect::<Vec<_>>());
    assert_eq!(
        got[0].1.n, 2,
        "the live key kept its state across compaction"
    );
    assert_eq!((got[1].1.n, got[1].1.total), (1, Some(5)));
}

/// One step of a generated run.
#[derive(Clone, Debug)]
enum Step {
    Batch(Vec<Row>),
    /// Processing time moves on (ms).
    Advance(i64),
    Watermark,
    /// A barrier: the state image must hold exactly the live keys.
    Barrier,
    /// A barrier, then the operator is rebuilt from its state.
    Restore,
}

fn step() -> impl Strategy<Value = Step> {
    let row = (
        proptest::option::weighted(0.9, 0i64..8),
        0u8..3,
        proptest::option::weighted(0.8, -1_000i64..1_000),
    )
        .prop_map(|(k, s, v)| Row { k, s, v });
    prop_oneof![
        8 => proptest::collection::vec(row, 1..24).prop_map(Step::Batch),
        3 => (0i64..1_500).prop_map(Step::Advance),
        1 => Just(Step::Watermark),
        1 => Just(Step::Barrier),
        1 => Just(Step::Restore),
    ]
}

fn check_run(key_by: &[&str], ttl: Option<i64>, steps: &[Step]) -> Result<(), TestCaseError> {
    let clock = ManualClock::new(10_000);
    let spec = spec(key_by, ttl.map(|t| t as u64));
    let mut h = subtask(&spec, 0, 1, &clock);
    let mut model = Model {
        ttl,
        ..Model::default()
    };
    for (n, step) in steps.iter().enumerate() {
        let n = n as u64 + 1;
        match step {
            Step::Batch(rows) => {
                let expected = model.batch(key_by, rows, clock.now_ms());
                let got = updates(key_by, &h.batch(to_batch(rows)).unwrap());
                prop_assert_eq!(got, expected);
            }
            Step::Advance(ms) => clock.advance(*ms),
            Step::Watermark => {
                prop_assert_eq!(watermarks(&h.watermark(n as i64).unwrap()), [n as i64]);
            }
            Step::Barrier | Step::Restore => {
                h.checkpoint(n).unwrap();
                prop_assert_eq!(h.image(0).len(), model.live(clock.now_ms()));
                if matches!(step, Step::Restore) {
                    let image = h.image(0).clone();
                    h = subtask(&spec, 0, 1, &clock);
                    h.restore(0, StateImage::restore(&[&image], 0..MAXP))
                        .unwrap();
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random batches, clock moves, barriers and restores: every batch's
    /// updates equal the model's, with and without TTL, for an Int64 key
    /// (the fast path), a string key and a composite one (row format).
    #[test]
    fn aggregate_updates_match_a_reference_model(
        steps in proptest::collection::vec(step(), 1..40),
        ttl in proptest::option::of(1i64..2_000),
        keys in 0usize..3,
    ) {
        let key_by: &[&str] = [&["k"][..], &["s"], &["k", "s"]][keys];
        check_run(key_by, ttl, &steps)?;
    }
}

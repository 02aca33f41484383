use super::*;
use crate::operators::harness::drain_source;
use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
use eddy_sdk::ids::{JobId, VertexId};
use eddy_sdk::plan::infer_schemas;
use eddy_sdk::spec::{JobSpec, NodeKind, parse_yaml_or_json};

const GEN: &str = r#"
name: g
parallelism: 3
nodes:
  - {id: gen, kind: datagen, count: COUNT, seed: 7, fields: [
      {name: id, type: int64, gen: sequence},
      {name: label, type: utf8, gen: sequence, start: 100, step: 2},
      {name: dice, type: int64, gen: random, min: 1, max: 6},
      {name: price, type: float64, gen: random, min: 0.5, max: 2.5},
      {name: ts, type: timestamp_ms, gen: timestamp, start: "2026-01-01T00:00:00Z", step: 10ms}]}
  - {id: out, kind: blackhole, input: gen}
"#;

fn spec(count: u64, extra: &str) -> JobSpec {
    let yaml = GEN
        .replace("COUNT", &count.to_string())
        .replace("seed: 7,", &format!("seed: 7, {extra}"));
    parse_yaml_or_json(&yaml).unwrap()
}

fn source(spec: &JobSpec, subtask: u32, parallelism: u32) -> Datagen {
    let NodeKind::Datagen(d) = &spec.nodes[0].kind else {
        unreachable!("the first node is the datagen")
    };
    let schema = infer_schemas(spec)
        .unwrap()
        .get(&spec.nodes[0].id)
        .unwrap()
        .clone();
    let ctx = TaskContext {
        job_id: JobId::from("j"),
        vertex: VertexId(0),
        subtask,
        parallelism,
        max_parallelism: 128,
        latency_interval: None,
        attempt: 0,
        exactly_once: false,
    };
    Datagen::new(&spec.nodes[0].id, d, schema, &ctx)
}

/// Every generated row as (id, label, dice, price bits, ts), sorted by id.
fn rows(batches: &[RecordBatch]) -> Vec<(i64, String, i64, u64, i64)> {
    let mut out = Vec::new();
    for b in batches {
        let id = b.column(0).as_primitive::<Int64Type>();
        let label = b.column(1).as_string::<i32>();
        let dice = b.column(2).as_primitive::<Int64Type>();
        let price = b.column(3).as_primitive::<Float64Type>();
        let ts = b.column(4).as_primitive::<TimestampMillisecondType>();
        for i in 0..b.num_rows() {
            out.push((
                id.value(i),
                label.value(i).to_string(),
                dice.value(i),
                price.value(i).to_bits(),
                ts.value(i),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn datagen_rows_do_not_depend_on_parallelism() {
    let s = spec(1_000, "batch_size: 64,");
    let single = rows(&drain_source(&mut source(&s, 0, 1)));
    let mut split = Vec::new();
    for i in 0..3 {
        split.extend(drain_source(&mut source(&s, i, 3)));
    }
    let split = rows(&split);
    assert_eq!(single.len(), 1_000);
    assert_eq!(single, split);
    let (id, label, _, _, ts) = &single[7];
    assert_eq!(
        (*id, label.as_str(), *ts),
        (7, "114", 1_767_225_600_000 + 70)
    );
}

#[test]
fn datagen_count_bounds_the_total_over_subtasks() {
    for (count, p) in [(10u64, 3u32), (300, 3), (1_000, 4), (2, 3)] {
        let s = spec(count, "");
        let mut all: Vec<i64> = (0..p)
            .flat_map(|i| rows(&drain_source(&mut source(&s, i, p))))
            .map(|r| r.0)
            .collect();
        all.sort_unstable();
        let want: Vec<i64> = (0..count as i64).collect();
        assert_eq!(all, want, "count {count} at parallelism {p}");
    }
    // Rows go by split (`r mod 128`): at parallelism 2, subtask 1 owns splits
    // 64..128, so of rows 0..300 it generates 64..128 and 192..256.
    let ids: Vec<i64> = rows(&drain_source(&mut source(&spec(300, ""), 1, 2)))
        .iter()
        .map(|r| r.0)
        .collect();
    let want: Vec<i64> = (64..128).chain(192..256).collect();
    assert_eq!(ids, want);
}

#[test]
fn datagen_batches_are_batch_size_rows() {
    let sizes: Vec<usize> = drain_source(&mut source(&spec(20_000, ""), 0, 1))
        .iter()
        .map(|b| b.num_rows())
        .collect();
    assert_eq!(sizes, [8192, 8192, 3616]);
}

#[test]
fn datagen_random_values_stay_in_range_and_vary() {
    let all = rows(&drain_source(&mut source(&spec(5_000, ""), 0, 1)));
    assert!(all.iter().all(|r| (1..=6).contains(&r.2)));
    for face in 1..=6 {
        assert!(all.iter().any(|r| r.2 == face), "face {face} never came up");
    }
    let prices: Vec<f64> = all.iter().map(|r| f64::from_bits(r.3)).collect();
    assert!(prices.iter().all(|p| (0.5..2.5).contains(p)));
    assert!(prices.iter().any(|p| *p < 1.0) && prices.iter().any(|p| *p > 2.0));
}

#[test]
fn datagen_seed_changes_random_columns_only() {
    let a = rows(&drain_source(&mut source(&spec(100, ""), 0, 1)));
    let other =
        parse_yaml_or_json(&GEN.replace("COUNT", "100").replace("seed: 7", "seed: 8")).unwrap();
    let b = rows(&drain_source(&mut source(&other, 0, 1)));
    assert!(
        a.iter()
            .zip(&b)
            .all(|(x, y)| x.0 == y.0 && x.1 == y.1 && x.4 == y.4)
    );
    assert_ne!(
        a.iter().map(|r| r.3).collect::<Vec<_>>(),
        b.iter().map(|r| r.3).collect::<Vec<_>>()
    );
}

#[test]
fn datagen_with_rate_is_idle_before_tokens_accrue() {
    let mut s = source(&spec(1_000, "rows_per_second: 10,"), 0, 1);
    let mut c = Collector::new();
    assert!(
        matches!(s.poll(&mut c).unwrap(), SourcePoll::Idle(d) if d > std::time::Duration::ZERO)
    );
    assert!(c.is_empty());
}

/// A sub-millisecond step keeps its precision: `step: 10us` advances event time
/// by one millisecond every 100 rows, at any parallelism.
#[test]
fn datagen_sub_millisecond_step_advances_event_time_every_100_rows() {
    let spec = parse_yaml_or_json(
        "name: g\nparallelism: 2\nnodes:\n  - {id: gen, kind: datagen, count: 1000, fields: [{name: id, type: int64, gen: sequence}, {name: ts, type: timestamp_ms, gen: timestamp, start: \"2026-01-01T00:00:00Z\", step: 10us}]}\n  - {id: out, kind: blackhole, input: gen}\n",
    )
    .unwrap();
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .timestamp_millis();
    let mut seen = Vec::new();
    for subtask in 0..2 {
        for b in drain_source(&mut source(&spec, subtask, 2)) {
            let id = b.column(0).as_primitive::<Int64Type>();
            let ts = b.column(1).as_primitive::<TimestampMillisecondType>();
            for i in 0..b.num_rows() {
                seen.push((id.value(i), ts.value(i) - base));
            }
        }
    }
    seen.sort_unstable();
    assert_eq!(seen.len(), 1000);
    for (id, offset) in seen {
        assert_eq!(offset, id / 100, "row {id}");
    }
}

/// Positions checkpointed at parallelism 2 mid-way and restored at 1 and 3:
/// every row comes out exactly once over both runs.
#[test]
fn datagen_restored_at_another_parallelism_emits_each_row_once() {
    use crate::operators::harness::{StateImage, barrier};
    use eddy_sdk::operator::StateChanges;
    let s = spec(50_000, "batch_size: 1000,");
    for to in [1u32, 3] {
        let mut all: Vec<i64> = Vec::new();
        let mut images = Vec::new();
        for i in 0..2 {
            let mut src = source(&s, i, 2);
            for _ in 0..7 + i {
                let mut out = Collector::new();
                src.poll(&mut out).unwrap();
                let batches: Vec<RecordBatch> = out
                    .drain()
                    .filter_map(|e| match e {
                        eddy_sdk::operator::Element::Batch(b) => Some(b),
                        _ => None,
                    })
                    .collect();
                all.extend(rows(&batches).iter().map(|r| r.0));
            }
            let mut changes = StateChanges::new();
            src.snapshot_state(&barrier(1), &mut changes).unwrap();
            let mut image = StateImage::default();
            image.apply(changes);
            images.push(image);
        }
        let images: Vec<&StateImage> = images.iter().collect();
        for i in 0..to {
            let mut src = source(&s, i, to);
            let range = eddy_sdk::keygroup::key_group_range(128, to, i);
            src.restore_state(StateImage::restore(&images, range))
                .unwrap();
            all.extend(rows(&drain_source(&mut src)).iter().map(|r| r.0));
        }
        all.sort_unstable();
        let want: Vec<i64> = (0..50_000).collect();
        assert_eq!(
            all.len(),
            want.len(),
            "restored at {to}: no row twice, none lost"
        );
        assert_eq!(all, want, "restored at {to}");
    }
}

//! The reference on small inputs: properties each query's answer must have,
//! brute-force recomputations of the windowed ones, the spec checks, reading
//! part files and the multiset comparison.
#![allow(clippy::unwrap_used)]

use super::*;
use eddy_sdk::nexmark::DEFAULT_BASE_TIME_MS;
use eddy_sdk::spec::parse_yaml_or_json;
use std::collections::BTreeMap;

/// The bench spec of `query` with a bounded source of `count` events.
fn bench_spec(query: Query, count: u64) -> JobSpec {
    let text = match query {
        Query::Q0 => include_str!("../../../bench/nexmark/q0.yaml"),
        Query::Q1 => include_str!("../../../bench/nexmark/q1.yaml"),
        Query::Q2 => include_str!("../../../bench/nexmark/q2.yaml"),
        Query::Q5 => include_str!("../../../bench/nexmark/q5.yaml"),
        Query::Q11 => include_str!("../../../bench/nexmark/q11.yaml"),
        Query::Q12 => include_str!("../../../bench/nexmark/q12.yaml"),
    };
    let mut spec = parse_yaml_or_json(text).unwrap();
    let NodeKind::Nexmark(source) = &mut spec.nodes[0].kind else {
        panic!("{query} starts with its nexmark source")
    };
    source.count = Some(count);
    spec
}

fn events(count: u64) -> Events {
    Events {
        config: GeneratorConfig::default(),
        count,
    }
}

/// Events at 1 000 events/s of event time: a cold bidder bids every 4 s on
/// average while it is among the 1 000 active people (50 s), so it often
/// pauses longer than a 10 s session gap. (At the default 10 000 events/s a
/// person leaves the active set after 5 s and never pauses that long.)
fn slow_events(count: u64) -> Events {
    Events {
        config: GeneratorConfig {
            inter_event_delay_us: 1_000.0,
            ..GeneratorConfig::default()
        },
        count,
    }
}

fn bids_of(events: &Events) -> Vec<(i64, i64, i64, i64)> {
    let mut out = Vec::new();
    events.for_each_bid(|b| out.push((b.auction, b.bidder, b.price, b.date_time)));
    out
}

fn bids(count: u64) -> Vec<(i64, i64, i64, i64)> {
    bids_of(&events(count))
}

fn ms(v: &Value) -> i64 {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

#[test]
fn query_of_bench_specs_recognizes_each_and_rejects_others() {
    for q in Query::ALL {
        assert_eq!(Query::of(&bench_spec(q, 100)).unwrap(), q);
    }
    let mut spec = bench_spec(Query::Q0, 100);
    spec.name = "nexmark-q3".into();
    assert!(matches!(expected(&spec), Err(Error::UnknownQuery(n)) if n == "nexmark-q3"));
}

#[test]
fn q0_is_every_bid_with_its_columns() {
    let count = 5_000; // a multiple of 50: 46 bids per 50 events
    let rows = expected(&bench_spec(Query::Q0, count)).unwrap();
    assert_eq!(rows.len() as u64, count / 50 * 46);
    // Event 4 is the first bid, at the base time.
    let mut g = Generator::new(GeneratorConfig::default());
    let b = g.bid(4);
    assert_eq!(
        rows[0],
        json!({
            "auction": b.auction,
            "bidder": b.bidder,
            "price": b.price,
            "date_time": "2015-07-15T00:00:00.000Z",
            "extra": b.extra,
        })
    );
    let last = rows.last().unwrap();
    assert_eq!(ms(&last["date_time"]), DEFAULT_BASE_TIME_MS + 499); // event 4999 at 10k/s
}

#[test]
fn q1_is_q0_with_the_price_converted() {
    let q0 = expected(&bench_spec(Query::Q0, 2_000)).unwrap();
    let q1 = expected(&bench_spec(Query::Q1, 2_000)).unwrap();
    assert_eq!(q0.len(), q1.len());
    for (a, b) in q0.iter().zip(&q1) {
        let price = a["price"].as_i64().unwrap();
        assert_eq!(b["price"].as_f64().unwrap(), 0.908 * price as f64);
        let mut b = b.clone();
        b["price"] = a["price"].clone();
        assert_eq!(a, &b);
    }
}

#[test]
fn q2_keeps_exactly_the_bids_on_every_123rd_auction() {
    let count = 50_000;
    let rows = expected(&bench_spec(Query::Q2, count)).unwrap();
    let want: Vec<Value> = bids(count)
        .into_iter()
        .filter(|b| b.0 % 123 == 0)
        .map(|(auction, _, price, _)| json!({"auction": auction, "price": price}))
        .collect();
    assert!(
        !want.is_empty(),
        "some auction ids of 50 000 events are multiples of 123"
    );
    assert_eq!(rows, want);
}

#[test]
fn q5_matches_a_brute_force_count_per_window() {
    let count = 30_000; // 3 s of event time: windows overlap the start and the end
    let (size, slide) = (10_000, 2_000);
    let all = bids(count);
    let windows = hot_items(&events(count), size, slide);
    let (first, last) = (all[0].3, all.last().unwrap().3);
    // Every window start (a multiple of the slide) that covers some bid.
    let starts: Vec<i64> = (first - size + 1..=last)
        .filter(|s| s.rem_euclid(slide) == 0)
        .collect();
    assert_eq!(windows.iter().map(|w| w.start).collect::<Vec<_>>(), starts);
    for w in &windows {
        let mut per_auction: HashMap<i64, i64> = HashMap::new();
        for b in all
            .iter()
            .filter(|b| w.start <= b.3 && b.3 < w.start + size)
        {
            *per_auction.entry(b.0).or_default() += 1;
        }
        let max = *per_auction.values().max().unwrap();
        let mut winners: Vec<i64> = per_auction
            .iter()
            .filter(|(_, n)| **n == max)
            .map(|(a, _)| *a)
            .collect();
        winners.sort_unstable();
        assert_eq!((w.max, &w.winners), (max, &winners), "window {}", w.start);
    }
    let rows = expected(&bench_spec(Query::Q5, count)).unwrap();
    let n_winners: usize = windows.iter().map(|w| w.winners.len()).sum();
    assert_eq!(rows.len(), n_winners);
    assert!(
        rows.iter()
            .all(|r| r.as_object().unwrap().len() == 2 && r["num"].is_i64())
    );
}

#[test]
fn q5_rows_of_one_window_share_its_maximum() {
    let windows = hot_items(&events(100_000), 10_000, 2_000);
    assert!(windows.len() >= 5);
    for w in &windows {
        assert!(!w.winners.is_empty() && w.max > 0, "{w:?}");
    }
}

#[test]
fn q11_sessions_partition_each_bidders_bids_and_are_gap_apart() {
    let gap = 10_000;
    let events = slow_events(200_000); // 200 s
    let all = bids_of(&events);
    let sessions = sessions(&events, gap);
    assert_eq!(
        sessions.iter().map(|s| s.count).sum::<i64>(),
        all.len() as i64
    );
    let mut per_bidder: BTreeMap<i64, Vec<&Session>> = BTreeMap::new();
    for s in &sessions {
        assert!(s.end - s.start >= gap, "{s:?}");
        per_bidder.entry(s.bidder).or_default().push(s);
    }
    for list in per_bidder.values() {
        for pair in list.windows(2) {
            // The next session starts more than `gap` after the previous' last bid.
            assert!(pair[1].start > pair[0].end, "{:?}", pair);
        }
    }
    assert!(
        per_bidder.values().any(|l| l.len() > 1),
        "some bidder pauses"
    );
    // Each bid lies in exactly one session of its bidder, between its first
    // and last bid.
    for &(_, bidder, _, t) in all.iter().step_by(97) {
        let hits = per_bidder[&bidder]
            .iter()
            .filter(|s| s.start <= t && t <= s.end - gap)
            .count();
        assert_eq!(hits, 1, "bid of {bidder} at {t}");
    }
    let mut spec = bench_spec(Query::Q11, events.count);
    let NodeKind::Nexmark(source) = &mut spec.nodes[0].kind else {
        unreachable!()
    };
    source.events_per_second = Some(1_000.0);
    let rows = expected(&spec).unwrap();
    assert_eq!(rows.len(), sessions.len());
    let s = &sessions[0];
    assert!(rows.contains(&json!({
        "bidder": s.bidder,
        "window_start": timestamp(s.start),
        "window_end": timestamp(s.end),
        "bid_count": s.count,
    })));
}

#[test]
fn q12_counts_sum_to_the_bids_in_aligned_windows() {
    let count = 250_000; // 25 s: three 10 s windows
    let rows = expected(&bench_spec(Query::Q12, count)).unwrap();
    let total: i64 = rows.iter().map(|r| r["bid_count"].as_i64().unwrap()).sum();
    assert_eq!(total as u64, count / 50 * 46);
    let mut seen = std::collections::HashSet::new();
    for r in &rows {
        let (start, end) = (ms(&r["window_start"]), ms(&r["window_end"]));
        assert_eq!((start % 10_000, end - start), (0, 10_000), "{r}");
        assert!(
            seen.insert((r["bidder"].as_i64().unwrap(), start)),
            "twice: {r}"
        );
    }
    let starts: std::collections::BTreeSet<i64> = seen.iter().map(|k| k.1).collect();
    assert_eq!(starts.len(), 3);
}

#[test]
fn expected_uses_the_sources_generator_settings() {
    let mut spec = bench_spec(Query::Q0, 100);
    let NodeKind::Nexmark(source) = &mut spec.nodes[0].kind else {
        unreachable!()
    };
    source.events_per_second = Some(1_000.0);
    source.seed = 7;
    let rows = expected(&spec).unwrap();
    // Event 5 (the second bid) is 5 ms after the base time at 1000 events/s.
    assert_eq!(ms(&rows[1]["date_time"]), DEFAULT_BASE_TIME_MS + 5);
    let default = expected(&bench_spec(Query::Q0, 100)).unwrap();
    assert_ne!(
        rows[0]["extra"], default[0]["extra"],
        "the seed changes the events"
    );
}

#[test]
fn expected_rejects_a_spec_the_reference_does_not_compute() {
    let mut spec = bench_spec(Query::Q5, 100);
    let NodeKind::TopN(top) = &mut spec.nodes[2].kind else {
        panic!("q5's third node is its top_n")
    };
    top.n = 2;
    let e = expected(&spec).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                query: Query::Q5,
                ..
            }
        ),
        "{e}"
    );

    let mut spec = bench_spec(Query::Q2, 100);
    let NodeKind::Filter(f) = &mut spec.nodes[1].kind else {
        panic!("q2's second node is its filter")
    };
    f.predicate = "auction % 7 = 0".into();
    assert!(
        expected(&spec)
            .unwrap_err()
            .to_string()
            .contains("auction % 7 = 0")
    );

    let mut spec = bench_spec(Query::Q12, 100);
    spec.nodes.remove(1);
    spec.nodes[1].input = Some(spec.nodes[0].id.clone());
    assert!(matches!(expected(&spec), Err(Error::Shape { .. })));

    let mut spec = bench_spec(Query::Q12, 100);
    let NodeKind::Nexmark(source) = &mut spec.nodes[0].kind else {
        unreachable!()
    };
    source.count = None;
    assert!(matches!(expected(&spec), Err(Error::Unbounded(Query::Q12))));
}

#[test]
fn read_output_reads_every_part_file_and_names_a_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("part-0.jsonl"), "{\"a\":1}\n{\"a\":2}\n").unwrap();
    std::fs::write(dir.path().join("part-1.jsonl"), "\n{\"a\":3}\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not json").unwrap();
    let rows = read_output(dir.path()).unwrap();
    assert_eq!(rows, [json!({"a": 1}), json!({"a": 2}), json!({"a": 3})]);

    std::fs::write(dir.path().join("part-2.jsonl"), "{\"a\":4}\n{oops\n").unwrap();
    match read_output(dir.path()) {
        Err(Error::Json { path, line, .. }) => {
            assert!(path.ends_with("part-2.jsonl"));
            assert_eq!(line, 2);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        read_output(&dir.path().join("absent")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn compare_ignores_order_and_float_noise() {
    let want = vec![
        json!({"a": 1, "p": 0.1 * 3.0}),
        json!({"a": 1, "p": 2.5}),
        json!({"a": 2, "t": "x"}),
    ];
    let got = vec![
        json!({"t": "x", "a": 2}),
        json!({"a": 1, "p": 2.5}),
        // One unit in the last place away, as a lossy parse may produce.
        json!({"a": 1, "p": f64::from_bits((0.1f64 * 3.0).to_bits() + 1)}),
    ];
    compare("t", got, want).unwrap();
    // An integral double may be written without a fraction.
    compare("t", vec![json!({"p": 908})], vec![json!({"p": 908.0})]).unwrap();
}

#[test]
fn compare_reports_missing_unexpected_and_duplicated_rows() {
    let want = vec![json!({"a": 1}), json!({"a": 2}), json!({"a": 3})];
    let got = vec![json!({"a": 1}), json!({"a": 1}), json!({"a": 3})];
    let e = compare("q9", got, want).unwrap_err();
    assert!(
        e.starts_with("q9: 3 rows expected, 3 written: 1 missing, 1 unexpected"),
        "{e}"
    );
    assert!(e.contains("missing: {\"a\":2}"), "{e}");
    assert!(e.contains("unexpected: {\"a\":1}"), "{e}");

    let e = compare(
        "q1",
        vec![json!({"p": 1.5})],
        vec![json!({"p": 1.5 + 1e-9})],
    )
    .unwrap_err();
    assert!(e.contains("1 missing, 1 unexpected"), "{e}");
}

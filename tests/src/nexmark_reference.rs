//! A single-threaded reference for the Nexmark queries of `bench/nexmark`
//! (q0, q1, q2, q5, q11, q12): what a bounded run of the query must write,
//! computed with plain loops and hash maps from the same generator the
//! `nexmark` source uses, so a distributed run can be checked row for row.
//!
//! [`expected`] recognizes the query by the job's name (`nexmark-q5`) and
//! checks that the spec's chain of nodes is the shape this module computes
//! (same kinds, keys, expressions, windows); a spec that drifts from the
//! reference is an [`Error::Shape`], never a silently different answer. Window
//! sizes, slides and gaps and the aggregate's column name are read from the
//! spec; everything else is fixed by the query.
//!
//! What the engine guarantees and the reference relies on:
//! - the events are `0..count` of `eddy_sdk::nexmark::Generator` with the
//!   source node's `NexmarkSpec::generator_config()`, whatever the
//!   parallelism (event `n` is in split `n mod max_parallelism`, walked by its owner; the union is the
//!   whole range);
//! - nothing is late: each source subtask's event time is monotone and its
//!   watermark is `max seen - 1`, a window takes the minimum over its inputs
//!   and fires a window (or a session, or a `top_n` group) only once the
//!   watermark reaches `end - 1`, and the end of a bounded input fires
//!   everything. So every window of a bounded run holds exactly its events.
//!
//! Rows are `serde_json` objects in the file sink's shape: integers as JSON
//! integers, the q1 price as a JSON float, timestamps as RFC 3339 strings in
//! UTC with milliseconds (`2015-07-15T00:00:00.000Z`). [`read_output`] reads
//! a file sink's directory and [`compare`] checks the two as multisets.

mod compare;

pub use compare::{compare, read_output};

use chrono::DateTime;
use eddy_sdk::nexmark::{Bid, EventType, Generator, GeneratorConfig};
use eddy_sdk::spec::{
    AggregateFn, JobSpec, NexmarkTable, NodeKind, ProjectSpec, SortOrder, WindowKind, WindowSpec,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

/// The columns of a bid, as q0 projects them.
const BID_COLUMNS: [&str; 5] = ["auction", "bidder", "price", "date_time", "extra"];
/// q1's projection, as `bench/nexmark/q1.yaml` writes it.
const Q1_EXPRS: [&str; 5] = [
    "auction",
    "bidder",
    "0.908 * CAST(price AS DOUBLE) AS price",
    "date_time",
    "extra",
];
/// q1's conversion factor (dollars to euros).
const Q1_RATE: f64 = 0.908;
/// q2's filter, as `bench/nexmark/q2.yaml` writes it, and its modulus.
const Q2_PREDICATE: &str = "auction % 123 = 0";
const Q2_MODULUS: i64 = 123;
/// The event-time column of every windowed query.
const EVENT_TIME: &str = "date_time";
/// Format of a timestamp without a time zone in the file sink.
const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

/// Why the reference cannot be computed or an output cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("job `{0}` is not a query the reference knows (nexmark-q0, -q1, -q2, -q5, -q11, -q12)")]
    UnknownQuery(String),
    #[error("{query}: the spec is not the query the reference computes: {reason}")]
    Shape { query: Query, reason: String },
    #[error("{0}: the nexmark source has no `count`; the reference needs a bounded input")]
    Unbounded(Query),
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a JSON row")]
    Json {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The queries of `bench/nexmark` the reference computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Query {
    Q0,
    Q1,
    Q2,
    Q5,
    Q11,
    Q12,
}

impl Query {
    pub const ALL: [Query; 6] = [
        Query::Q0,
        Query::Q1,
        Query::Q2,
        Query::Q5,
        Query::Q11,
        Query::Q12,
    ];

    /// `q0`, `q1`, …: the file name under `bench/nexmark/`.
    pub fn name(self) -> &'static str {
        match self {
            Query::Q0 => "q0",
            Query::Q1 => "q1",
            Query::Q2 => "q2",
            Query::Q5 => "q5",
            Query::Q11 => "q11",
            Query::Q12 => "q12",
        }
    }

    /// The query a job runs, from its name (`nexmark-q5`).
    pub fn of(spec: &JobSpec) -> Result<Query> {
        let short = spec.name.strip_prefix("nexmark-");
        Query::ALL
            .into_iter()
            .find(|q| short == Some(q.name()))
            .ok_or_else(|| Error::UnknownQuery(spec.name.clone()))
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The rows a bounded run of `spec` writes to its sink, in no particular order.
pub fn expected(spec: &JobSpec) -> Result<Vec<Value>> {
    let query = Query::of(spec)?;
    let shape = |reason: String| Error::Shape { query, reason };
    let chain = chain(spec).map_err(shape)?;
    let NodeKind::Nexmark(source) = chain[0] else {
        return Err(shape(format!(
            "it starts with a `{}` node, not `nexmark`",
            chain[0].name()
        )));
    };
    if source.table != NexmarkTable::Bid {
        return Err(shape(format!(
            "the source reads the `{}` table, not `bid`",
            source.table.name()
        )));
    }
    let count = source.count.ok_or(Error::Unbounded(query))?;
    let events = Events {
        config: source.generator_config(),
        count,
    };
    let rows = match (query, &chain[1..]) {
        (Query::Q0, [NodeKind::Project(p)]) => {
            expect_exprs(p, &BID_COLUMNS).map_err(shape)?;
            q0(&events)
        }
        (Query::Q1, [NodeKind::Project(p)]) => {
            expect_exprs(p, &Q1_EXPRS).map_err(shape)?;
            q1(&events)
        }
        (Query::Q2, [NodeKind::Filter(f), NodeKind::Project(p)]) => {
            if f.predicate != Q2_PREDICATE {
                return Err(shape(format!(
                    "the filter is `{}`, not `{Q2_PREDICATE}`",
                    f.predicate
                )));
            }
            expect_exprs(p, &["auction", "price"]).map_err(shape)?;
            q2(&events)
        }
        (Query::Q5, [NodeKind::Window(w), NodeKind::TopN(t), NodeKind::Project(p)]) => {
            let num = count_alias(w, "auction").map_err(shape)?;
            let WindowKind::Sliding { size, slide } = w.window else {
                return Err(shape("the window is not sliding".into()));
            };
            let top_ok = t.partition_by == ["window_start", "window_end"]
                && t.order_by == num
                && t.order == SortOrder::Desc
                && t.n == 1
                && t.with_ties
                && t.rank_column.is_none()
                && t.event_time.column == "window_end";
            if !top_ok {
                return Err(shape(format!(
                    "the top_n is not the top 1 with ties of `{num}` per window: {t:?}"
                )));
            }
            expect_exprs(p, &["auction", num]).map_err(shape)?;
            hot_items(&events, size.as_millis_i64(), slide.as_millis_i64())
                .into_iter()
                .flat_map(|w| w.winners.into_iter().map(move |a| (a, w.max)))
                .map(|(auction, n)| object([("auction", auction.into()), (num, n.into())]))
                .collect()
        }
        (Query::Q11, [NodeKind::Window(w)]) => {
            let bid_count = count_alias(w, "bidder").map_err(shape)?;
            let WindowKind::Session { gap } = w.window else {
                return Err(shape("the window is not a session window".into()));
            };
            sessions(&events, gap.as_millis_i64())
                .into_iter()
                .map(|s| window_row("bidder", s.bidder, s.start, s.end, bid_count, s.count))
                .collect()
        }
        (Query::Q12, [NodeKind::Window(w)]) => {
            let bid_count = count_alias(w, "bidder").map_err(shape)?;
            let WindowKind::Tumbling { size } = w.window else {
                return Err(shape("the window is not tumbling".into()));
            };
            let size = size.as_millis_i64();
            tumbling_counts(&events, size)
                .into_iter()
                .map(|((bidder, start), n)| {
                    window_row("bidder", bidder, start, start + size, bid_count, n)
                })
                .collect()
        }
        (_, rest) => {
            let kinds: Vec<_> = rest.iter().map(|k| k.name()).collect();
            return Err(shape(format!(
                "unexpected operators after the source: {kinds:?}"
            )));
        }
    };
    Ok(rows)
}

/// The events of a bounded run: numbers `0..count` of one generator.
pub struct Events {
    pub config: GeneratorConfig,
    pub count: u64,
}

impl Events {
    /// Calls `f` with every bid, in event order (so in event-time order).
    pub fn for_each_bid(&self, mut f: impl FnMut(&Bid<'_>)) {
        let mut g = Generator::new(self.config.clone());
        for n in (0..self.count).filter(|n| EventType::of(*n) == EventType::Bid) {
            f(&g.bid(n));
        }
    }
}

/// q0: every bid, its five columns.
fn q0(events: &Events) -> Vec<Value> {
    let mut rows = Vec::new();
    events.for_each_bid(|b| {
        rows.push(json!({
            "auction": b.auction,
            "bidder": b.bidder,
            "price": b.price,
            "date_time": timestamp(b.date_time),
            "extra": b.extra,
        }));
    });
    rows
}

/// q1: q0 with the price in euros, a double (DataFusion plans the literal
/// `0.908` as a Float64 and multiplies in f64, as here).
fn q1(events: &Events) -> Vec<Value> {
    let mut rows = Vec::new();
    events.for_each_bid(|b| {
        rows.push(json!({
            "auction": b.auction,
            "bidder": b.bidder,
            "price": Q1_RATE * b.price as f64,
            "date_time": timestamp(b.date_time),
            "extra": b.extra,
        }));
    });
    rows
}

/// q2: auction and price of the bids on every 123rd auction id.
fn q2(events: &Events) -> Vec<Value> {
    let mut rows = Vec::new();
    events.for_each_bid(|b| {
        if b.auction % Q2_MODULUS == 0 {
            rows.push(json!({"auction": b.auction, "price": b.price}));
        }
    });
    rows
}

/// One sliding window of q5 and its hottest auctions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HotWindow {
    pub start: i64,
    /// The highest bid count of any auction in the window.
    pub max: i64,
    /// Every auction with `max` bids, ascending.
    pub winners: Vec<i64>,
}

/// q5: per sliding window `[start, start + size)` (starts at multiples of
/// `slide`), the bid count of every auction, then the auctions with the
/// highest count. Windows without bids do not exist. Sorted by start.
pub fn hot_items(events: &Events, size: i64, slide: i64) -> Vec<HotWindow> {
    let mut counts: HashMap<i64, HashMap<i64, i64>> = HashMap::new();
    events.for_each_bid(|b| {
        let t = b.date_time;
        let mut start = t - t.rem_euclid(slide);
        while start > t - size {
            *counts
                .entry(start)
                .or_default()
                .entry(b.auction)
                .or_default() += 1;
            start -= slide;
        }
    });
    let mut windows: Vec<HotWindow> = counts
        .into_iter()
        .map(|(start, per_auction)| {
            let max = per_auction.values().copied().max().unwrap_or(0);
            let mut winners: Vec<i64> = per_auction
                .into_iter()
                .filter(|&(_, n)| n == max)
                .map(|(a, _)| a)
                .collect();
            winners.sort_unstable();
            HotWindow {
                start,
                max,
                winners,
            }
        })
        .collect();
    windows.sort_unstable_by_key(|w| w.start);
    windows
}

/// One session of q11.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub bidder: i64,
    /// The first bid's time.
    pub start: i64,
    /// The last bid's time plus the gap (exclusive).
    pub end: i64,
    pub count: i64,
}

/// q11: per bidder, its bids split wherever two consecutive ones are more
/// than `gap` apart. Sorted by bidder, then start.
pub fn sessions(events: &Events, gap: i64) -> Vec<Session> {
    // Bids come in time order, so only a bidder's latest session can grow.
    let mut open: HashMap<i64, Session> = HashMap::new();
    let mut done = Vec::new();
    events.for_each_bid(|b| {
        let t = b.date_time;
        match open.get_mut(&b.bidder) {
            Some(s) if t <= s.end => {
                s.end = t + gap;
                s.count += 1;
            }
            _ => {
                let fresh = Session {
                    bidder: b.bidder,
                    start: t,
                    end: t + gap,
                    count: 1,
                };
                if let Some(closed) = open.insert(b.bidder, fresh) {
                    done.push(closed);
                }
            }
        }
    });
    done.extend(open.into_values());
    done.sort_unstable_by_key(|s| (s.bidder, s.start));
    done
}

/// q12: bids per (bidder, tumbling window start).
pub fn tumbling_counts(events: &Events, size: i64) -> HashMap<(i64, i64), i64> {
    let mut counts = HashMap::new();
    events.for_each_bid(|b| {
        let start = b.date_time - b.date_time.rem_euclid(size);
        *counts.entry((b.bidder, start)).or_default() += 1;
    });
    counts
}

/// A window operator's output row: key, bounds, one count.
fn window_row(key: &str, k: i64, start: i64, end: i64, agg: &str, n: i64) -> Value {
    object([
        (key, k.into()),
        ("window_start", timestamp(start).into()),
        ("window_end", timestamp(end).into()),
        (agg, n.into()),
    ])
}

/// A JSON object with column names known only at run time.
fn object<const N: usize>(columns: [(&str, Value); N]) -> Value {
    Value::Object(
        columns
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// A millisecond timestamp as the file sink writes one without a time zone.
pub fn timestamp(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.format(TIMESTAMP_FORMAT).to_string())
        .unwrap_or_else(|| format!("out-of-range timestamp {ms} ms"))
}

/// The nodes from the source to the node before the sink, checked to be one
/// chain in spec order (each node reads the one before it).
fn chain(spec: &JobSpec) -> Result<Vec<&NodeKind>, String> {
    let nodes = &spec.nodes;
    let Some((sink, body)) = nodes.split_last() else {
        return Err("it has no nodes".into());
    };
    if body.is_empty() || !sink.kind.is_sink() {
        return Err("it does not end with a sink after at least one node".into());
    }
    for pair in nodes.windows(2) {
        if pair[1].input.as_ref() != Some(&pair[0].id) {
            return Err(format!(
                "node `{}` does not read the node before it (`{}`)",
                pair[1].id, pair[0].id
            ));
        }
    }
    Ok(body.iter().map(|n| &n.kind).collect())
}

fn expect_exprs(p: &ProjectSpec, want: &[&str]) -> Result<(), String> {
    if p.exprs != want {
        return Err(format!("the projection is {:?}, not {want:?}", p.exprs));
    }
    Ok(())
}

/// Checks a window counts rows per `key` on `date_time`; returns the count's
/// column name.
fn count_alias<'a>(w: &'a WindowSpec, key: &str) -> Result<&'a str, String> {
    if w.key_by != [key] {
        return Err(format!(
            "the window is keyed by {:?}, not [{key}]",
            w.key_by
        ));
    }
    if w.event_time.column != EVENT_TIME {
        return Err(format!(
            "the window's event time is `{}`, not `{EVENT_TIME}`",
            w.event_time.column
        ));
    }
    match w.aggregates.as_slice() {
        [a] if a.func == AggregateFn::Count && a.column.is_none() => Ok(&a.alias),
        other => Err(format!(
            "the window's aggregates are {other:?}, not one row count"
        )),
    }
}

#[cfg(test)]
mod tests;

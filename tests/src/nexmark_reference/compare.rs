//! Reading a file sink's output and comparing it with the reference as a
//! multiset of rows.
//!
//! Rows are compared exactly, except the columns where the reference has a
//! non-integral float (q1's price): those are compared with a relative
//! tolerance of [`FLOAT_TOLERANCE`]. The engine and the reference compute the
//! same f64, but `serde_json` (without its `float_roundtrip` feature) may
//! parse the sink's shortest decimal one unit in the last place away, and
//! the writer may print an integral double without a fraction. Rows are
//! grouped by their exact columns; within a group, the float columns of both
//! sides are sorted and matched in order.

use super::{Error, Result};
use serde_json::Value;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Largest relative difference two floats of one column may have.
pub const FLOAT_TOLERANCE: f64 = 1e-12;
/// Rows of each kind a mismatch message shows.
const SHOWN: usize = 5;

/// Every row of every `*.jsonl` file in `dir` (a file sink's part files),
/// files in name order, blank lines skipped.
pub fn read_output(dir: &Path) -> Result<Vec<Value>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut rows = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row = serde_json::from_str(line).map_err(|source| Error::Json {
                path: path.clone(),
                line: i + 1,
                source,
            })?;
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Checks that `got` and `want` hold the same rows, each as often, in any
/// order. The error names the query, the counts and the first few missing
/// and unexpected rows.
pub fn compare(query: &str, got: Vec<Value>, want: Vec<Value>) -> Result<(), String> {
    let floats = float_columns(&want);
    let (n_got, n_want) = (got.len(), want.len());
    let mut got = group(got, &floats);
    let want = group(want, &floats);
    let mut diff = Diff::default();
    for (key, mut w) in want {
        let mut g = got.remove(&key).unwrap_or_default();
        g.sort_by(|a, b| cmp_floats(a, b));
        w.sort_by(|a, b| cmp_floats(a, b));
        let (mut i, mut j) = (0, 0);
        while i < g.len() && j < w.len() {
            if close(&g[i], &w[j]) {
                i += 1;
                j += 1;
            } else if cmp_floats(&g[i], &w[j]) == Ordering::Less {
                diff.unexpected(&key, &floats, &g[i]);
                i += 1;
            } else {
                diff.missing(&key, &floats, &w[j]);
                j += 1;
            }
        }
        g[i..]
            .iter()
            .for_each(|r| diff.unexpected(&key, &floats, r));
        w[j..].iter().for_each(|r| diff.missing(&key, &floats, r));
    }
    for (key, g) in got {
        g.iter().for_each(|r| diff.unexpected(&key, &floats, r));
    }
    if diff.missing == 0 && diff.unexpected == 0 {
        return Ok(());
    }
    let mut msg = format!(
        "{query}: {n_want} rows expected, {n_got} written: {} missing, {} unexpected",
        diff.missing, diff.unexpected
    );
    for (label, rows) in [
        ("missing", &diff.shown_missing),
        ("unexpected", &diff.shown_unexpected),
    ] {
        for row in rows {
            msg.push_str(&format!("\n  {label}: {row}"));
        }
    }
    Err(msg)
}

/// The exact part of rows (canonical JSON of the other columns) to the float
/// parts of the rows that have it.
type Groups = BTreeMap<String, Vec<Vec<f64>>>;

/// Columns where some reference row holds a non-integral number.
fn float_columns(want: &[Value]) -> Vec<String> {
    let mut names = BTreeSet::new();
    for row in want {
        if let Value::Object(map) = row {
            for (k, v) in map {
                if v.is_f64() {
                    names.insert(k.clone());
                }
            }
        }
    }
    names.into_iter().collect()
}

fn group(rows: Vec<Value>, floats: &[String]) -> Groups {
    let mut groups = Groups::new();
    for row in rows {
        let (key, values) = split(row, floats);
        groups.entry(key).or_default().push(values);
    }
    groups
}

/// A row's exact columns as JSON with sorted keys, and its float columns in
/// `floats` order (NaN where absent or not a number).
fn split(row: Value, floats: &[String]) -> (String, Vec<f64>) {
    let Value::Object(mut map) = row else {
        return (row.to_string(), Vec::new());
    };
    let values = floats
        .iter()
        .map(|f| map.remove(f).and_then(|v| v.as_f64()).unwrap_or(f64::NAN))
        .collect();
    // Sorted whatever map type serde_json was built with.
    let sorted: BTreeMap<String, Value> = map.into_iter().collect();
    let key = serde_json::to_string(&sorted).expect("a map of JSON values always serializes");
    (key, values)
}

fn cmp_floats(a: &[f64], b: &[f64]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.total_cmp(y))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(&x, &y)| {
        (x.is_nan() && y.is_nan())
            || x == y
            || (x - y).abs() <= FLOAT_TOLERANCE * x.abs().max(y.abs())
    })
}

#[derive(Default)]
struct Diff {
    missing: usize,
    unexpected: usize,
    shown_missing: Vec<String>,
    shown_unexpected: Vec<String>,
}

impl Diff {
    fn missing(&mut self, key: &str, floats: &[String], values: &[f64]) {
        self.missing += 1;
        if self.shown_missing.len() < SHOWN {
            self.shown_missing.push(render(key, floats, values));
        }
    }
    fn unexpected(&mut self, key: &str, floats: &[String], values: &[f64]) {
        self.unexpected += 1;
        if self.shown_unexpected.len() < SHOWN {
            self.shown_unexpected.push(render(key, floats, values));
        }
    }
}

/// A row for a message: its exact columns, then its float columns.
fn render(key: &str, floats: &[String], values: &[f64]) -> String {
    let mut s = key.to_string();
    for (name, v) in floats.iter().zip(values) {
        s.push_str(&format!(" {name}={v:?}"));
    }
    s
}

//! The keyed window job the exactly-once scenarios run (checkpoints,
//! savepoints): `datagen` rows `seq = 0..rows`, event time `START_MS + seq`,
//! key `seq % KEYS`, 1 s tumbling windows with `count` and `sum(seq)`, into
//! a `file` sink. Its right answer is computed here, so a test can check that
//! every window was committed exactly once with the right values.

use std::collections::BTreeMap;
use std::path::Path;

/// Keys: `seq % KEYS`.
pub const KEYS: i64 = 16;
/// Event time advances 1 ms per row; windows are 1 s.
pub const WINDOW_MS: i64 = 1_000;
pub const START_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// What to run: rows, rate, parallelism, and where state and output go.
pub struct Job<'a> {
    pub name: &'a str,
    pub rows: i64,
    pub rows_per_second: u32,
    pub parallelism: u32,
    pub backend: &'a str,
    pub interval: &'a str,
    pub out: &'a Path,
    pub storage: &'a Path,
}

impl Job<'_> {
    /// The YAML spec.
    pub fn spec(&self) -> String {
        format!(
            r#"
name: {name}
parallelism: {parallelism}
checkpoint:
  interval: {interval}
  timeout: 30s
  backend: {backend}
  storage: "{storage}"
  retained: 2
restart:
  initial_backoff: 200ms
  max_backoff: 2s
  max_failures_per_interval: 30
  interval: 10m
nodes:
  - id: gen
    kind: datagen
    count: {rows}
    rows_per_second: {rate}
    fields:
      - {{name: seq, type: int64, gen: sequence, start: 0}}
      - {{name: ts, type: timestamp_ms, gen: timestamp, start: "2026-01-01T00:00:00Z", step: 1ms}}
  - {{id: keyed, kind: project, input: gen, exprs: ["seq", "ts", "seq % {KEYS} AS k"]}}
  - id: win
    kind: window
    input: keyed
    key_by: [k]
    event_time: {{column: ts, max_out_of_orderness: 0ms}}
    window: {{type: tumbling, size: 1s}}
    aggregates:
      - {{fn: count, as: n}}
      - {{fn: sum, column: seq, as: s}}
  - {{id: out, kind: file, input: win, path: "{out}", format: jsonl}}
"#,
            name = self.name,
            parallelism = self.parallelism,
            interval = self.interval,
            backend = self.backend,
            rows = self.rows,
            rate = self.rows_per_second,
            storage = self.storage.display(),
            out = self.out.display(),
        )
    }
}

/// (window start ms, key) -> (count, sum of seq) of an uninterrupted run.
pub fn expected(rows: i64) -> BTreeMap<(i64, i64), (i64, i64)> {
    let mut m = BTreeMap::new();
    for seq in 0..rows {
        let ts = START_MS + seq;
        let start = ts - ts.rem_euclid(WINDOW_MS);
        let e = m.entry((start, seq % KEYS)).or_insert((0, 0));
        e.0 += 1;
        e.1 += seq;
    }
    m
}

fn ts_ms(v: &serde_json::Value) -> anyhow::Result<i64> {
    let s = v
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("timestamp {v} is not a string"))?;
    Ok(chrono::DateTime::parse_from_rfc3339(s)?.timestamp_millis())
}

/// `(window_start, key)` -> every `(count, sum)` committed for it (more than
/// one means a duplicate).
pub type Committed = BTreeMap<(i64, i64), Vec<(i64, i64)>>;

/// Every committed row of the sink in `out` (hidden files are in progress
/// or pending: not visible output).
pub fn committed(out: &Path) -> anyhow::Result<Committed> {
    let mut m = Committed::new();
    for entry in std::fs::read_dir(out)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        for line in std::fs::read_to_string(entry.path())?.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let key = (ts_ms(&v["window_start"])?, v["k"].as_i64().unwrap_or(-1));
            let val = (v["n"].as_i64().unwrap_or(-1), v["s"].as_i64().unwrap_or(-1));
            m.entry(key).or_default().push(val);
        }
    }
    Ok(m)
}

/// Fails unless every window of `rows` rows is in `out` exactly once with
/// the values of an uninterrupted run, and nothing else is.
pub fn check_exactly_once(out: &Path, rows: i64) -> anyhow::Result<()> {
    let want = expected(rows);
    let got = committed(out)?;
    let mut problems = Vec::new();
    for (key, values) in &got {
        match want.get(key) {
            None => problems.push(format!("unexpected window {key:?}: {values:?}")),
            Some(w) if values.len() > 1 => problems.push(format!(
                "window {key:?} committed {} times: {values:?} (want {w:?})",
                values.len()
            )),
            Some(w) if values[0] != *w => {
                problems.push(format!("window {key:?} is {:?}, want {w:?}", values[0]))
            }
            Some(_) => {}
        }
    }
    for key in want.keys() {
        if !got.contains_key(key) {
            problems.push(format!("window {key:?} is missing"));
        }
    }
    anyhow::ensure!(
        problems.is_empty(),
        "{} of {} windows wrong; first: {:?}",
        problems.len(),
        want.len(),
        &problems[..problems.len().min(10)]
    );
    Ok(())
}

/// A job's exceptions (`GET /v1/jobs/{id}/exceptions`).
pub async fn exceptions(rest_url: &str, job: &str) -> anyhow::Result<serde_json::Value> {
    Ok(reqwest::get(format!("{rest_url}/v1/jobs/{job}/exceptions"))
        .await?
        .error_for_status()?
        .json()
        .await?)
}

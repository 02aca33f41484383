//! The Nexmark queries `eddy bench` runs: the job specs of `bench/nexmark/`,
//! compiled in, and how one run adapts a spec (parallelism, event count,
//! pacing, sink).

use crate::spec::{
    FileFormat, FileSinkSpec, HumanDuration, JobSpec, NodeKind, WatermarkAlignmentSpec,
    parse_yaml_or_json,
};
use anyhow::{Context, bail};
use std::path::Path;

pub struct Query {
    pub name: &'static str,
    spec: &'static str,
}

/// Every query the engine runs, in the suite's order.
pub const QUERIES: [Query; 6] = [
    Query {
        name: "q0",
        spec: include_str!("../../../../bench/nexmark/q0.yaml"),
    },
    Query {
        name: "q1",
        spec: include_str!("../../../../bench/nexmark/q1.yaml"),
    },
    Query {
        name: "q2",
        spec: include_str!("../../../../bench/nexmark/q2.yaml"),
    },
    Query {
        name: "q5",
        spec: include_str!("../../../../bench/nexmark/q5.yaml"),
    },
    Query {
        name: "q11",
        spec: include_str!("../../../../bench/nexmark/q11.yaml"),
    },
    Query {
        name: "q12",
        spec: include_str!("../../../../bench/nexmark/q12.yaml"),
    },
];

/// The queries named in `names` (all when empty), in suite order.
pub fn select(names: &[String]) -> anyhow::Result<Vec<&'static Query>> {
    for n in names {
        if !QUERIES.iter().any(|q| q.name == n) {
            let known: Vec<&str> = QUERIES.iter().map(|q| q.name).collect();
            bail!("unknown query `{n}`; the suite has {}", known.join(", "));
        }
    }
    Ok(QUERIES
        .iter()
        .filter(|q| names.is_empty() || names.iter().any(|n| n == q.name))
        .collect())
}

/// How one run changes a query's spec.
pub struct Run<'a> {
    pub parallelism: u32,
    /// Events generated, all three types counted.
    pub events: u64,
    /// Wall-clock pacing (events per second over all subtasks), or flat out.
    pub rate: Option<f64>,
    /// Event-time rate of the generator (events per second of event time),
    /// or Nexmark's default of 10 000.
    pub event_time_rate: Option<f64>,
    /// Write the results as JSON lines here instead of discarding them.
    pub output: Option<&'a Path>,
    /// Take checkpoints with these settings.
    pub checkpoint: Option<&'a crate::spec::CheckpointSpec>,
    /// Watermark alignment for every window.
    pub max_drift: Option<HumanDuration>,
}

impl Query {
    pub fn spec(&self, run: &Run<'_>) -> anyhow::Result<JobSpec> {
        let mut spec = parse_yaml_or_json(self.spec)
            .with_context(|| format!("the compiled-in spec of {}", self.name))?;
        spec.parallelism = run.parallelism;
        spec.checkpoint = run.checkpoint.cloned();
        let mut sources = 0;
        for node in &mut spec.nodes {
            if let (NodeKind::Window(w), Some(max_drift)) = (&mut node.kind, run.max_drift) {
                w.watermark_alignment = Some(WatermarkAlignmentSpec { max_drift });
            }
            if let NodeKind::Nexmark(source) = &mut node.kind {
                source.count = Some(run.events);
                source.rows_per_second = run.rate;
                if run.event_time_rate.is_some() {
                    source.events_per_second = run.event_time_rate;
                }
                sources += 1;
            }
        }
        if sources != 1 {
            bail!("{} must read exactly one nexmark source", self.name);
        }
        if let Some(dir) = run.output {
            let sink = spec
                .nodes
                .last_mut()
                .with_context(|| format!("{} has no nodes", self.name))?;
            sink.kind = NodeKind::File(FileSinkSpec {
                path: super::super::cluster::path_str(dir)?.to_string(),
                format: FileFormat::Jsonl,
            });
        }
        Ok(spec)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_query_spec_adapts_to_a_run() {
        let out = Path::new("/tmp/out");
        for q in &QUERIES {
            let spec = q
                .spec(&Run {
                    parallelism: 2,
                    events: 1000,
                    rate: Some(5.0),
                    event_time_rate: None,
                    output: Some(out),
                    checkpoint: None,
                    max_drift: Some(HumanDuration::from_millis(5_000)),
                })
                .unwrap();
            assert_eq!(spec.parallelism, 2);
            let NodeKind::Nexmark(source) = &spec.nodes[0].kind else {
                panic!("{} starts with its source", q.name)
            };
            assert_eq!(
                (source.count, source.rows_per_second),
                (Some(1000), Some(5.0))
            );
            assert!(matches!(spec.nodes.last().unwrap().kind, NodeKind::File(_)));
            for node in &spec.nodes {
                if let NodeKind::Window(w) = &node.kind {
                    assert_eq!(
                        w.watermark_alignment
                            .as_ref()
                            .map(|a| a.max_drift.as_millis_i64()),
                        Some(5_000),
                        "{}",
                        q.name
                    );
                }
            }
        }
    }

    #[test]
    fn select_unknown_query_is_an_error() {
        assert_eq!(select(&[]).unwrap().len(), 6);
        assert_eq!(select(&["q5".into()]).unwrap()[0].name, "q5");
        let err = select(&["q3".into()]).err().unwrap().to_string();
        assert!(err.contains("unknown query `q3`"), "{err}");
    }
}

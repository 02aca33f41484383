//! The job graph: nodes chained into vertices, and the edges between them.
//!
//! Both the JobManager (scheduling, REST) and the TaskManager (building tasks)
//! derive the graph from the spec with this one function, so they always agree
//! on vertex ids.
//!
//! Chaining rule: a node joins its input's vertex when the input has exactly
//! one consumer, both run at the same parallelism, and the node does not
//! repartition (a `window` and an `aggregate` hash their keys and a `top_n`
//! its partition columns, so each starts a new vertex).
//!
//! Watermark assigners go only at the end of the vertex feeding a `window`
//! (unless that vertex starts with a Kafka source with `event_time`, whose
//! per-partition watermarks pass through).
//! A `top_n` consumes the watermarks its input forwards (a window forwards its
//! input's after firing), so it must have a window upstream and gets no
//! assigner of its own.

use crate::error::{ApiError, ErrorCode};
use crate::ids::{NodeId, VertexId};
use crate::spec::{JobSpec, KafkaSpec, NodeKind};
use serde::{Deserialize, Serialize};

/// A chain of nodes run as one task per subtask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vertex {
    pub id: VertexId,
    /// Node ids in chain order; the first reads the vertex's input.
    pub nodes: Vec<NodeId>,
    pub parallelism: u32,
    /// When set, the task ends its chain with a watermark assigner on this
    /// event-time column (because a downstream window needs it).
    pub watermark: Option<WatermarkAssigner>,
}

impl Vertex {
    /// A readable name: the chained node ids joined by ` -> `.
    pub fn name(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(" -> ")
    }
}

/// Bounded out-of-orderness watermarks: `max(event time seen) - bound - 1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatermarkAssigner {
    pub column: String,
    pub max_out_of_orderness_ms: i64,
}

/// How records move along an edge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Partitioning {
    /// Subtask i sends to subtask i (equal parallelism).
    Forward,
    /// Rows are hashed on the key columns into key groups; each consumer owns a
    /// contiguous key-group range.
    Hash { key_columns: Vec<String> },
    /// Round-robin over the consumers.
    Rebalance,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub from: VertexId,
    pub to: VertexId,
    pub partitioning: Partitioning,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobGraph {
    pub vertices: Vec<Vertex>,
    pub edges: Vec<Edge>,
    pub max_parallelism: u32,
}

impl JobGraph {
    pub fn vertex(&self, id: VertexId) -> &Vertex {
        &self.vertices[id.0 as usize]
    }
    /// The edge into `v`, if any (every vertex has at most one input).
    pub fn input_of(&self, v: VertexId) -> Option<&Edge> {
        self.edges.iter().find(|e| e.to == v)
    }
    /// The edges out of `v`.
    pub fn outputs_of(&self, v: VertexId) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.from == v)
    }
    /// The vertex a node runs in.
    pub fn vertex_of(&self, node: &NodeId) -> Option<VertexId> {
        self.vertices
            .iter()
            .find(|v| v.nodes.contains(node))
            .map(|v| v.id)
    }
    /// Slots the job needs: one per subtask of its widest vertex (slot sharing).
    pub fn slots_needed(&self) -> u32 {
        self.vertices
            .iter()
            .map(|v| v.parallelism)
            .max()
            .unwrap_or(0)
    }
}

/// Builds the graph of a structurally valid spec (see `spec::validate_structure`).
pub fn build(spec: &JobSpec) -> Result<JobGraph, ApiError> {
    let mut vertices: Vec<Vertex> = Vec::new();
    let mut edges = Vec::new();
    // Walk nodes so that every node comes after its input (sources first).
    let order = topological_order(spec)?;
    for node in order {
        let parallelism = spec.node_parallelism(node);
        let repartitions = hash_key(&node.kind).is_some();
        let input = node.input.as_ref().and_then(|i| spec.node(i));
        let chain_into = input.and_then(|input| {
            let single_consumer = spec.consumers(&input.id).count() == 1;
            let same_p = spec.node_parallelism(input) == parallelism;
            (single_consumer && same_p && !repartitions)
                .then(|| {
                    vertices
                        .iter()
                        .position(|v| v.nodes.last() == Some(&input.id))
                })
                .flatten()
        });
        match chain_into {
            Some(v) => vertices[v].nodes.push(node.id.clone()),
            None => {
                let id = VertexId(vertices.len() as u32);
                if let Some(input) = input {
                    let from = vertices
                        .iter()
                        .find(|v| v.nodes.contains(&input.id))
                        .map(|v| v.id)
                        .expect("topological order puts every input's vertex first");
                    let partitioning = match hash_key(&node.kind) {
                        Some(key) => Partitioning::Hash {
                            key_columns: key.to_vec(),
                        },
                        None if spec.node_parallelism(input) == parallelism => {
                            Partitioning::Forward
                        }
                        None => Partitioning::Rebalance,
                    };
                    edges.push(Edge {
                        from,
                        to: id,
                        partitioning,
                    });
                }
                vertices.push(Vertex {
                    id,
                    nodes: vec![node.id.clone()],
                    parallelism,
                    watermark: None,
                });
            }
        }
    }
    // A window's event time is assigned at the end of the vertex feeding it.
    for node in &spec.nodes {
        let NodeKind::Window(w) = &node.kind else {
            continue;
        };
        let Some(input) = &node.input else { continue };
        let assigner = WatermarkAssigner {
            column: w.event_time.column.clone(),
            max_out_of_orderness_ms: w.event_time.max_out_of_orderness.as_millis_i64(),
        };
        let v = vertices
            .iter_mut()
            .find(|v| v.nodes.last() == Some(input))
            .expect("a window always starts a vertex, so its input ends one");
        // A Kafka source with `event_time` makes per-partition watermarks
        // (with idleness); they pass through the chain instead.
        let source_event_time = v
            .nodes
            .first()
            .and_then(|first| spec.node(first))
            .is_some_and(|n| {
                matches!(&n.kind, NodeKind::Kafka(KafkaSpec::Source(k)) if k.event_time.is_some())
            });
        if source_event_time {
            continue;
        }
        match &v.watermark {
            Some(existing) if existing != &assigner => {
                return Err(ApiError::new(
                    ErrorCode::InvalidSpec,
                    format!(
                        "windows reading `{input}` disagree on event time ({} vs {})",
                        existing.column, assigner.column
                    ),
                )
                .with_node(node.id.as_str())
                .with_field("event_time"));
            }
            _ => v.watermark = Some(assigner),
        }
    }
    for node in &spec.nodes {
        if matches!(node.kind, NodeKind::TopN(_)) && !has_window_upstream(spec, node) {
            return Err(ApiError::new(
                ErrorCode::InvalidSpec,
                "a top_n node is driven by event time: it must read (directly or through other nodes) from a window, whose watermarks complete its groups",
            )
            .with_node(node.id.as_str())
            .with_field("input"));
        }
    }
    Ok(JobGraph {
        vertices,
        edges,
        max_parallelism: spec.max_parallelism,
    })
}

/// The columns a keyed node's input is hashed on (`None`: not keyed).
fn hash_key(kind: &NodeKind) -> Option<&[String]> {
    match kind {
        NodeKind::Window(w) => Some(&w.key_by),
        NodeKind::Aggregate(a) => Some(&a.key_by),
        NodeKind::TopN(t) => Some(&t.partition_by),
        _ => None,
    }
}

/// Whether a window is among `node`'s ancestors (the spec is acyclic here).
fn has_window_upstream(spec: &JobSpec, node: &crate::spec::NodeSpec) -> bool {
    let mut current = node.input.as_ref().and_then(|i| spec.node(i));
    while let Some(n) = current {
        if matches!(n.kind, NodeKind::Window(_)) {
            return true;
        }
        current = n.input.as_ref().and_then(|i| spec.node(i));
    }
    false
}

fn topological_order(spec: &JobSpec) -> Result<Vec<&crate::spec::NodeSpec>, ApiError> {
    let mut out: Vec<&crate::spec::NodeSpec> = Vec::with_capacity(spec.nodes.len());
    let mut placed = std::collections::HashSet::new();
    while out.len() < spec.nodes.len() {
        let before = out.len();
        for node in &spec.nodes {
            if placed.contains(&node.id) {
                continue;
            }
            if node.input.as_ref().is_none_or(|i| placed.contains(i)) {
                placed.insert(node.id.clone());
                out.push(node);
            }
        }
        if out.len() == before {
            let stuck = spec
                .nodes
                .iter()
                .find(|n| !placed.contains(&n.id))
                .map(|n| n.id.to_string())
                .unwrap_or_default();
            return Err(ApiError::new(
                ErrorCode::InvalidSpec,
                format!("node `{stuck}` is part of a cycle"),
            )
            .with_node(stuck)
            .with_field("input"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_yaml_or_json;

    #[test]
    fn build_clicks_chains_source_and_window_sink() {
        let spec = parse_yaml_or_json(
            r#"
name: clicks
parallelism: 2
nodes:
  - {id: gen, kind: datagen, count: 10, fields: [{name: id, type: int64, gen: sequence},
      {name: ts, type: timestamp_ms, gen: timestamp, start: "2026-01-01T00:00:00Z", step: 1ms}]}
  - {id: enrich, kind: project, input: gen, exprs: ["id", "ts", "id % 10 AS k"]}
  - {id: w, kind: window, input: enrich, key_by: [k], event_time: {column: ts, max_out_of_orderness: 200ms},
     window: {type: tumbling, size: 1s}, aggregates: [{fn: count, as: n}]}
  - {id: out, kind: blackhole, input: w}
"#,
        )
        .unwrap();
        let g = build(&spec).unwrap();
        assert_eq!(g.vertices.len(), 2);
        assert_eq!(g.vertices[0].name(), "gen -> enrich");
        assert_eq!(g.vertices[1].name(), "w -> out");
        assert_eq!(
            g.vertices[0]
                .watermark
                .as_ref()
                .unwrap()
                .max_out_of_orderness_ms,
            200
        );
        assert_eq!(
            g.edges,
            vec![Edge {
                from: VertexId(0),
                to: VertexId(1),
                partitioning: Partitioning::Hash {
                    key_columns: vec!["k".into()]
                }
            }]
        );
        assert_eq!(g.slots_needed(), 2);
    }

    const TOP_BIDS: &str = r#"
name: q5
parallelism: 2
nodes:
  - {id: gen, kind: datagen, count: 10, fields: [{name: auction, type: int64, gen: sequence},
      {name: ts, type: timestamp_ms, gen: timestamp, start: "2026-01-01T00:00:00Z", step: 1ms}]}
  - {id: counts, kind: window, input: gen, key_by: [auction], event_time: {column: ts},
     window: {type: sliding, size: 10s, slide: 2s}, aggregates: [{fn: count, as: n}]}
  - {id: hot, kind: top_n, input: counts, partition_by: [window_start, window_end],
     order_by: n, n: 1, event_time: {column: window_end}}
  - {id: out, kind: blackhole, input: hot}
"#;

    #[test]
    fn build_top_n_hashes_on_partition_by_without_its_own_assigner() {
        let g = build(&parse_yaml_or_json(TOP_BIDS).unwrap()).unwrap();
        let names: Vec<_> = g.vertices.iter().map(Vertex::name).collect();
        assert_eq!(names, ["gen", "counts", "hot -> out"]);
        assert_eq!(
            g.edges[1].partitioning,
            Partitioning::Hash {
                key_columns: vec!["window_start".into(), "window_end".into()]
            }
        );
        let assigners: Vec<_> = g.vertices.iter().map(|v| v.watermark.is_some()).collect();
        assert_eq!(
            assigners,
            [true, false, false],
            "only the window's input gets an assigner; the window forwards its watermarks to top_n"
        );
    }

    #[test]
    fn build_top_n_without_window_upstream_is_rejected() {
        let yaml = TOP_BIDS
            .replace("input: counts, partition_by", "input: gen, partition_by")
            .replace("[window_start, window_end]", "[ts]")
            .replace("order_by: n", "order_by: auction")
            .replace("column: window_end", "column: ts");
        let err = build(&parse_yaml_or_json(&yaml).unwrap()).unwrap_err();
        assert_eq!(err.node.as_deref(), Some("hot"));
        assert_eq!(err.field.as_deref(), Some("input"));
        assert!(err.message.contains("window"), "{}", err.message);
    }

    #[test]
    fn build_aggregate_hashes_on_key_by_like_a_window() {
        let spec = parse_yaml_or_json(
            r#"
name: totals
parallelism: 2
nodes:
  - {id: gen, kind: datagen, fields: [{name: id, type: int64, gen: sequence}]}
  - {id: enrich, kind: project, input: gen, exprs: ["id", "id % 10 AS k"]}
  - {id: agg, kind: aggregate, input: enrich, key_by: [k], aggregates: [{fn: sum, column: id, as: total}]}
  - {id: out, kind: blackhole, input: agg}
"#,
        )
        .unwrap();
        let g = build(&spec).unwrap();
        let names: Vec<_> = g.vertices.iter().map(Vertex::name).collect();
        assert_eq!(names, ["gen -> enrich", "agg -> out"]);
        assert_eq!(
            g.edges[0].partitioning,
            Partitioning::Hash {
                key_columns: vec!["k".into()]
            }
        );
        assert!(
            g.vertices.iter().all(|v| v.watermark.is_none()),
            "an aggregate needs no event time"
        );
        assert!(spec.node(&"agg".into()).unwrap().kind.is_stateful());
    }

    #[test]
    fn build_fan_out_ends_the_chain() {
        let spec = parse_yaml_or_json(
            "name: x\nparallelism: 2\nnodes:\n  - {id: g, kind: datagen, fields: [{name: id, type: int64, gen: sequence}]}\n  - {id: a, kind: print, input: g}\n  - {id: b, kind: blackhole, input: g, parallelism: 1}\n",
        )
        .unwrap();
        let g = build(&spec).unwrap();
        assert_eq!(g.vertices.len(), 3);
        assert_eq!(g.edges[0].partitioning, Partitioning::Forward);
        assert_eq!(g.edges[1].partitioning, Partitioning::Rebalance);
    }
}

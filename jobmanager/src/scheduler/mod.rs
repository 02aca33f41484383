//! Scheduling: checking a submitted spec against the cluster, and turning the
//! live TaskManagers plus the slots held by jobs into the free capacity the
//! pure [`solve`] places jobs on.

pub mod solve;

use crate::cluster_state::ClusterState;
use crate::taskmanagers::Registry;
use eddy_sdk::ApiError;
use eddy_sdk::graph::{self, JobGraph};
use eddy_sdk::ids::VertexId;
use eddy_sdk::spec::JobSpec;
pub use solve::{Capacity, Shortage, solve};

/// Validates a spec for submission: structure, graph, schemas and SQL, and
/// that the job fits in `total_slots` (when known).
pub fn validate(spec: &JobSpec, total_slots: Option<u32>) -> Result<JobGraph, ApiError> {
    eddy_sdk::plan::validate(spec, total_slots).map(|(graph, _schemas)| graph)
}

/// The vertices of a stored spec with their parallelism.
pub fn vertices(spec_json: &str) -> Result<Vec<(VertexId, u32)>, ApiError> {
    let spec = eddy_sdk::spec::parse_json(spec_json)?;
    let graph = graph::build(&spec)?;
    Ok(graph
        .vertices
        .iter()
        .map(|v| (v.id, v.parallelism))
        .collect())
}

/// The free capacity of every live TaskManager.
pub fn capacity(state: &ClusterState, registry: &Registry) -> Vec<Capacity> {
    let in_use = state.slots_in_use();
    registry
        .alive()
        .map(|tm| Capacity {
            tm_id: tm.id.clone(),
            slots: tm.slots,
            used: in_use.get(&tm.id).cloned().unwrap_or_default(),
        })
        .collect()
}

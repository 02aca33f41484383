//! A job's checkpoint and restart settings, resolved from its spec and the
//! JobManager's defaults, and the topology its coordinator expects.

use super::{Topology, VertexInfo};
use crate::config::Config;
use eddy_proto::v1 as pb;
use eddy_sdk::spec::{CheckpointSettings, JobSpec, RestartSettings, RestartSpec, StateBackendKind};
use eddy_sdk::storage::manifest::BackendKind;
use eddy_sdk::{ApiError, graph};
use std::collections::{BTreeMap, BTreeSet};

/// The job's checkpoint settings (`None`: the job takes no checkpoints).
pub fn checkpoint_settings(
    config: &Config,
    spec: &JobSpec,
) -> Result<Option<CheckpointSettings>, ApiError> {
    spec.checkpoint
        .as_ref()
        .map(|c| c.resolve(&config.checkpoint))
        .transpose()
}

/// The job's restart strategy (`None`: a failure fails the job). Jobs with
/// checkpoints restart with the cluster's default strategy unless they set
/// their own, as in Flink.
pub fn restart_settings(
    config: &Config,
    spec: &JobSpec,
) -> Result<Option<RestartSettings>, ApiError> {
    if spec.checkpoint.is_none() && spec.restart.is_none() {
        return Ok(None);
    }
    RestartSpec::resolve(spec.restart.as_ref(), &config.restart).map(Some)
}

pub(super) fn backend_kind(b: StateBackendKind) -> BackendKind {
    match b {
        StateBackendKind::Memory => BackendKind::Memory,
        StateBackendKind::Rocksdb => BackendKind::Rocksdb,
    }
}

/// The `CheckpointConfig` of a deploy request.
pub fn deploy_config(settings: &CheckpointSettings) -> pb::CheckpointConfig {
    pb::CheckpointConfig {
        storage: settings.storage.clone(),
        backend: settings.backend.as_str().to_string(),
    }
}

/// The subtasks and stateful operators a checkpoint of `spec` covers.
pub fn topology(spec: &JobSpec) -> Result<Topology, ApiError> {
    let graph = graph::build(spec)?;
    let mut vertices = BTreeMap::new();
    for v in &graph.vertices {
        let stateful_nodes: BTreeSet<_> = v
            .nodes
            .iter()
            .filter(|n| spec.node(n).is_some_and(|node| node.kind.is_stateful()))
            .cloned()
            .collect();
        vertices.insert(
            v.id,
            VertexInfo {
                parallelism: v.parallelism,
                stateful_nodes,
            },
        );
    }
    Ok(Topology { vertices })
}

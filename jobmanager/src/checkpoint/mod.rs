//! Checkpoint coordination on the leader. `coordinator` is the pure state
//! machine of one job (no tokio, tonic, axum or object_store here: the
//! driver carries out its actions); `stats` is what it remembers for the REST
//! view. The durable record is the Raft catalog in `cluster_state`.

pub mod coordinator;
mod files;
pub mod hub;
pub mod service;
mod settings;
pub mod stats;

pub use coordinator::{
    AckTimings, Action, Coordinator, ID_BLOCK, OperatorSnapshot, SubtaskKey, Topology, VertexInfo,
};
pub use stats::{Entry, HISTORY_LEN, Restored, Span, Stats, Status};

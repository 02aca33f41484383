//! The task runtime: what one subtask does between its input and its outputs.
//!
//! A subtask is a [`Chain`](crate::operators::Chain) of operators driven by a
//! loop ([`Subtask::run`]): a source vertex polls its source, any other vertex
//! reads its [`InputGate`]; every element goes through the operators in
//! order, and what comes out goes to the [`Outputs`], where backpressure waits
//! happen. The runtime owns no I/O of its own besides the exchange channels
//! handed to it; deploy wiring and status reporting live in `tasks`.

pub mod checkpoint;
mod gate;
pub mod metrics;
mod output;
mod phase;
mod snapshotter;
mod task;

pub use gate::{GateState, InputGate};
pub use output::{EdgeOutput, Outputs, Partitioner};
pub use task::{Checkpoints, StatePosition, Subtask};

use crate::exchange::ChannelFailure;
use eddy_sdk::error::FailureClass;
use eddy_sdk::operator::OperatorError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the operator chain")]
    Build(#[source] OperatorError),
    #[error("operator failed")]
    Operator(#[from] OperatorError),
    #[error("exchange failed")]
    Exchange(#[from] crate::exchange::Error),
    #[error("input channel failed")]
    Input(#[from] ChannelFailure),
    #[error("input channel {0} closed before its end of stream")]
    InputClosed(String),
    #[error("cannot partition a batch by key")]
    Partition(#[source] arrow::error::ArrowError),
    #[error("key column `{0}` is not in the output schema")]
    KeyColumn(String),
    #[error("partitioner chose channel {target}, which does not exist")]
    Route { target: usize },
    #[error("subtask has neither a source nor an input")]
    NoInput,
    #[error("the taskmanager stopped delivering checkpoint commands")]
    Detached,
    #[error("the subtask's snapshotter stopped: its state backends are gone")]
    SnapshotterStopped,
    /// Boxed: checkpoint errors carry paths and ids, and every runtime
    /// result would otherwise be as large.
    #[error(transparent)]
    State(Box<checkpoint::Error>),
    #[error("the deployment places no subtask {vertex}[{index}]")]
    NoPlacement {
        vertex: eddy_sdk::ids::VertexId,
        index: u32,
    },
    #[error("the job graph has no subtask {vertex}[{index}]")]
    NoSuchSubtask {
        vertex: eddy_sdk::ids::VertexId,
        index: u32,
    },
}

impl From<checkpoint::Error> for Error {
    fn from(e: checkpoint::Error) -> Self {
        Error::State(Box::new(e))
    }
}

impl Error {
    /// How the JobManager should triage this failure.
    pub fn class(&self) -> FailureClass {
        match self {
            Error::Build(e) | Error::Operator(e) => e.class,
            Error::Partition(_) => FailureClass::BadData,
            Error::KeyColumn(_) | Error::NoInput => FailureClass::UserCode,
            Error::Exchange(_)
            | Error::Input(_)
            | Error::InputClosed(_)
            | Error::Route { .. }
            | Error::Detached
            | Error::SnapshotterStopped
            | Error::State(_)
            | Error::NoPlacement { .. }
            | Error::NoSuchSubtask { .. } => FailureClass::Infrastructure,
        }
    }
}

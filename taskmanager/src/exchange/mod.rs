//! The data plane between subtasks: bounded, credit-based channels.
//!
//! A channel carries the elements of one producer subtask to one consumer
//! subtask of one edge. The consumer side is always a bounded local queue of
//! [`ChannelItem`]s registered in the [`Registry`] before any task of the
//! deployment starts. A producer on the same TaskManager claims that queue and
//! writes to it directly ([`OutputChannel::Local`], no copy); a producer on
//! another TaskManager opens `ExchangeService.Open` there
//! ([`OutputChannel::Remote`]) and the [`server`] writes the decoded frames
//! into the same queue. Either way, a slow consumer blocks its producer once
//! about `2 x channel-credits` frames are in flight; memory never grows.
//!
//! This module owns channel plumbing only: partitioning and watermark merging
//! live in `runtime`.

mod ipc;
mod output;
mod registry;
mod remote;
pub mod server;

#[cfg(test)]
mod tests;

pub use ipc::{IpcDecoder, IpcEncoder};
pub use output::OutputChannel;
pub use registry::{InputEndpoint, Registry};
pub use remote::{ConnectPolicy, RemoteSender};

use eddy_proto::v1 as pb;
use eddy_sdk::ids::{Attempt, JobId, VertexId};
use eddy_sdk::operator::Element;
use std::fmt;
use std::time::Duration;

/// What a consumer's input queue carries: an element, or the reason its
/// channel broke (so the consumer fails with that reason instead of hanging).
pub type ChannelItem = Result<Element, ChannelFailure>;

/// A channel broke on the receiving side (garbage frame, producer vanished).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChannelFailure(pub String);

/// Identifies one channel: one producer subtask to one consumer subtask of
/// one edge of one deployment attempt.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    pub job_id: JobId,
    pub attempt: Attempt,
    pub from_vertex: VertexId,
    pub from_index: u32,
    pub to_vertex: VertexId,
    pub to_index: u32,
}

impl ChannelKey {
    pub fn from_header(h: &pb::ChannelHeader) -> Self {
        ChannelKey {
            job_id: JobId(h.job_id.clone()),
            attempt: Attempt(h.attempt),
            from_vertex: VertexId(h.from_vertex),
            from_index: h.from_index,
            to_vertex: VertexId(h.to_vertex),
            to_index: h.to_index,
        }
    }

    pub fn to_header(&self) -> pb::ChannelHeader {
        pb::ChannelHeader {
            job_id: self.job_id.0.clone(),
            attempt: self.attempt.0,
            from_vertex: self.from_vertex.0,
            to_vertex: self.to_vertex.0,
            from_index: self.from_index,
            to_index: self.to_index,
        }
    }
}

impl fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}#{} {}[{}] -> {}[{}]",
            self.job_id,
            self.attempt.0,
            self.from_vertex,
            self.from_index,
            self.to_vertex,
            self.to_index
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("consumer of channel {key} was not registered within {waited:?}")]
    NotRegistered { key: ChannelKey, waited: Duration },
    #[error("channel {key} already has a producer")]
    AlreadyClaimed { key: ChannelKey },
    #[error("the consumer of channel {key} has gone away")]
    ConsumerGone { key: ChannelKey },
    #[error("cannot connect channel {key} to {addr} within {waited:?}")]
    Connect {
        key: ChannelKey,
        addr: String,
        waited: Duration,
        #[source]
        source: tonic::Status,
    },
    #[error("invalid address for channel {key}")]
    Addr {
        key: ChannelKey,
        #[source]
        source: eddy_sdk::server::rpc::AddrError,
    },
    #[error("channel {key} to {addr} failed")]
    Remote {
        key: ChannelKey,
        addr: String,
        #[source]
        source: tonic::Status,
    },
    #[error("cannot encode a batch for channel {key}")]
    Encode {
        key: ChannelKey,
        #[source]
        source: arrow::error::ArrowError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

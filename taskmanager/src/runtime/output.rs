//! The outputs of a subtask: one [`EdgeOutput`] per outgoing edge, each a
//! partitioner over that edge's channels. Batches are routed; watermarks and
//! the end of stream are broadcast to every channel of every edge.

use super::Error;
use crate::exchange::OutputChannel;
use crate::runtime::metrics::SubtaskMetrics;
use arrow::datatypes::Schema;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use eddy_sdk::graph::Partitioning;
use eddy_sdk::operator::Element;

/// Decides which channels of an edge a batch goes to.
#[derive(Clone, Debug, PartialEq)]
pub enum Partitioner {
    /// The edge has one channel: to the consumer with this subtask's index.
    Forward,
    /// Rows go to the owner of their key group; channel `i` is consumer `i`.
    Hash {
        key_indices: Vec<usize>,
        max_parallelism: u32,
    },
    /// Whole batches round-robin over the channels.
    Rebalance { next: usize },
}

impl Partitioner {
    /// The partitioner of an edge, key columns resolved once against the
    /// producer's output schema. `subtask` staggers round-robin starts so
    /// producers do not all hit consumer 0 first.
    pub fn new(
        p: &Partitioning,
        output: &Schema,
        max_parallelism: u32,
        subtask: u32,
    ) -> Result<Self, Error> {
        Ok(match p {
            Partitioning::Forward => Partitioner::Forward,
            Partitioning::Rebalance => Partitioner::Rebalance {
                next: subtask as usize,
            },
            Partitioning::Hash { key_columns } => {
                let key_indices = key_columns
                    .iter()
                    .map(|c| output.index_of(c).map_err(|_| Error::KeyColumn(c.clone())))
                    .collect::<Result<Vec<_>, _>>()?;
                Partitioner::Hash {
                    key_indices,
                    max_parallelism,
                }
            }
        })
    }

    /// `(channel index, piece)` pairs for `batch` over `channels` channels.
    pub fn route(
        &mut self,
        batch: RecordBatch,
        channels: usize,
    ) -> Result<Vec<(usize, RecordBatch)>, ArrowError> {
        if channels == 0 {
            return Ok(Vec::new());
        }
        Ok(match self {
            Partitioner::Forward => vec![(0, batch)],
            Partitioner::Rebalance { next } => {
                let target = *next % channels;
                *next = (target + 1) % channels;
                vec![(target, batch)]
            }
            Partitioner::Hash {
                key_indices,
                max_parallelism,
            } => {
                let parallelism = u32::try_from(channels).unwrap_or(u32::MAX);
                eddy_sdk::plan::hash::partition_by_key(
                    &batch,
                    key_indices,
                    *max_parallelism,
                    parallelism,
                )?
                .into_iter()
                .map(|(target, piece)| (target as usize, piece))
                .collect()
            }
        })
    }
}

pub struct EdgeOutput {
    pub partitioner: Partitioner,
    pub channels: Vec<OutputChannel>,
}

/// All outputs of a subtask (none for a sink vertex: elements are dropped).
#[derive(Default)]
pub struct Outputs {
    edges: Vec<EdgeOutput>,
}

impl Outputs {
    pub fn new(edges: Vec<EdgeOutput>) -> Self {
        Outputs { edges }
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// Sends one element downstream, waiting for room (backpressure).
    pub async fn emit(&mut self, element: Element, metrics: &SubtaskMetrics) -> Result<(), Error> {
        match element {
            Element::Batch(batch) => {
                for edge in &mut self.edges {
                    // Clones of a batch share its buffers: no copy per edge.
                    let routed = edge
                        .partitioner
                        .route(batch.clone(), edge.channels.len())
                        .map_err(Error::Partition)?;
                    for (target, piece) in routed {
                        let channel = edge
                            .channels
                            .get_mut(target)
                            .ok_or(Error::Route { target })?;
                        channel.send(Element::Batch(piece), metrics).await?;
                    }
                }
            }
            control => {
                for edge in &mut self.edges {
                    for channel in &mut edge.channels {
                        channel.send(control.clone(), metrics).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// After the end of stream: waits until every channel confirmed delivery.
    pub async fn close(self) -> Result<(), Error> {
        for edge in self.edges {
            for channel in edge.channels {
                channel.close().await?;
            }
        }
        Ok(())
    }
}

//! The outputs of a subtask: one [`EdgeOutput`] per outgoing edge, each a
//! partitioner over that edge's channels. Batches are routed; watermarks and
//! the end of stream are broadcast to every channel of every edge; a latency
//! marker goes to one channel of each edge, round-robin (broadcasting would
//! multiply markers by the parallelism at every shuffle).

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
    /// The channel the next latency marker goes to.
    pub next_marker: usize,
}

impl EdgeOutput {
    pub fn new(partitioner: Partitioner, channels: Vec<OutputChannel>) -> Self {
        EdgeOutput {
            partitioner,
            channels,
            next_marker: 0,
        }
    }
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
            Element::LatencyMarker(stamp) => {
                for edge in &mut self.edges {
                    let n = edge.channels.len();
                    if let Some(channel) = edge.channels.get_mut(edge.next_marker % n.max(1)) {
                        edge.next_marker = (edge.next_marker + 1) % n;
                        channel.send(Element::LatencyMarker(stamp), metrics).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::{ChannelItem, ChannelKey};
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use eddy_sdk::ids::{Attempt, JobId, VertexId};
    use eddy_sdk::keygroup::subtask_for_key_group;
    use std::sync::Arc;
    use tokio::sync::mpsc;

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("user", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]))
    }

    fn batch(rows: i64) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("user-{}", i % 37)),
                )),
                Arc::new(Int64Array::from_iter_values(0..rows)),
            ],
        )
        .unwrap()
    }

    fn hash_partitioner() -> Partitioner {
        let p = Partitioning::Hash {
            key_columns: vec!["user".into()],
        };
        Partitioner::new(&p, &schema(), 128, 0).unwrap()
    }

    #[test]
    fn hash_routes_each_row_to_the_owner_of_its_key_group() {
        let mut p = hash_partitioner();
        let pieces = p.route(batch(1000), 4).unwrap();
        assert!(pieces.len() > 1, "37 keys over 4 subtasks must use several");
        let mut rows = 0;
        for (target, piece) in &pieces {
            rows += piece.num_rows();
            for kg in eddy_sdk::plan::hash::key_groups(piece, &[0], 128).unwrap() {
                assert_eq!(subtask_for_key_group(kg, 128, 4) as usize, *target);
            }
        }
        assert_eq!(rows, 1000, "no row lost or duplicated");
    }

    #[test]
    fn hash_same_key_always_goes_to_the_same_channel() {
        let mut p = hash_partitioner();
        let owner = |p: &mut Partitioner, b: RecordBatch| p.route(b, 8).unwrap()[0].0;
        let one = |user: &str| {
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(StringArray::from(vec![user])),
                    Arc::new(Int64Array::from(vec![1])),
                ],
            )
            .unwrap()
        };
        let first = owner(&mut p, one("alice"));
        for _ in 0..5 {
            assert_eq!(owner(&mut p, one("alice")), first);
        }
    }

    #[test]
    fn new_unknown_key_column_is_an_error() {
        let p = Partitioning::Hash {
            key_columns: vec!["nope".into()],
        };
        assert!(
            matches!(Partitioner::new(&p, &schema(), 128, 0), Err(Error::KeyColumn(c)) if c == "nope")
        );
    }

    #[test]
    fn rebalance_round_robins_whole_batches() {
        let mut p = Partitioner::new(&Partitioning::Rebalance, &schema(), 128, 1).unwrap();
        let targets: Vec<usize> = (0..4).map(|_| p.route(batch(3), 3).unwrap()[0].0).collect();
        assert_eq!(targets, [1, 2, 0, 1]);
    }

    fn local(to_index: u32, capacity: usize) -> (OutputChannel, mpsc::Receiver<ChannelItem>) {
        let (queue, rx) = mpsc::channel(capacity);
        let key = ChannelKey {
            job_id: JobId("j".into()),
            attempt: Attempt(0),
            from_vertex: VertexId(0),
            from_index: 0,
            to_vertex: VertexId(1),
            to_index,
        };
        (OutputChannel::Local { key, queue }, rx)
    }

    /// A hash edge over two channels and a forward edge over one, and the
    /// receivers of the three channels in that order.
    fn hash_and_forward_edges() -> (Outputs, [mpsc::Receiver<ChannelItem>; 3]) {
        let (a0, ra0) = local(0, 4);
        let (a1, ra1) = local(1, 4);
        let (b0, rb0) = local(0, 4);
        let outputs = Outputs::new(vec![
            EdgeOutput::new(hash_partitioner(), vec![a0, a1]),
            EdgeOutput::new(Partitioner::Forward, vec![b0]),
        ]);
        (outputs, [ra0, ra1, rb0])
    }

    #[tokio::test]
    async fn emit_broadcasts_watermarks_and_end_to_every_channel_of_every_edge() {
        let (mut outputs, [mut ra0, mut ra1, mut rb0]) = hash_and_forward_edges();
        let m = crate::runtime::metrics::SubtaskMetrics::default();
        outputs.emit(Element::Watermark(7), &m).await.unwrap();
        outputs.emit(Element::EndOfStream, &m).await.unwrap();
        for rx in [&mut ra0, &mut ra1, &mut rb0] {
            assert!(matches!(
                rx.recv().await.unwrap().unwrap(),
                Element::Watermark(7)
            ));
            assert!(matches!(
                rx.recv().await.unwrap().unwrap(),
                Element::EndOfStream
            ));
        }
    }

    #[tokio::test]
    async fn emit_latency_marker_goes_to_one_channel_per_edge_round_robin() {
        let (mut outputs, [mut ra0, mut ra1, mut rb0]) = hash_and_forward_edges();
        let m = crate::runtime::metrics::SubtaskMetrics::default();
        for stamp in [1, 2, 3] {
            outputs
                .emit(Element::LatencyMarker(stamp), &m)
                .await
                .unwrap();
        }
        let got = |rx: &mut mpsc::Receiver<ChannelItem>| {
            let mut stamps = Vec::new();
            while let Ok(item) = rx.try_recv() {
                match item.unwrap() {
                    Element::LatencyMarker(s) => stamps.push(s),
                    other => panic!("not a marker: {other:?}"),
                }
            }
            stamps
        };
        assert_eq!(got(&mut ra0), [1, 3]);
        assert_eq!(got(&mut ra1), [2]);
        assert_eq!(
            got(&mut rb0),
            [1, 2, 3],
            "a one-channel edge gets every marker"
        );
    }

    #[tokio::test]
    async fn emit_batch_reaches_every_edge() {
        let (a0, mut ra0) = local(0, 4);
        let (b0, mut rb0) = local(0, 4);
        let mut outputs = Outputs::new(vec![
            EdgeOutput::new(Partitioner::Forward, vec![a0]),
            EdgeOutput::new(Partitioner::Rebalance { next: 0 }, vec![b0]),
        ]);
        let m = crate::runtime::metrics::SubtaskMetrics::default();
        outputs.emit(Element::Batch(batch(5)), &m).await.unwrap();
        for rx in [&mut ra0, &mut rb0] {
            assert!(
                matches!(rx.recv().await.unwrap().unwrap(), Element::Batch(b) if b.num_rows() == 5)
            );
        }
    }
}

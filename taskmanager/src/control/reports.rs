//! Delivery of task status changes and checkpoint reports to whichever
//! JobManager the TaskManager is registered with, retried through
//! JobManager changes.

use super::{MAX_BACKOFF, MIN_BACKOFF, RPC_TIMEOUT, Session};
use crate::node::{CheckpointMessage, Node};
use eddy_proto::v1 as pb;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

type StatusKey = (String, u32, u32);

fn status_key(s: &pb::TaskStatus) -> StatusKey {
    s.subtask
        .as_ref()
        .map(|r| (r.job_id.clone(), r.vertex, r.index))
        .unwrap_or_default()
}

/// Delivers every status change, in subtask order, retrying with backoff.
pub(super) async fn report_statuses(
    node: Arc<Node>,
    mut reports: mpsc::UnboundedReceiver<pb::TaskStatus>,
    mut session: watch::Receiver<Option<Session>>,
    shutdown: CancellationToken,
) {
    let mut pending: BTreeMap<StatusKey, pb::TaskStatus> = BTreeMap::new();
    let mut backoff = MIN_BACKOFF;
    loop {
        while let Ok(s) = reports.try_recv() {
            pending.insert(status_key(&s), s);
        }
        let current = session.borrow().clone();
        let mut failed = false;
        if let Some(mut sess) = current {
            while let Some((key, status)) = pending.pop_first() {
                let req = pb::ReportTaskStatusRequest {
                    tm_id: node.tm_id.0.clone(),
                    status: Some(status.clone()),
                };
                match tokio::time::timeout(RPC_TIMEOUT, sess.client.report_task_status(req)).await {
                    Ok(Ok(_)) => backoff = MIN_BACKOFF,
                    outcome => {
                        if let Ok(Err(status)) = outcome {
                            tracing::debug!(jobmanager = %sess.addr, message = status.message(), "status report failed, will retry");
                        }
                        pending.entry(key).or_insert(status);
                        failed = true;
                        break;
                    }
                }
            }
        }
        let retry_in = backoff;
        if failed {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        tokio::select! {
            s = reports.recv() => match s {
                Some(s) => { pending.insert(status_key(&s), s); }
                None => return,
            },
            changed = session.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(retry_in), if failed => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// A checkpoint report older than this is dropped undelivered: the
/// checkpoint has timed out at the JobManager by then.
const CHECKPOINT_REPORT_TTL: Duration = Duration::from_secs(120);

/// Delivers checkpoint acknowledgements and declines in order, retrying with
/// backoff through JobManager changes (a new leader continues the
/// checkpoint in flight only if its acknowledgements reach it).
pub(super) async fn report_checkpoints(
    mut reports: mpsc::UnboundedReceiver<CheckpointMessage>,
    mut session: watch::Receiver<Option<Session>>,
    shutdown: CancellationToken,
) {
    let mut pending: std::collections::VecDeque<(std::time::Instant, CheckpointMessage)> =
        std::collections::VecDeque::new();
    let mut backoff = MIN_BACKOFF;
    loop {
        while let Ok(m) = reports.try_recv() {
            pending.push_back((std::time::Instant::now(), m));
        }
        pending.retain(|(at, _)| at.elapsed() < CHECKPOINT_REPORT_TTL);
        let current = session.borrow().clone();
        let mut failed = false;
        if let Some(mut sess) = current {
            while let Some((at, message)) = pending.pop_front() {
                let outcome = match message.clone() {
                    CheckpointMessage::Ack(req) => {
                        tokio::time::timeout(RPC_TIMEOUT, sess.client.acknowledge_checkpoint(req))
                            .await
                            .map(|r| r.map(|_| ()))
                    }
                    CheckpointMessage::Decline(req) => {
                        tokio::time::timeout(RPC_TIMEOUT, sess.client.decline_checkpoint(req))
                            .await
                            .map(|r| r.map(|_| ()))
                    }
                };
                match outcome {
                    Ok(Ok(())) => backoff = MIN_BACKOFF,
                    outcome => {
                        if let Ok(Err(status)) = outcome {
                            tracing::debug!(jobmanager = %sess.addr, message = status.message(), "checkpoint report failed, will retry");
                        }
                        pending.push_front((at, message));
                        failed = true;
                        break;
                    }
                }
            }
        }
        let retry_in = backoff;
        if failed {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        tokio::select! {
            m = reports.recv() => match m {
                Some(m) => pending.push_back((std::time::Instant::now(), m)),
                None => return,
            },
            changed = session.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(retry_in), if failed => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

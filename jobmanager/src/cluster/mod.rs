//! Membership of the JobManager group: adding a member (as a learner, then
//! as a voter once it caught up), removing one, and announcing this node's
//! REST URL so followers can forward writes to whoever leads.
//!
//! Every change runs on the leader (REST forwards it there). The rules:
//! a member's Raft address never changes in place (two ids answering at one
//! address can elect two leaders; remove and add it instead), the last voter
//! cannot be removed, and removing the leader is allowed (it steps down once
//! the new membership commits).

pub mod request;
pub mod status;

use crate::context::{Context, WriteError};
use crate::raft::Node;
use eddy_sdk::rest::{AddMemberRequest, FORWARDED_BY_HEADER};
use eddy_sdk::{ApiError, ErrorCode};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::metrics::WaitError;
use openraft::{ChangeMembers, Membership};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub use request::parse_member;
pub use status::status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Write(Box<WriteError>),
    #[error("jobmanager {id} is not a member of the group")]
    NotAMember { id: u64 },
    #[error("jobmanager {id} is the last voter; a group cannot lose its last voter")]
    LastVoter { id: u64 },
    #[error(
        "jobmanager {id} is already a member at {existing}; remove it before adding it at {requested}"
    )]
    AddressConflict {
        id: u64,
        existing: String,
        requested: String,
    },
    #[error("member {other} already uses raft address {addr}")]
    AddressInUse { other: u64, addr: String },
    #[error(
        "jobmanager {id} did not catch up with the leader's log within {timeout:?}; it stays a learner (is it running at its raft_addr? retry to promote it)"
    )]
    CatchUpTimeout { id: u64, timeout: Duration },
    #[error("raft is shutting down")]
    ShuttingDown,
    #[error("the membership change failed")]
    Change(#[source] Box<RaftError<u64, ClientWriteError<u64, Node>>>),
}

impl From<WriteError> for Error {
    fn from(e: WriteError) -> Self {
        Error::Write(Box::new(e))
    }
}

impl Error {
    pub fn to_api(&self) -> ApiError {
        let message = self.to_string();
        match self {
            Error::Write(e) => e.to_api(),
            Error::NotAMember { .. } => ApiError::new(ErrorCode::NotFound, message),
            Error::LastVoter { .. } => ApiError::new(ErrorCode::Conflict, message),
            Error::AddressConflict { .. } | Error::AddressInUse { .. } => {
                ApiError::new(ErrorCode::Conflict, message).with_field("raft_addr")
            }
            Error::CatchUpTimeout { .. } | Error::ShuttingDown => {
                ApiError::new(ErrorCode::Unavailable, message)
            }
            Error::Change(e) => match e.as_ref() {
                RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                    let hint = match e {
                        ChangeMembershipError::InProgress(_) => "; retry once it is done",
                        _ => "",
                    };
                    ApiError::new(ErrorCode::Conflict, format!("{message}: {e}{hint}"))
                }
                e => ApiError::new(ErrorCode::Unavailable, format!("{message}: {e}")),
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn membership(ctx: &Context) -> Membership<u64, Node> {
    ctx.raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .clone()
}

fn require_leader(ctx: &Context) -> Result<()> {
    if ctx.is_leader() {
        Ok(())
    } else {
        Err(ctx.not_leader().into())
    }
}

async fn change(ctx: &Context, changes: ChangeMembers<u64, Node>) -> Result<()> {
    match ctx.raft.change_membership(changes, false).await {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Err(ctx.not_leader().into())
        }
        Err(e) => Err(Error::Change(Box::new(e))),
    }
}

/// Adds `req` to the group and returns once it is a voter. Idempotent: a
/// learner is promoted, a voter is left as it is, and a member whose REST URL
/// changed gets the new one.
#[tracing::instrument(skip_all, fields(member = req.id))]
pub async fn add_member(ctx: &Context, req: &AddMemberRequest) -> Result<()> {
    require_leader(ctx)?;
    let current = membership(ctx);
    let node = Node::new(req.raft_addr.clone(), req.rest_url.clone());
    if let Some((&other, _)) = current
        .nodes()
        .find(|(id, n)| **id != req.id && n.raft_addr == req.raft_addr)
    {
        return Err(Error::AddressInUse {
            other,
            addr: req.raft_addr.clone(),
        });
    }
    match current.get_node(&req.id) {
        Some(existing) if existing.raft_addr != req.raft_addr => {
            return Err(Error::AddressConflict {
                id: req.id,
                existing: existing.raft_addr.clone(),
                requested: req.raft_addr.clone(),
            });
        }
        Some(existing) => {
            if existing.rest_url != req.rest_url {
                // Same Raft address: replacing the node cannot split the group.
                tracing::info!(rest_url = %req.rest_url, "updating a member's REST URL");
                change(
                    ctx,
                    ChangeMembers::SetNodes(BTreeMap::from([(req.id, node)])),
                )
                .await?;
            }
            if current.voter_ids().any(|v| v == req.id) {
                return Ok(());
            }
        }
        None => {
            tracing::info!(raft_addr = %req.raft_addr, "adding a learner");
            match ctx.raft.add_learner(req.id, node, false).await {
                Ok(_) => {}
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    return Err(ctx.not_leader().into());
                }
                Err(e) => return Err(Error::Change(Box::new(e))),
            }
        }
    }
    wait_caught_up(ctx, req.id).await?;
    tracing::info!("promoting the learner to voter");
    change(ctx, ChangeMembers::AddVoterIds(BTreeSet::from([req.id]))).await?;
    Ok(())
}

/// Waits until the leader knows member `id` holds the log up to the leader's
/// last entry at the time of the call (it may have come from a snapshot).
async fn wait_caught_up(ctx: &Context, id: u64) -> Result<()> {
    let target = ctx.raft.metrics().borrow().last_log_index;
    let timeout = ctx.config.raft.join_timeout.0;
    let waited = ctx
        .raft
        .wait(Some(timeout))
        .metrics(
            |m| {
                // No replication map: this node stopped leading.
                m.replication
                    .as_ref()
                    .is_none_or(|r| r.get(&id).copied().flatten().map(|l| l.index) >= target)
            },
            format!("learner {id} catches up to index {target:?}"),
        )
        .await;
    match waited {
        Ok(m) if m.replication.is_none() => Err(ctx.not_leader().into()),
        Ok(_) => Ok(()),
        Err(WaitError::Timeout(..)) => Err(Error::CatchUpTimeout { id, timeout }),
        Err(WaitError::ShuttingDown) => Err(Error::ShuttingDown),
    }
}

/// Removes member `id`: a voter leaves the voters and the group, a learner
/// the group. The last voter stays.
#[tracing::instrument(skip_all, fields(member = id))]
pub async fn remove_member(ctx: &Context, id: u64) -> Result<()> {
    require_leader(ctx)?;
    let current = membership(ctx);
    if current.get_node(&id).is_none() {
        return Err(Error::NotAMember { id });
    }
    let voters: BTreeSet<u64> = current.voter_ids().collect();
    let changes = if voters.contains(&id) {
        if voters.len() == 1 {
            return Err(Error::LastVoter { id });
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    tracing::info!(leader = id == ctx.id, "removing a member");
    change(ctx, changes).await
}

/// Why announcing this node's REST URL did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error(transparent)]
    Change(#[from] Error),
    #[error("the leader's REST URL is not known yet")]
    LeaderUnknown,
    #[error("cannot reach the leader at {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the leader at {url} refused: HTTP {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
}

/// Records this node's REST URL in the membership when the recorded one
/// differs (first start from static peers, a new port after a restart).
/// The leader writes it itself; a follower asks the leader over REST.
/// Returns whether anything was sent.
pub async fn announce_self(ctx: &Context) -> Result<bool, AnnounceError> {
    let Some(own) = ctx.member(ctx.id) else {
        // Not a member (yet): the leader records the URL given when adding it.
        return Ok(false);
    };
    if own.rest_url == ctx.rest_url {
        return Ok(false);
    }
    let req = AddMemberRequest {
        id: ctx.id,
        raft_addr: own.raft_addr,
        rest_url: ctx.rest_url.clone(),
    };
    if ctx.is_leader() {
        add_member(ctx, &req).await?;
        return Ok(true);
    }
    let leader = ctx.leader_id().ok_or(AnnounceError::LeaderUnknown)?;
    let base = ctx
        .rest_url_of(leader)
        .ok_or(AnnounceError::LeaderUnknown)?;
    let url = format!("{base}/v1/cluster/members");
    let http = |source| AnnounceError::Http {
        url: url.clone(),
        source,
    };
    let response = ctx
        .http
        .post(&url)
        .timeout(Duration::from_secs(10))
        .header(FORWARDED_BY_HEADER, ctx.id.to_string())
        .json(&req)
        .send()
        .await
        .map_err(http)?;
    let status = response.status().as_u16();
    if !response.status().is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(AnnounceError::Refused { url, status, body });
    }
    Ok(true)
}

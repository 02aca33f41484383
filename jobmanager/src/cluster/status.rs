//! The Raft group as this node sees it, built from openraft's metrics: what
//! `GET /v1/cluster` answers and what the `eddy_jobmanager_raft_*` gauges
//! show.
//!
//! [`view`] is pure (metrics in, status out); [`status`] adds what only the
//! running node knows: the committed index and when peers last answered.

use crate::context::Context;
use crate::raft::Node;
use eddy_sdk::rest::{ClusterStatus, MemberInfo, MemberRole, SnapshotInfo};
use openraft::{RaftMetrics, ServerState};
use std::collections::BTreeSet;
use std::time::Duration;

/// A node's role from its openraft server state.
pub fn role(state: ServerState) -> MemberRole {
    match state {
        ServerState::Leader => MemberRole::Leader,
        ServerState::Follower => MemberRole::Follower,
        ServerState::Learner => MemberRole::Learner,
        ServerState::Candidate => MemberRole::Candidate,
        ServerState::Shutdown => MemberRole::Shutdown,
    }
}

/// Builds the status from `metrics`, the committed index and, while this
/// node leads, how long ago each peer answered (`last_contact`).
pub fn view(
    metrics: &RaftMetrics<u64, Node>,
    commit_index: Option<u64>,
    last_contact: impl Fn(u64) -> Option<Duration>,
) -> ClusterStatus {
    let this = metrics.id;
    let leading = metrics.state == ServerState::Leader;
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(&id, node)| {
            let member_role = if Some(id) == metrics.current_leader {
                MemberRole::Leader
            } else if id == this {
                role(metrics.state)
            } else if voters.contains(&id) {
                MemberRole::Follower
            } else {
                MemberRole::Learner
            };
            let matched_index = if !leading {
                None
            } else if id == this {
                metrics.last_log_index
            } else {
                metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .map(|log_id| log_id.index)
            };
            let last_contact_ms = if leading && id != this {
                last_contact(id).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            } else {
                None
            };
            MemberInfo {
                id,
                role: member_role,
                rest_url: node.rest_url().map(str::to_string),
                raft_addr: node.raft_addr.clone(),
                last_contact_ms,
                matched_index,
            }
        })
        .collect();
    ClusterStatus {
        leader: metrics.current_leader,
        term: metrics.current_term,
        this_node: this,
        role: role(metrics.state),
        commit_index,
        last_applied: metrics.last_applied.map(|l| l.index),
        last_log_index: metrics.last_log_index,
        snapshot: metrics.snapshot.map(|s| SnapshotInfo {
            last_log_index: s.index,
            last_log_term: s.leader_id.term,
            purged_index: metrics.purged.map(|p| p.index),
        }),
        members,
    }
}

/// This node's view of the group now.
pub async fn status(ctx: &Context) -> ClusterStatus {
    // The committed index lives in the Raft core's state, not in its
    // metrics; a stopped core (shutting down) has none to report.
    let committed = ctx
        .raft
        .with_raft_state(|st| st.committed.map(|c| c.index))
        .await
        .unwrap_or(None);
    let metrics = ctx.raft.metrics().borrow().clone();
    view(&metrics, committed, |id| ctx.contacts.since(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, Membership, StoredMembership};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn log_id(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn metrics(id: u64, state: ServerState) -> RaftMetrics<u64, Node> {
        let membership = Membership::new(
            vec![BTreeSet::from([1, 2])],
            BTreeMap::from([
                (1, Node::new("a:1", "http://a:8081")),
                (2, Node::new("b:1", "")),
                (3, Node::new("c:1", "http://c:8081")),
            ]),
        );
        let mut m = RaftMetrics::new_initial(id);
        m.state = state;
        m.current_term = 4;
        m.current_leader = Some(1);
        m.last_log_index = Some(9);
        m.last_applied = Some(log_id(4, 9));
        m.snapshot = Some(log_id(3, 5));
        m.membership_config = Arc::new(StoredMembership::new(Some(log_id(1, 2)), membership));
        m
    }

    /// The leader reports matched indexes and contacts of its peers; voters
    /// are followers, the rest learners, and a missing REST URL is null.
    #[test]
    fn view_on_leader_has_replication_and_contacts() {
        let mut m = metrics(1, ServerState::Leader);
        m.replication = Some(BTreeMap::from([(2, Some(log_id(4, 8))), (3, None)]));
        let s = view(&m, Some(9), |id| {
            (id == 2).then(|| Duration::from_millis(120))
        });
        assert_eq!((s.leader, s.term, s.this_node), (Some(1), 4, 1));
        assert_eq!(s.role, MemberRole::Leader);
        assert_eq!((s.commit_index, s.last_applied), (Some(9), Some(9)));
        let snap = s.snapshot.unwrap();
        assert_eq!((snap.last_log_index, snap.last_log_term), (5, 3));
        let roles: Vec<_> = s.members.iter().map(|m| (m.id, m.role)).collect();
        assert_eq!(
            roles,
            vec![
                (1, MemberRole::Leader),
                (2, MemberRole::Follower),
                (3, MemberRole::Learner)
            ]
        );
        assert_eq!(s.members[0].matched_index, Some(9));
        assert_eq!(s.members[0].last_contact_ms, None);
        assert_eq!(s.members[1].matched_index, Some(8));
        assert_eq!(s.members[1].last_contact_ms, Some(120));
        assert_eq!(s.members[1].rest_url, None);
        assert_eq!(s.members[2].matched_index, None);
        assert_eq!(s.members[2].rest_url.as_deref(), Some("http://c:8081"));
    }

    /// A follower knows the leader and members but no replication progress.
    #[test]
    fn view_on_follower_has_no_leader_only_fields() {
        let m = metrics(2, ServerState::Follower);
        let s = view(&m, None, |_| Some(Duration::from_millis(1)));
        assert_eq!(s.role, MemberRole::Follower);
        assert!(s.members.iter().all(|m| m.matched_index.is_none()));
        assert!(s.members.iter().all(|m| m.last_contact_ms.is_none()));
        assert_eq!(s.members[1].role, MemberRole::Follower);
    }
}

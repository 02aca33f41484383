//! Growing and shrinking the JobManager group: JobManagers started with
//! `--join` (members only once the leader adds them) and the membership
//! changes, as an operator runs them over REST.

use crate::{Cluster, Node, bin_dir, free_ports, node_log_filter};
use eddy_sdk::rest::{AddMemberRequest, ClusterStatus, MemberRole};

impl Cluster {
    /// Starts JobManager `jobmanager-<id>` (id = one more than the last)
    /// with `--join`: it serves REST and rpc, but it is no member and
    /// initializes nothing until the leader adds it ([`Cluster::add_member`]).
    /// Returns its index in `jms`.
    pub fn start_joining_jobmanager(&mut self) -> anyhow::Result<usize> {
        anyhow::ensure!(
            self.net.is_none(),
            "joining JobManagers run on loopback only"
        );
        let i = self.jms.len();
        let id = i + 1;
        let name = format!("jobmanager-{id}");
        let dir = self.dir().join(&name);
        // A fixed port, so a restart keeps the address the membership has.
        let port = free_ports(1)?[0];
        let args: Vec<String> = vec![
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--rest-addr".into(),
            "127.0.0.1:0".into(),
            "--rpc-addr".into(),
            format!("127.0.0.1:{port}"),
            "--heartbeat-timeout".into(),
            self.heartbeat_timeout.clone(),
            "--ready-file".into(),
            dir.join("ready.json").display().to_string(),
            "--join".into(),
        ];
        let node = Node::start(
            &name,
            bin_dir().join("eddy-jobmanager"),
            args,
            self.jobmanager_env.clone(),
            dir,
            node_log_filter(self.log.as_deref()),
        )?;
        self.jms.push(node);
        Ok(i)
    }

    /// Adds `jms[i]` to the group through the leader, and returns the
    /// group's status once it votes.
    pub async fn add_member(&self, i: usize) -> anyhow::Result<ClusterStatus> {
        let node = &self.jms[i];
        let req = AddMemberRequest {
            id: (i + 1) as u64,
            raft_addr: node.ready_str("rpc_addr"),
            rest_url: node.rest_url(),
        };
        let leader = self.wait_for_leader(None).await?;
        Ok(self.client_of(leader).add_member(&req).await?)
    }

    /// Removes `jms[i]` from the group through the leader (which may be
    /// `jms[i]`: it steps down) and returns the status after the change.
    /// The process keeps running until the caller stops it.
    pub async fn remove_member(&self, i: usize) -> anyhow::Result<ClusterStatus> {
        let leader = self.wait_for_leader(None).await?;
        Ok(self.client_of(leader).remove_member((i + 1) as u64).await?)
    }
}

/// The ids of the group's voters (the leader included), in id order.
pub fn voters(status: &ClusterStatus) -> Vec<u64> {
    status
        .members
        .iter()
        .filter(|m| m.role != MemberRole::Learner)
        .map(|m| m.id)
        .collect()
}

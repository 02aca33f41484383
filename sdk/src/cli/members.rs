//! `eddy cluster`: the JobManager group's status, and adding or removing a
//! member. Any JobManager's URL works: followers forward changes to the
//! leader.

use crate::client::Client;
use crate::rest::{AddMemberRequest, ClusterStatus};
use clap::{Args, Subcommand};
use std::fmt::Write;

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Show the leader, the term and every member (the default).
    Status,
    /// Add a JobManager started with `--join`; returns once it votes.
    Add {
        /// Its Raft id (its `id` setting).
        #[arg(long)]
        id: u64,
        /// Its gRPC address, host:port (its `rpc-addr`).
        #[arg(long)]
        raft_addr: String,
        /// Its REST URL, http://host:port.
        #[arg(long)]
        rest_url: String,
    },
    /// Remove a member from the group (then stop its process).
    Remove {
        /// The member's Raft id.
        id: u64,
    },
}

pub async fn run(client: &Client, args: ClusterArgs, json: bool) -> anyhow::Result<()> {
    let status = match args.action.unwrap_or(Action::Status) {
        Action::Status => client.cluster().await?,
        Action::Add {
            id,
            raft_addr,
            rest_url,
        } => {
            let req = AddMemberRequest {
                id,
                raft_addr,
                rest_url,
            };
            client.add_member(&req).await?
        }
        Action::Remove { id } => client.remove_member(id).await?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The status as a header and one line per member.
pub fn render(c: &ClusterStatus) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "leader {}, term {}, answered by {} ({})",
        opt(c.leader),
        c.term,
        c.this_node,
        c.role
    );
    let _ = writeln!(
        s,
        "commit index {}, last applied {}, snapshot at {}",
        opt(c.commit_index),
        opt(c.last_applied),
        opt(c.snapshot.as_ref().map(|s| s.last_log_index))
    );
    let _ = writeln!(
        s,
        "{:>4} {:<9} {:<22} {:<28} {:>8} {:>12}",
        "ID", "ROLE", "RAFT ADDR", "REST URL", "MATCHED", "CONTACT MS"
    );
    for m in &c.members {
        let _ = writeln!(
            s,
            "{:>4} {:<9} {:<22} {:<28} {:>8} {:>12}",
            m.id,
            m.role.as_str(),
            m.raft_addr,
            m.rest_url.as_deref().unwrap_or("-"),
            opt(m.matched_index),
            opt(m.last_contact_ms)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rest::{MemberInfo, MemberRole};

    #[test]
    fn render_lists_members_and_unknowns() {
        let c = ClusterStatus {
            leader: Some(1),
            term: 3,
            this_node: 2,
            role: MemberRole::Follower,
            commit_index: Some(40),
            last_applied: Some(39),
            last_log_index: Some(40),
            snapshot: None,
            members: vec![MemberInfo {
                id: 1,
                role: MemberRole::Leader,
                rest_url: None,
                raft_addr: "10.0.0.1:6123".into(),
                last_contact_ms: None,
                matched_index: None,
            }],
        };
        let text = render(&c);
        assert!(
            text.starts_with("leader 1, term 3, answered by 2 (follower)"),
            "{text}"
        );
        assert!(text.contains("snapshot at -"), "{text}");
        let row = text.lines().last().unwrap();
        assert!(
            row.contains("leader") && row.contains("10.0.0.1:6123"),
            "{row}"
        );
    }
}

//! What the Raft membership records about each JobManager: where its Raft
//! (gRPC) server listens and where its REST API answers. Followers read the
//! leader's `rest_url` from here to forward writes to it.
//!
//! Data directories written before the REST URL was part of the membership
//! hold openraft's `BasicNode` (`{"addr": "host:port"}`); it still reads:
//! `addr` is the old name of `raft_addr`, and a missing `rest_url` is empty
//! until the node announces it (see `cluster::announce_self`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// One member of the JobManager group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `host:port` of the member's gRPC server (Raft and TaskManagers).
    #[serde(alias = "addr")]
    pub raft_addr: String,
    /// `http://host:port` of the member's REST API; empty while unknown.
    #[serde(default)]
    pub rest_url: String,
}

impl Node {
    pub fn new(raft_addr: impl Into<String>, rest_url: impl Into<String>) -> Self {
        Node {
            raft_addr: raft_addr.into(),
            rest_url: rest_url.into(),
        }
    }

    /// The REST URL, when the member announced one.
    pub fn rest_url(&self) -> Option<&str> {
        Some(self.rest_url.as_str()).filter(|u| !u.is_empty())
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{raft_addr: {}, rest_url: {}}}",
            self.raft_addr, self.rest_url
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{BasicNode, Membership};
    use std::collections::{BTreeMap, BTreeSet};

    /// A membership written by a JobManager that still used `BasicNode`
    /// reads as nodes with their address and no REST URL.
    #[test]
    fn node_reads_basic_node_membership() {
        let old: Membership<u64, BasicNode> = Membership::new(
            vec![BTreeSet::from([1, 2])],
            BTreeMap::from([(1, BasicNode::new("a:1")), (2, BasicNode::new("b:2"))]),
        );
        let json = serde_json::to_string(&old).unwrap();
        let new: Membership<u64, Node> = serde_json::from_str(&json).unwrap();
        assert_eq!(new.get_node(&1), Some(&Node::new("a:1", "")));
        assert_eq!(new.get_node(&2).unwrap().rest_url(), None);
        assert_eq!(new.voter_ids().collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn node_roundtrips_with_rest_url() {
        let node = Node::new("a:1", "http://a:8081");
        let json = serde_json::to_string(&node).unwrap();
        assert_eq!(json, r#"{"raft_addr":"a:1","rest_url":"http://a:8081"}"#);
        assert_eq!(serde_json::from_str::<Node>(&json).unwrap(), node);
        assert_eq!(node.rest_url(), Some("http://a:8081"));
    }
}

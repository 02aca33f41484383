//! Raft traffic between JobManagers over tonic (`eddy.v1.RaftService`).
//!
//! Payloads are openraft's own request types and `Result<response,
//! RaftError>` serialized as JSON, so openraft owns their shape and a remote
//! Raft error arrives as the same typed error it was on the other node.
//!
//! [`Contacts`] remembers when each peer last answered an AppendEntries
//! (heartbeats included): the leader's view of its followers, which openraft
//! 0.9's metrics do not carry.

use super::{Node, Raft, TypeConfig};
use eddy_proto::v1 as pb;
use eddy_sdk::server::rpc;
use openraft::RPCTypes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use pb::raft_service_client::RaftServiceClient;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// When each peer last answered an AppendEntries sent by this node.
#[derive(Debug, Default)]
pub struct Contacts {
    last: Mutex<HashMap<u64, Instant>>,
}

impl Contacts {
    fn record(&self, peer: u64) {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, Instant::now());
    }

    /// How long ago `peer` last answered, if it ever did.
    pub fn since(&self, peer: u64) -> Option<Duration> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .map(Instant::elapsed)
    }
}

/// Creates one client per target node.
#[derive(Clone, Debug, Default)]
pub struct NetworkFactory {
    contacts: Arc<Contacts>,
}

impl NetworkFactory {
    pub fn new(contacts: Arc<Contacts>) -> Self {
        NetworkFactory { contacts }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = NetworkClient;

    async fn new_client(&mut self, target: u64, node: &Node) -> NetworkClient {
        let client = rpc::connect(&node.raft_addr)
            .map(RaftServiceClient::new)
            .map_err(|e| e.to_string());
        NetworkClient {
            target,
            addr: node.raft_addr.clone(),
            client,
            contacts: self.contacts.clone(),
        }
    }
}

/// The connection to one other JobManager.
pub struct NetworkClient {
    target: u64,
    addr: String,
    /// A malformed address stays an error on every call (reported as unreachable).
    client: Result<RaftServiceClient<Channel>, String>,
    contacts: Arc<Contacts>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl NetworkClient {
    async fn call<Req, Resp, E>(
        &mut self,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, Node, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => {
                return Err(Unreachable::new(&Msg(format!(
                    "bad raft peer address {}: {e}",
                    self.addr
                )))
                .into());
            }
        };
        let json = serde_json::to_vec(req).map_err(|e| NetworkError::new(&e))?;
        let payload = pb::RaftPayload { json };
        let mut client = client;
        let fut = async move {
            match action {
                RPCTypes::AppendEntries => client.append_entries(payload).await,
                RPCTypes::Vote => client.vote(payload).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(payload).await,
            }
        };
        let ttl = option.hard_ttl();
        let response = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: 0,
                    target: self.target,
                    timeout: ttl,
                }));
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(Unreachable::new(&Msg(format!(
                    "raft peer {} at {}: {}",
                    self.target,
                    self.addr,
                    status.message()
                )))
                .into());
            }
            Ok(Err(status)) => {
                return Err(NetworkError::new(&Msg(format!(
                    "raft peer {}: {status}",
                    self.target
                )))
                .into());
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<Resp, E> =
            serde_json::from_slice(&response.json).map_err(|e| NetworkError::new(&e))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for NetworkClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Node, RaftError<u64>>> {
        let response = self.call(RPCTypes::AppendEntries, &rpc, &option).await;
        if response.is_ok() {
            self.contacts.record(self.target);
        }
        response
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Node, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(RPCTypes::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Node, RaftError<u64>>> {
        self.call(RPCTypes::Vote, &rpc, &option).await
    }
}

/// The server side: hands requests from other JobManagers to the local Raft.
pub struct RaftServer {
    raft: Raft,
}

impl RaftServer {
    pub fn new(raft: Raft) -> Self {
        RaftServer { raft }
    }
}

fn decode<T: DeserializeOwned>(req: &pb::RaftPayload) -> Result<T, tonic::Status> {
    serde_json::from_slice(&req.json)
        .map_err(|e| tonic::Status::invalid_argument(format!("malformed raft payload: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
    serde_json::to_vec(value)
        .map(|json| tonic::Response::new(pb::RaftPayload { json }))
        .map_err(|e| tonic::Status::internal(format!("cannot encode raft response: {e}")))
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for RaftServer {
    async fn append_entries(
        &self,
        request: tonic::Request<pb::RaftPayload>,
    ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request.get_ref())?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        request: tonic::Request<pb::RaftPayload>,
    ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
        let rpc: VoteRequest<u64> = decode(request.get_ref())?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<pb::RaftPayload>,
    ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request.get_ref())?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}

//! The JobManager's configuration: checked-in defaults (`default.toml`) <
//! config file < `EDDY_*` environment < command-line flags.
//!
//! Loading is two steps: deserialize the merged layers into [`Config`], then
//! [`Config::validate`] checks what serde cannot (peer syntax, timeouts) and
//! returns the parsed peer list. The environment is passed in so tests stay
//! hermetic; there is no global config.

use eddy_sdk::server::config as layered;
use eddy_sdk::spec::{CheckpointDefaults, HumanDuration, RestartSettings};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The checked-in defaults.
pub const DEFAULTS: &str = include_str!("../default.toml");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load configuration")]
    Load(#[from] layered::Error),
    #[error("invalid peer {entry:?}: {reason}; write peers as \"id=host:port\"")]
    Peer { entry: String, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use eddy_sdk::server::telemetry::LogFormat;

/// Configuration of one JobManager process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// This JobManager's Raft node id, unique within the group (not 0).
    pub id: u64,
    /// Directory of durable state: the Raft log and snapshots (`raft.redb`).
    pub data_dir: PathBuf,
    /// Address the REST API (and `/metrics`) binds to; port 0 picks a free port.
    pub rest_addr: String,
    /// The REST URL other JobManagers and clients reach this one at (it is
    /// recorded in the Raft membership, so followers can forward writes to
    /// the leader). Empty: `http://` + the bound rest-addr, which only works
    /// when that is a reachable address (not `0.0.0.0`).
    pub rest_url: String,
    /// Address the gRPC server binds to (TaskManager service and Raft); port 0
    /// picks a free port.
    pub rpc_addr: String,
    /// The Raft group as `"id=host:port"` entries (each member's rpc-addr).
    /// Empty means a group of one: this node.
    pub peers: Vec<String>,
    /// Start without initializing a group, and wait for the leader of an
    /// existing group to add this node (`POST /v1/cluster/members`).
    pub join: bool,
    /// Raft log compaction and membership changes.
    pub raft: RaftSettings,
    /// How often TaskManagers send heartbeats (sent to them at registration).
    pub heartbeat_interval: HumanDuration,
    /// A TaskManager without a heartbeat for this long is declared lost.
    pub heartbeat_timeout: HumanDuration,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Defaults of a job spec's `checkpoint:` section.
    pub checkpoint: CheckpointDefaults,
    /// Defaults of a job spec's `restart:` section.
    pub restart: RestartSettings,
}

/// The `[raft]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RaftSettings {
    /// Build a snapshot of the cluster state (and purge the log up to it)
    /// every this many log entries.
    pub snapshot_logs: u64,
    /// Log entries kept behind the latest snapshot, so a follower a little
    /// behind catches up from the log rather than from a whole snapshot.
    pub keep_logs: u64,
    /// How long adding a member waits for it to catch up with the leader's
    /// log before promoting it to voter.
    pub join_timeout: HumanDuration,
    /// How often the leader sends heartbeats to the followers.
    pub heartbeat_interval: HumanDuration,
    /// Bounds of the random election timeout. A follower stands for
    /// election once it has heard nothing from the leader for
    /// `election_timeout_max` (the leader's lease) plus that timeout.
    pub election_timeout_min: HumanDuration,
    pub election_timeout_max: HumanDuration,
}

impl RaftSettings {
    /// Heartbeats must be well within the election timeout, or followers
    /// stand for election while the leader is alive.
    fn check_timeouts(&self) -> Result<()> {
        let (hb, min, max) = (
            self.heartbeat_interval.0,
            self.election_timeout_min.0,
            self.election_timeout_max.0,
        );
        if hb.is_zero() {
            return Err(Error::Invalid(
                "raft.heartbeat-interval must be positive".into(),
            ));
        }
        if min <= hb * 2 {
            return Err(Error::Invalid(format!(
                "raft.election-timeout-min ({}) must be more than twice raft.heartbeat-interval ({})",
                self.election_timeout_min, self.heartbeat_interval
            )));
        }
        if max <= min {
            return Err(Error::Invalid(format!(
                "raft.election-timeout-max ({}) must be more than raft.election-timeout-min ({})",
                self.election_timeout_max, self.election_timeout_min
            )));
        }
        Ok(())
    }
}

/// Command-line overrides, applied over every other layer.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub id: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub rest_addr: Option<String>,
    pub rest_url: Option<String>,
    pub rpc_addr: Option<String>,
    pub peers: Option<Vec<String>>,
    /// `--join`: only ever sets `join`.
    pub join: bool,
    pub heartbeat_timeout: Option<HumanDuration>,
}

impl Config {
    /// Merges defaults, `file`, the `EDDY_*` entries of `env` and `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: &HashMap<String, String>,
        overrides: Overrides,
    ) -> Result<Config> {
        let mut config: Config = layered::load(DEFAULTS, file, env)?;
        if let Some(id) = overrides.id {
            config.id = id;
        }
        if let Some(dir) = overrides.data_dir {
            config.data_dir = dir;
        }
        if let Some(addr) = overrides.rest_addr {
            config.rest_addr = addr;
        }
        if let Some(addr) = overrides.rpc_addr {
            config.rpc_addr = addr;
        }
        if let Some(url) = overrides.rest_url {
            config.rest_url = url;
        }
        if let Some(peers) = overrides.peers {
            config.peers = peers;
        }
        if overrides.join {
            config.join = true;
        }
        if let Some(t) = overrides.heartbeat_timeout {
            config.heartbeat_timeout = t;
        }
        config.validate()?;
        Ok(config)
    }

    /// The built-in defaults alone (used by tests, which then adjust fields).
    pub fn defaults() -> Result<Config> {
        let config: Config = layered::load(DEFAULTS, None, &HashMap::new())?;
        Ok(config)
    }

    /// Checks what deserialization cannot.
    pub fn validate(&self) -> Result<()> {
        if self.id == 0 {
            return Err(Error::Invalid("id must not be 0".into()));
        }
        if self.heartbeat_interval.0.is_zero() {
            return Err(Error::Invalid("heartbeat-interval must be positive".into()));
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(Error::Invalid(format!(
                "heartbeat-timeout ({}) must be longer than heartbeat-interval ({})",
                self.heartbeat_timeout, self.heartbeat_interval
            )));
        }
        self.checkpoint
            .validate()
            .map_err(|e| Error::Invalid(format!("checkpoint defaults: {}", e.message)))?;
        self.restart
            .validate()
            .map_err(|e| Error::Invalid(format!("restart defaults: {}", e.message)))?;
        if self.raft.snapshot_logs == 0 {
            return Err(Error::Invalid("raft.snapshot-logs must be positive".into()));
        }
        if self.raft.join_timeout.0.is_zero() {
            return Err(Error::Invalid("raft.join-timeout must be positive".into()));
        }
        self.raft.check_timeouts()?;
        if !self.rest_url.is_empty() {
            check_rest_url(&self.rest_url).map_err(|reason| {
                Error::Invalid(format!("rest-url {:?}: {reason}", self.rest_url))
            })?;
        }
        self.peer_map()?;
        Ok(())
    }

    /// The REST URL this node advertises, given the address REST bound to.
    pub fn advertised_rest_url(&self, bound: std::net::SocketAddr) -> String {
        if self.rest_url.is_empty() {
            format!("http://{bound}")
        } else {
            self.rest_url.trim_end_matches('/').to_string()
        }
    }

    /// The configured peers by Raft id (this node's own entry included if listed).
    pub fn peer_map(&self) -> Result<BTreeMap<u64, String>> {
        let mut out = BTreeMap::new();
        for entry in &self.peers {
            let (id, addr) = entry.split_once('=').ok_or_else(|| Error::Peer {
                entry: entry.clone(),
                reason: "missing `=`".into(),
            })?;
            let id: u64 = id.trim().parse().map_err(|_| Error::Peer {
                entry: entry.clone(),
                reason: "the id is not a number".into(),
            })?;
            let addr = addr.trim();
            if id == 0 || addr.is_empty() || !addr.contains(':') {
                return Err(Error::Peer {
                    entry: entry.clone(),
                    reason: "need a non-zero id and host:port".into(),
                });
            }
            if out.insert(id, addr.to_string()).is_some() {
                return Err(Error::Peer {
                    entry: entry.clone(),
                    reason: "duplicate id".into(),
                });
            }
        }
        Ok(out)
    }
}

/// Checks that `url` is an absolute `http://host[:port]` URL without a
/// path, as a member's REST URL must be. (JobManagers speak plain HTTP to
/// each other until TLS between processes arrives.)
pub fn check_rest_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("must start with http:// (https is not supported between jobmanagers yet)")?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() {
        return Err("has no host");
    }
    if host.contains(['/', '?', '#', ' ']) {
        return Err("must have no path, query or spaces");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_defaults_match_brief() {
        let c = Config::load(None, &HashMap::new(), Overrides::default()).unwrap();
        assert_eq!(c.id, 1);
        assert_eq!(c.rest_addr, "127.0.0.1:8081");
        assert_eq!(c.rpc_addr, "127.0.0.1:6123");
        assert!(c.peers.is_empty());
        assert_eq!(c.heartbeat_timeout.0, std::time::Duration::from_secs(10));
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(!c.join);
        assert_eq!(c.raft.snapshot_logs, 1000);
        let bound: std::net::SocketAddr = "127.0.0.1:8081".parse().unwrap();
        assert_eq!(c.advertised_rest_url(bound), "http://127.0.0.1:8081");
    }

    #[test]
    fn load_rest_url_and_join_flags() {
        let flags = Overrides {
            rest_url: Some("http://jm-1.example:8081/".into()),
            join: true,
            ..Overrides::default()
        };
        let c = Config::load(None, &HashMap::new(), flags).unwrap();
        assert!(c.join);
        let bound: std::net::SocketAddr = "0.0.0.0:8081".parse().unwrap();
        assert_eq!(c.advertised_rest_url(bound), "http://jm-1.example:8081");
        let mut bad = c.clone();
        bad.rest_url = "jm-1:8081".into();
        assert!(matches!(bad.validate(), Err(Error::Invalid(_))));
        bad.rest_url = "http://jm-1:8081/v1".into();
        assert!(matches!(bad.validate(), Err(Error::Invalid(_))));
    }

    #[test]
    fn load_flags_override_env_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jm.toml");
        std::fs::write(
            &file,
            "id = 2\nrest-addr = \"0.0.0.0:1\"\nrpc-addr = \"0.0.0.0:2\"\n",
        )
        .unwrap();
        let env = HashMap::from([
            ("EDDY_ID".to_string(), "3".to_string()),
            ("EDDY_PEERS".to_string(), "1=a:1,3=b:2".to_string()),
        ]);
        let flags = Overrides {
            rest_addr: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        };
        let c = Config::load(Some(&file), &env, flags).unwrap();
        assert_eq!(c.id, 3);
        assert_eq!(c.rest_addr, "127.0.0.1:0");
        assert_eq!(c.rpc_addr, "0.0.0.0:2");
        assert_eq!(
            c.peer_map().unwrap(),
            BTreeMap::from([(1, "a:1".to_string()), (3, "b:2".to_string())])
        );
    }

    #[test]
    fn load_unknown_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jm.toml");
        std::fs::write(&file, "slots = 2\n").unwrap();
        let err = Config::load(Some(&file), &HashMap::new(), Overrides::default()).unwrap_err();
        assert!(matches!(err, Error::Load(_)), "{err}");
    }

    #[test]
    fn validate_bad_peer_and_timeout_are_rejected() {
        let mut c = Config::defaults().unwrap();
        c.peers = vec!["x=a:1".into()];
        assert!(matches!(c.validate(), Err(Error::Peer { .. })));
        c.peers = vec![];
        c.heartbeat_timeout = HumanDuration::from_millis(500);
        assert!(matches!(c.validate(), Err(Error::Invalid(_))));
    }

    #[test]
    fn validate_raft_timeouts_must_nest() {
        let ok = Config::defaults().unwrap();
        ok.validate().unwrap();
        let mut c = ok.clone();
        c.raft.election_timeout_min = HumanDuration::from_millis(150);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("election-timeout-min"), "{err}");
        let mut c = ok.clone();
        c.raft.election_timeout_max = c.raft.election_timeout_min;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("election-timeout-max"), "{err}");
        let mut c = ok;
        c.raft.heartbeat_interval = HumanDuration::from_millis(0);
        assert!(matches!(c.validate(), Err(Error::Invalid(_))));
    }

    #[test]
    fn load_checkpoint_and_restart_defaults_from_env() {
        let c = Config::defaults().unwrap();
        assert_eq!(c.checkpoint.interval.0, std::time::Duration::from_secs(10));
        assert_eq!(c.checkpoint.retained, 3);
        assert_eq!(c.checkpoint.storage, None, "empty storage means none");
        assert_eq!(c.restart.multiplier, 2.0);
        let env = HashMap::from([
            (
                "EDDY_CHECKPOINT__STORAGE".to_string(),
                "s3://b/chk".to_string(),
            ),
            ("EDDY_RESTART__MAX_BACKOFF".to_string(), "2m".to_string()),
        ]);
        let c = Config::load(None, &env, Overrides::default()).unwrap();
        assert_eq!(c.checkpoint.storage.as_deref(), Some("s3://b/chk"));
        assert_eq!(c.restart.max_backoff.0, std::time::Duration::from_secs(120));
    }

    #[test]
    fn validate_bad_checkpoint_and_restart_defaults_are_rejected() {
        let mut c = Config::defaults().unwrap();
        c.checkpoint.retained = 0;
        assert!(matches!(c.validate(), Err(Error::Invalid(_))));
        let mut c = Config::defaults().unwrap();
        c.restart.max_backoff = HumanDuration::from_millis(10);
        assert!(matches!(c.validate(), Err(Error::Invalid(_))));
    }
}

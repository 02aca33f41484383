//! The TaskManager's configuration: built-in defaults (`default.toml`) < config
//! file < `EDDY_*` environment < command-line flags.
//!
//! Loading is two steps: the layered raw form is deserialized, then
//! [`Config::validate`] fills generated values (the id) and rejects values the
//! process cannot run with. The environment is passed in so tests stay hermetic.

use eddy_sdk::bytesize::ByteSize;
use eddy_sdk::ids::TaskManagerId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The checked-in defaults.
pub const DEFAULTS: &str = include_str!("../default.toml");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load configuration")]
    Load(#[from] eddy_sdk::server::config::Error),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything an `eddy-taskmanager` process needs to start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Stable id of this TaskManager; empty means generated at startup as
    /// `tm-<host>-<pid>-<random>`.
    pub id: String,
    /// JobManager gRPC addresses (`host:port`); the first reachable one is used.
    pub jobmanagers: Vec<String>,
    /// gRPC address to bind (TaskManagerService + ExchangeService).
    pub rpc_addr: String,
    /// Address of the Prometheus `/metrics` endpoint.
    pub metrics_addr: String,
    /// Local working directory (state backends, spill files).
    pub data_dir: PathBuf,
    /// Number of slots this TaskManager offers (one KPU each).
    pub slots: u32,
    /// The size of one slot.
    pub kpu: KpuConfig,
    /// Data-plane exchange settings.
    pub exchange: ExchangeConfig,
    /// Log output: `text` or `json`.
    pub log_format: LogFormat,
    /// How often each source subtask sends a latency marker (0s: never).
    /// Sinks turn marker ages into the latency figures of the REST API.
    pub latency_marker_interval: eddy_sdk::spec::HumanDuration,
}

/// The resources of one slot (one KPU).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KpuConfig {
    /// CPU share of a slot in thousandths of a vCPU (a slot runs on one thread).
    pub vcpu_millis: u32,
    /// State memory budget of a slot.
    pub memory: ByteSize,
    /// Local disk budget of a slot.
    pub disk: ByteSize,
}

/// Exchange (data-plane channel) settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ExchangeConfig {
    /// Frames buffered per channel: the capacity of local channels and the
    /// credits a receiver grants a remote producer.
    pub channel_credits: u32,
}

pub use eddy_sdk::server::telemetry::LogFormat;

/// Command-line overrides (the last layer); `None` keeps the layered value.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub jobmanagers: Vec<String>,
    pub rpc_addr: Option<String>,
    pub metrics_addr: Option<String>,
    pub slots: Option<u32>,
    pub kpu_memory: Option<ByteSize>,
    pub kpu_vcpu_millis: Option<u32>,
    pub kpu_disk: Option<ByteSize>,
    pub data_dir: Option<PathBuf>,
    pub id: Option<String>,
}

impl Config {
    /// Loads defaults < `file` < `env`, applies `overrides`, then validates.
    pub fn load(
        file: Option<&Path>,
        env: &HashMap<String, String>,
        overrides: Overrides,
    ) -> Result<Config> {
        let mut cfg: Config = eddy_sdk::server::config::load(DEFAULTS, file, env)?;
        cfg.apply(overrides);
        cfg.validate()
    }

    fn apply(&mut self, o: Overrides) {
        if !o.jobmanagers.is_empty() {
            self.jobmanagers = o.jobmanagers;
        }
        macro_rules! set {
            ($($field:ident).+ <- $value:expr) => {
                if let Some(v) = $value {
                    self.$($field).+ = v;
                }
            };
        }
        set!(rpc_addr <- o.rpc_addr);
        set!(metrics_addr <- o.metrics_addr);
        set!(slots <- o.slots);
        set!(kpu.memory <- o.kpu_memory);
        set!(kpu.vcpu_millis <- o.kpu_vcpu_millis);
        set!(kpu.disk <- o.kpu_disk);
        set!(data_dir <- o.data_dir);
        set!(id <- o.id);
    }

    /// Fills generated values and rejects settings the process cannot run with.
    pub fn validate(mut self) -> Result<Config> {
        if self.slots == 0 {
            return Err(Error::Invalid("slots must be at least 1".into()));
        }
        if self.exchange.channel_credits == 0 {
            return Err(Error::Invalid(
                "exchange.channel-credits must be at least 1".into(),
            ));
        }
        if self.kpu.vcpu_millis == 0 {
            return Err(Error::Invalid("kpu.vcpu-millis must be at least 1".into()));
        }
        for (name, addr) in [
            ("rpc-addr", &self.rpc_addr),
            ("metrics-addr", &self.metrics_addr),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(Error::Invalid(format!(
                    "{name} {addr:?} is not an ip:port address"
                )));
            }
        }
        if self.id.trim().is_empty() {
            self.id = generated_id();
        }
        Ok(self)
    }

    pub fn tm_id(&self) -> TaskManagerId {
        TaskManagerId(self.id.clone())
    }
}

/// `tm-<host>-<pid>-<random>`: unique enough without a random-number crate,
/// since the pid and the clock already differ between processes.
fn generated_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mix =
        xxhash_rust::xxh3::xxh3_64(&[nanos.to_le_bytes().as_slice(), &pid.to_le_bytes()].concat());
    format!("tm-{host}-{pid}-{:06x}", mix & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_defaults_only_generates_id_and_keeps_defaults() {
        let cfg = Config::load(None, &HashMap::new(), Overrides::default()).unwrap();
        assert!(cfg.id.starts_with("tm-"), "{}", cfg.id);
        assert_eq!(cfg.slots, 1);
        assert_eq!(cfg.kpu.memory, ByteSize(4 << 30));
        assert_eq!(cfg.kpu.disk, ByteSize(50 << 30));
        assert_eq!(cfg.kpu.vcpu_millis, 1000);
        assert_eq!(cfg.exchange.channel_credits, 8);
        assert_eq!(cfg.log_format, LogFormat::Text);
    }

    #[test]
    fn load_flags_override_env_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tm.toml");
        std::fs::write(
            &file,
            "slots = 2\nid = \"from-file\"\n[kpu]\nmemory = \"1GiB\"\n",
        )
        .unwrap();
        let env = HashMap::from([
            ("EDDY_SLOTS".to_string(), "3".to_string()),
            ("EDDY_KPU__MEMORY".to_string(), "2GiB".to_string()),
            ("EDDY_JOBMANAGERS".to_string(), "a:1,b:2".to_string()),
        ]);
        let flags = Overrides {
            slots: Some(4),
            ..Default::default()
        };
        let cfg = Config::load(Some(&file), &env, flags).unwrap();
        assert_eq!(cfg.slots, 4);
        assert_eq!(cfg.id, "from-file");
        assert_eq!(cfg.kpu.memory, ByteSize(2 << 30));
        assert_eq!(cfg.jobmanagers, vec!["a:1".to_string(), "b:2".to_string()]);
    }

    #[test]
    fn load_unknown_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tm.toml");
        std::fs::write(&file, "slotz = 2\n").unwrap();
        let err = Config::load(Some(&file), &HashMap::new(), Overrides::default()).unwrap_err();
        assert!(
            eddy_sdk::error::error_chain(&err)
                .join(": ")
                .contains("slotz"),
            "{err}"
        );
    }

    #[test]
    fn validate_zero_slots_is_rejected() {
        let flags = Overrides {
            slots: Some(0),
            ..Default::default()
        };
        assert!(matches!(
            Config::load(None, &HashMap::new(), flags),
            Err(Error::Invalid(_))
        ));
    }
}

//! Process plumbing shared by `eddy-jobmanager` and `eddy-taskmanager`:
//! logging, Prometheus metrics, layered config, the ready file, shutdown
//! signals and gRPC connections.

pub mod config;
pub mod metrics;
pub mod ready;
pub mod rpc;
pub mod shutdown;
pub mod telemetry;

//! Eddy's SDK: what a job is and how it is checked, the graph both servers
//! derive from it, the key-group scheme, the operator contract, the one
//! error-code table, the REST client and the `eddy` CLI.
//!
//! Features keep each user's build small: the CLI needs no DataFusion
//! (`plan`), and only the servers need the process plumbing (`server`).

pub mod bytesize;
pub mod checkpoint_layout;
pub mod error;
pub mod graph;
pub mod ids;
pub mod keygroup;
pub mod latency;
pub mod nexmark;
pub mod rest;
pub mod spec;

#[cfg(feature = "plan")]
pub mod operator;
#[cfg(feature = "plan")]
pub mod operator_state;
#[cfg(feature = "plan")]
pub mod plan;

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "storage")]
pub mod storage;

#[cfg(feature = "server")]
pub mod server;

pub use error::{ApiError, ErrorCode, FailureClass};

#[cfg(feature = "cli")]
pub mod cli;

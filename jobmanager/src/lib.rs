//! Eddy's JobManager.
pub mod cluster_state;
pub mod config;
pub mod raft;
pub mod scheduler;
pub mod taskmanagers;

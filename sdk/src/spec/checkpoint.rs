//! The job-level `checkpoint` and `restart` sections of a spec, and their
//! resolution against the JobManager's cluster-wide defaults.
//!
//! A spec keeps every field optional ([`CheckpointSpec`], [`RestartSpec`]): an
//! absent field takes the cluster default when the JobManager resolves the
//! section into non-optional settings ([`CheckpointSettings`],
//! [`RestartSettings`]). Validation happens twice: [`validate_sections`]
//! checks what the spec says on its own (called by `validate_structure`), and
//! `resolve` checks the merged result, because a value the user gave may only
//! conflict with a default (an `initial_backoff` above the default
//! `max_backoff`). Errors name the field as `checkpoint.<field>` or
//! `restart.<field>`.

use super::{HumanDuration, JobSpec};
use crate::error::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};

/// Where keyed state lives while a job runs (and how it is snapshotted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateBackendKind {
    /// On the heap; snapshots copy the whole state (small state).
    #[default]
    Memory,
    /// One RocksDB per slot on local disk; incremental snapshots.
    Rocksdb,
}

impl StateBackendKind {
    /// The name as written in specs and on the wire (`"memory"`, `"rocksdb"`).
    pub fn as_str(self) -> &'static str {
        match self {
            StateBackendKind::Memory => "memory",
            StateBackendKind::Rocksdb => "rocksdb",
        }
    }
}

impl std::fmt::Display for StateBackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `checkpoint:` as written in a spec. Its presence turns checkpoints on for
/// the job; every absent field takes the cluster default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Time between the triggers of two checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// A checkpoint not acknowledged by every subtask within this time fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Least time between the end of one checkpoint and the next trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_pause: Option<HumanDuration>,
    /// Completed checkpoints kept; older ones are deleted (savepoints never are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained: Option<u32>,
    /// Consecutive failed checkpoints tolerated before the job fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerable_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<StateBackendKind>,
    /// A path, a `file://` or an `s3://bucket/prefix` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
}

/// `restart:` as written in a spec: exponential backoff between restarts and
/// a failure-rate limit (Flink's exponential-delay and failure-rate ideas).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    /// Wait before the first restart after a quiet period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_backoff: Option<HumanDuration>,
    /// Upper bound of the wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<HumanDuration>,
    /// Factor applied to the wait after each restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    /// After running this long without a failure the wait is back to
    /// `initial_backoff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_after: Option<HumanDuration>,
    /// More failures than this within `interval` fail the job for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures_per_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
}

/// The JobManager's defaults for `checkpoint:` (its config's `[checkpoint]`
/// table). Only the storage may be unset: then a job must name its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CheckpointDefaults {
    /// Time between the triggers of two checkpoints.
    pub interval: HumanDuration,
    /// A checkpoint not acknowledged by every subtask within this time fails.
    pub timeout: HumanDuration,
    /// Least time between the end of one checkpoint and the next trigger.
    pub min_pause: HumanDuration,
    /// Completed checkpoints kept (savepoints are never deleted).
    pub retained: u32,
    /// Consecutive failed checkpoints tolerated before the job fails.
    pub tolerable_failures: u32,
    /// `memory` or `rocksdb`.
    pub backend: StateBackendKind,
    /// Where checkpoints go when a job names no storage; empty means none
    /// (so `EDDY_CHECKPOINT__STORAGE` can set it over the built-in default).
    #[serde(default, deserialize_with = "empty_is_none")]
    pub storage: Option<String>,
}

fn empty_is_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    Ok(s.filter(|s| !s.trim().is_empty()))
}

/// A job's checkpoint settings, every field decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSettings {
    pub interval: HumanDuration,
    pub timeout: HumanDuration,
    pub min_pause: HumanDuration,
    pub retained: u32,
    pub tolerable_failures: u32,
    pub backend: StateBackendKind,
    pub storage: String,
}

/// A job's restart settings, every field decided; also the JobManager's
/// config `[restart]` table (the defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RestartSettings {
    /// Wait before the first restart after a quiet period.
    pub initial_backoff: HumanDuration,
    /// Upper bound of the wait.
    pub max_backoff: HumanDuration,
    /// Factor applied to the wait after each restart.
    pub multiplier: f64,
    /// A job running this long without failure is back to `initial-backoff`.
    pub reset_after: HumanDuration,
    /// More failures than this within `interval` fail the job for good.
    pub max_failures_per_interval: u32,
    /// The window of `max-failures-per-interval`.
    pub interval: HumanDuration,
}

fn invalid(section: &str, field: &str, msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidSpec, msg).with_field(format!("{section}.{field}"))
}

fn positive(section: &str, field: &str, d: Option<HumanDuration>) -> Result<(), ApiError> {
    match d {
        Some(d) if d.0.is_zero() => Err(invalid(
            section,
            field,
            format!("{section}.{field} must be greater than 0"),
        )),
        _ => Ok(()),
    }
}

/// Checks a checkpoint storage location as `CheckpointStorage::open` will
/// read it: a path, `file://…`, `s3://bucket[/prefix]` (or `s3a://`), or
/// `memory://` (one process only: for tests).
pub fn validate_storage(url: &str) -> Result<(), String> {
    let url = url.trim();
    if url.is_empty() {
        return Err("the storage location is empty".into());
    }
    if let Some(rest) = url.strip_prefix("s3://").or(url.strip_prefix("s3a://")) {
        let bucket = rest.split('/').next().unwrap_or("");
        if bucket.is_empty() {
            return Err(format!("{url:?} names no bucket; write s3://bucket/prefix"));
        }
        return Ok(());
    }
    if url == "memory://" {
        return Ok(());
    }
    if let Some(path) = url.strip_prefix("file://") {
        if path.is_empty() {
            return Err(format!("{url:?} names no directory"));
        }
        return Ok(());
    }
    if url.contains("://") {
        return Err(format!(
            "unsupported storage {url:?}; write a path, file:///dir or s3://bucket/prefix"
        ));
    }
    Ok(())
}

impl CheckpointSpec {
    /// Checks every field the spec sets, on its own.
    pub fn validate(&self) -> Result<(), ApiError> {
        const S: &str = "checkpoint";
        positive(S, "interval", self.interval)?;
        positive(S, "timeout", self.timeout)?;
        if self.retained == Some(0) {
            return Err(invalid(
                S,
                "retained",
                "checkpoint.retained must be at least 1: the latest completed checkpoint is what a restart restores",
            ));
        }
        if let Some(storage) = &self.storage {
            validate_storage(storage).map_err(|e| invalid(S, "storage", e))?;
        }
        Ok(())
    }

    /// Merges with the cluster defaults and checks the result.
    pub fn resolve(&self, defaults: &CheckpointDefaults) -> Result<CheckpointSettings, ApiError> {
        self.validate()?;
        let storage = self
            .storage
            .clone()
            .or_else(|| defaults.storage.clone())
            .ok_or_else(|| {
                invalid(
                    "checkpoint",
                    "storage",
                    "checkpoint.storage is required: the cluster has no default checkpoint storage",
                )
            })?;
        let settings = CheckpointSettings {
            interval: self.interval.unwrap_or(defaults.interval),
            timeout: self.timeout.unwrap_or(defaults.timeout),
            min_pause: self.min_pause.unwrap_or(defaults.min_pause),
            retained: self.retained.unwrap_or(defaults.retained),
            tolerable_failures: self
                .tolerable_failures
                .unwrap_or(defaults.tolerable_failures),
            backend: self.backend.unwrap_or(defaults.backend),
            storage,
        };
        // The defaults are validated at JobManager start; this guards a
        // default that slipped through.
        let check = CheckpointSpec {
            interval: Some(settings.interval),
            timeout: Some(settings.timeout),
            retained: Some(settings.retained),
            storage: Some(settings.storage.clone()),
            ..CheckpointSpec::default()
        };
        check.validate()?;
        Ok(settings)
    }
}

impl CheckpointDefaults {
    /// Checks the defaults as a spec would be checked (for config loading).
    pub fn validate(&self) -> Result<(), ApiError> {
        CheckpointSpec {
            interval: Some(self.interval),
            timeout: Some(self.timeout),
            retained: Some(self.retained),
            storage: self.storage.clone(),
            ..CheckpointSpec::default()
        }
        .validate()
    }
}

impl RestartSpec {
    /// Checks every field the spec sets, and their relations when both are set.
    pub fn validate(&self) -> Result<(), ApiError> {
        const S: &str = "restart";
        positive(S, "initial_backoff", self.initial_backoff)?;
        positive(S, "max_backoff", self.max_backoff)?;
        positive(S, "reset_after", self.reset_after)?;
        positive(S, "interval", self.interval)?;
        if let Some(m) = self.multiplier
            && !(m.is_finite() && m >= 1.0)
        {
            return Err(invalid(
                S,
                "multiplier",
                format!("restart.multiplier must be a number >= 1, got {m}"),
            ));
        }
        if self.max_failures_per_interval == Some(0) {
            return Err(invalid(
                S,
                "max_failures_per_interval",
                "restart.max_failures_per_interval must be at least 1",
            ));
        }
        if let (Some(initial), Some(max)) = (self.initial_backoff, self.max_backoff)
            && max < initial
        {
            return Err(invalid(
                S,
                "max_backoff",
                format!("restart.max_backoff ({max}) must be at least initial_backoff ({initial})"),
            ));
        }
        Ok(())
    }

    /// Merges `spec` (absent: all defaults) with the cluster defaults and
    /// checks the result.
    pub fn resolve(
        spec: Option<&RestartSpec>,
        defaults: &RestartSettings,
    ) -> Result<RestartSettings, ApiError> {
        let empty = RestartSpec::default();
        let spec = spec.unwrap_or(&empty);
        spec.validate()?;
        let settings = RestartSettings {
            initial_backoff: spec.initial_backoff.unwrap_or(defaults.initial_backoff),
            max_backoff: spec.max_backoff.unwrap_or(defaults.max_backoff),
            multiplier: spec.multiplier.unwrap_or(defaults.multiplier),
            reset_after: spec.reset_after.unwrap_or(defaults.reset_after),
            max_failures_per_interval: spec
                .max_failures_per_interval
                .unwrap_or(defaults.max_failures_per_interval),
            interval: spec.interval.unwrap_or(defaults.interval),
        };
        settings.as_spec().validate().map_err(|e| {
            let message = format!("{} (with the cluster defaults filled in)", e.message);
            ApiError { message, ..e }
        })?;
        Ok(settings)
    }
}

impl RestartSettings {
    /// Every field as set, to reuse the spec's checks.
    fn as_spec(&self) -> RestartSpec {
        RestartSpec {
            initial_backoff: Some(self.initial_backoff),
            max_backoff: Some(self.max_backoff),
            multiplier: Some(self.multiplier),
            reset_after: Some(self.reset_after),
            max_failures_per_interval: Some(self.max_failures_per_interval),
            interval: Some(self.interval),
        }
    }

    /// Checks the defaults as a spec would be checked (for config loading).
    pub fn validate(&self) -> Result<(), ApiError> {
        self.as_spec().validate()
    }
}

/// Checks the job-level sections a spec sets (called by `validate_structure`).
pub fn validate_sections(spec: &JobSpec) -> Result<(), ApiError> {
    if let Some(c) = &spec.checkpoint {
        c.validate()?;
    }
    if let Some(r) = &spec.restart {
        r.validate()?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;

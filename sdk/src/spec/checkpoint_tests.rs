#![allow(clippy::unwrap_used)]

use super::*;
use crate::spec::{parse_json, parse_yaml_or_json, validate_structure};

const NODES: &str = "nodes:\n  - {id: gen, kind: datagen, fields: [{name: id, type: int64, gen: sequence}]}\n  - {id: out, kind: print, input: gen}\n";

fn spec_with(sections: &str) -> Result<JobSpec, ApiError> {
    let spec = parse_yaml_or_json(&format!("name: x\n{sections}\n{NODES}"))?;
    validate_structure(&spec, None)?;
    Ok(spec)
}

fn field_of(sections: &str) -> String {
    let err = spec_with(sections).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidSpec, "{}", err.message);
    assert!(err.node.is_none(), "a job-level section names no node");
    err.field.unwrap()
}

fn defaults() -> CheckpointDefaults {
    CheckpointDefaults {
        interval: HumanDuration::from_millis(10_000),
        timeout: HumanDuration::from_millis(60_000),
        min_pause: HumanDuration::default(),
        retained: 3,
        tolerable_failures: 0,
        backend: StateBackendKind::Memory,
        storage: Some("/var/eddy/checkpoints".into()),
    }
}

fn restart_defaults() -> RestartSettings {
    RestartSettings {
        initial_backoff: HumanDuration::from_millis(1_000),
        max_backoff: HumanDuration::from_millis(60_000),
        multiplier: 2.0,
        reset_after: HumanDuration::from_millis(600_000),
        max_failures_per_interval: 3,
        interval: HumanDuration::from_millis(300_000),
    }
}

#[test]
fn sections_parse_and_roundtrip_through_json() {
    let spec = spec_with(
        "checkpoint: {interval: 5s, timeout: 1m, min_pause: 500ms, retained: 2, tolerable_failures: 1, backend: rocksdb, storage: \"s3://bucket/chk\"}\nrestart: {initial_backoff: 2s, max_backoff: 30s, multiplier: 1.5, reset_after: 10m, max_failures_per_interval: 5, interval: 5m}",
    )
    .unwrap();
    let c = spec.checkpoint.clone().unwrap();
    assert_eq!(c.interval, Some(HumanDuration::from_millis(5_000)));
    assert_eq!(c.backend, Some(StateBackendKind::Rocksdb));
    assert_eq!(c.storage.as_deref(), Some("s3://bucket/chk"));
    assert_eq!(spec.restart.as_ref().unwrap().multiplier, Some(1.5));
    assert_eq!(parse_json(&spec.to_json()).unwrap(), spec);
}

#[test]
fn sections_absent_are_none_and_not_serialized() {
    let spec = spec_with("").unwrap();
    assert!(spec.checkpoint.is_none() && spec.restart.is_none());
    assert!(!spec.to_json().contains("checkpoint"));
}

#[test]
fn checkpoint_zero_interval_is_rejected() {
    assert_eq!(
        field_of("checkpoint: {interval: 0s}"),
        "checkpoint.interval"
    );
}

#[test]
fn checkpoint_zero_timeout_is_rejected() {
    assert_eq!(field_of("checkpoint: {timeout: 0ms}"), "checkpoint.timeout");
}

#[test]
fn checkpoint_zero_retained_is_rejected() {
    assert_eq!(field_of("checkpoint: {retained: 0}"), "checkpoint.retained");
}

#[test]
fn checkpoint_unknown_backend_is_rejected_naming_the_choices() {
    let err = spec_with("checkpoint: {backend: disk}").unwrap_err();
    assert_eq!(err.field.as_deref(), Some("checkpoint.backend"));
    assert!(err.message.contains("rocksdb"), "{}", err.message);
}

#[test]
fn checkpoint_bad_duration_names_the_field() {
    let err = spec_with("checkpoint: {interval: 10s, min_pause: soon}").unwrap_err();
    assert_eq!(err.field.as_deref(), Some("checkpoint.min_pause"));
    assert!(err.message.contains("soon"), "{}", err.message);
}

#[test]
fn checkpoint_negative_retained_is_rejected() {
    assert_eq!(
        field_of("checkpoint: {retained: -1}"),
        "checkpoint.retained"
    );
}

#[test]
fn checkpoint_unknown_field_is_rejected() {
    assert_eq!(
        field_of("checkpoint: {intervall: 1s}"),
        "checkpoint.intervall"
    );
}

#[test]
fn checkpoint_not_a_mapping_is_rejected() {
    assert_eq!(field_of("checkpoint: 10s"), "checkpoint");
}

#[test]
fn checkpoint_bad_storage_is_rejected() {
    for bad in [
        "\"\"",
        "\"gs://b/x\"",
        "\"s3://\"",
        "\"s3:///x\"",
        "\"file://\"",
    ] {
        assert_eq!(
            field_of(&format!("checkpoint: {{storage: {bad}}}")),
            "checkpoint.storage",
            "{bad}"
        );
    }
    for good in [
        "/tmp/chk",
        "rel/dir",
        "file:///tmp/chk",
        "s3://b",
        "s3a://b/p",
    ] {
        assert!(validate_storage(good).is_ok(), "{good}");
    }
}

#[test]
fn restart_multiplier_below_one_is_rejected() {
    assert_eq!(field_of("restart: {multiplier: 0.5}"), "restart.multiplier");
}

#[test]
fn restart_max_backoff_below_initial_is_rejected() {
    assert_eq!(
        field_of("restart: {initial_backoff: 10s, max_backoff: 1s}"),
        "restart.max_backoff"
    );
}

#[test]
fn restart_zero_durations_and_failures_are_rejected() {
    assert_eq!(
        field_of("restart: {initial_backoff: 0s}"),
        "restart.initial_backoff"
    );
    assert_eq!(
        field_of("restart: {reset_after: 0s}"),
        "restart.reset_after"
    );
    assert_eq!(field_of("restart: {interval: 0s}"), "restart.interval");
    assert_eq!(
        field_of("restart: {max_failures_per_interval: 0}"),
        "restart.max_failures_per_interval"
    );
}

#[test]
fn resolve_fills_absent_fields_from_defaults() {
    let spec = CheckpointSpec {
        interval: Some(HumanDuration::from_millis(1_000)),
        backend: Some(StateBackendKind::Rocksdb),
        ..CheckpointSpec::default()
    };
    let s = spec.resolve(&defaults()).unwrap();
    assert_eq!(s.interval, HumanDuration::from_millis(1_000));
    assert_eq!(s.timeout, HumanDuration::from_millis(60_000));
    assert_eq!(s.retained, 3);
    assert_eq!(s.backend, StateBackendKind::Rocksdb);
    assert_eq!(s.storage, "/var/eddy/checkpoints");
}

#[test]
fn resolve_without_any_storage_is_rejected() {
    let mut d = defaults();
    d.storage = None;
    let err = CheckpointSpec::default().resolve(&d).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("checkpoint.storage"));
    let own = CheckpointSpec {
        storage: Some("/own".into()),
        ..CheckpointSpec::default()
    };
    assert_eq!(own.resolve(&d).unwrap().storage, "/own");
}

#[test]
fn resolve_restart_absent_is_the_defaults() {
    assert_eq!(
        RestartSpec::resolve(None, &restart_defaults()).unwrap(),
        restart_defaults()
    );
}

#[test]
fn resolve_restart_conflict_with_a_default_is_rejected() {
    // 2m is fine alone but above the default max_backoff of 60s.
    let spec = RestartSpec {
        initial_backoff: Some(HumanDuration::from_millis(120_000)),
        ..RestartSpec::default()
    };
    assert!(spec.validate().is_ok());
    let err = RestartSpec::resolve(Some(&spec), &restart_defaults()).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("restart.max_backoff"));
    assert!(err.message.contains("cluster defaults"), "{}", err.message);
}

#[test]
fn defaults_validate_like_specs() {
    assert!(defaults().validate().is_ok());
    assert!(restart_defaults().validate().is_ok());
    let mut d = defaults();
    d.retained = 0;
    assert!(d.validate().is_err());
    let mut r = restart_defaults();
    r.multiplier = f64::NAN;
    assert!(r.validate().is_err());
}

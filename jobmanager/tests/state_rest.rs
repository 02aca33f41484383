//! The REST routes about job state, in-process: checkpoint statistics,
//! exceptions, savepoint and stop requests, and `restore_from` checks — each
//! bad request answers with a code, a message and, where it applies, a field.

mod harness;

use harness::{FakeTm, Rest, start_jm};

const NODES: &str = r#"[{"id": "gen", "kind": "datagen", "fields": [{"name": "id", "type": "int64", "gen": "sequence"}]}, {"id": "out", "kind": "print", "input": "gen"}]"#;

fn checkpointed(storage: &std::path::Path) -> String {
    format!(
        r#"{{"name": "chk", "checkpoint": {{"interval": "5s", "storage": "{}"}}, "nodes": {NODES}}}"#,
        storage.display()
    )
}

fn code(answer: &serde_json::Value) -> &str {
    answer["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_routes_of_unknown_jobs_and_requests_answer_404() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_jm(dir.path()).await;
    let rest = Rest::new(&jm);
    for path in [
        "/v1/jobs/nope/checkpoints",
        "/v1/jobs/nope/exceptions",
        "/v1/jobs/nope/savepoints/sp-1",
    ] {
        let (status, answer) = rest.get(path).await;
        assert_eq!(
            (status, code(&answer)),
            (404, "not_found"),
            "{path}: {answer}"
        );
    }
    for (path, body) in [
        ("/v1/jobs/nope/savepoints", "{}"),
        ("/v1/jobs/nope/stop", r#"{"savepoint": true}"#),
    ] {
        let (status, answer) = rest.post(path, body, "application/json").await;
        assert_eq!(
            (status, code(&answer)),
            (404, "not_found"),
            "{path}: {answer}"
        );
    }
    jm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_requests_check_body_and_job_state() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_jm(dir.path()).await;
    let rest = Rest::new(&jm);
    let _tm = FakeTm::start("tm-1", 1, &jm.rpc_addr().to_string()).await;
    rest.wait_slots(1).await;
    let (status, answer) = rest
        .post(
            "/v1/jobs",
            &checkpointed(&dir.path().join("chk")),
            "application/json",
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let id = answer["job_id"].as_str().unwrap().to_string();
    // A new job has no failures and no checkpoints yet.
    let (status, answer) = rest.get(&format!("/v1/jobs/{id}/exceptions")).await;
    assert_eq!(
        (status, answer["exceptions"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, answer) = rest.get(&format!("/v1/jobs/{id}/checkpoints")).await;
    assert_eq!(
        (status, answer["counts"]["completed"].as_u64()),
        (200, Some(0)),
        "{answer}"
    );

    let (status, _) = rest
        .post(&format!("/v1/jobs/{id}/cancel"), "", "application/json")
        .await;
    assert_eq!(status, 202);
    let cases = [
        ("stop", r#"{"savepoint": false}"#, 400, "bad_request"),
        ("stop", r#"{"savepoint": "yes"}"#, 400, "bad_request"),
        ("savepoints", r#"{"target": "/x"}"#, 400, "bad_request"),
        (
            "savepoints",
            r#"{"target_directory": " "}"#,
            400,
            "bad_request",
        ),
        // Cancelled above: no longer RUNNING.
        ("savepoints", "", 409, "conflict"),
        ("stop", r#"{"savepoint": true}"#, 409, "conflict"),
    ];
    for (route, body, want_status, want_code) in cases {
        let (status, answer) = rest
            .post(&format!("/v1/jobs/{id}/{route}"), body, "application/json")
            .await;
        assert_eq!(
            (status, code(&answer)),
            (want_status, want_code),
            "{route} {body}: {answer}"
        );
        assert!(!answer["error"]["message"].as_str().unwrap_or("").is_empty());
    }
    jm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_from_a_location_without_metadata_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_jm(dir.path()).await;
    let rest = Rest::new(&jm);
    let spec = checkpointed(&dir.path().join("chk"));
    let missing = dir.path().join("no-such-savepoint");
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("_metadata"), b"not metadata").unwrap();
    for location in [&missing, &corrupt] {
        let (status, answer) = rest
            .post(
                &format!("/v1/jobs?restore_from={}", location.display()),
                &spec,
                "application/json",
            )
            .await;
        assert_eq!((status, code(&answer)), (400, "bad_request"), "{answer}");
        assert_eq!(answer["error"]["field"], "restore_from", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&location.display().to_string()),
            "{answer}"
        );
    }
    // Restoring needs the checkpoint section (backend and storage).
    let plain = format!(r#"{{"name": "p", "nodes": {NODES}}}"#);
    let (status, answer) = rest
        .post(
            &format!("/v1/jobs?restore_from={}", missing.display()),
            &plain,
            "application/json",
        )
        .await;
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (400, Some("checkpoint")),
        "{answer}"
    );
    let (status, answer) = rest
        .post("/v1/jobs?restore=x", &spec, "application/json")
        .await;
    assert_eq!(
        (status, code(&answer)),
        (400, "bad_request"),
        "unknown query parameter: {answer}"
    );
    jm.shutdown().await;
}

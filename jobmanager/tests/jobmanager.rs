//! The JobManager in-process: REST validation errors, the job lifecycle with
//! fake TaskManagers, TaskManager loss, cancellation, waiting for slots, and
//! a restart from the same data directory.

mod harness;

use eddy_proto::v1 as pb;
use harness::{FakeTm, Rest, job, start_jm, wait_for};

const GEN: &str = r#"{"id": "gen", "kind": "datagen", "fields": [{"name": "id", "type": "int64", "gen": "sequence"}]}"#;

fn spec(nodes: &[&str], parallelism: u32) -> String {
    format!(
        r#"{{"name": "bad", "parallelism": {parallelism}, "nodes": [{}]}}"#,
        nodes.join(",")
    )
}

async fn assert_invalid(rest: &Rest, body: &str, code: &str, node: Option<&str>) {
    let (status, answer) = rest.post("/v1/jobs", body, "application/json").await;
    assert_eq!(status, 400, "{answer}");
    let error = &answer["error"];
    assert_eq!(error["code"], code, "{answer}");
    assert!(
        !error["message"].as_str().unwrap_or("").is_empty(),
        "{answer}"
    );
    if let Some(node) = node {
        assert_eq!(error["node"], node, "{answer}");
    }
}

/// The body has every required property of the documented schema and no
/// undocumented one.
fn assert_matches_schema(doc: &serde_json::Value, schema: &str, body: &serde_json::Value) {
    let schema = &doc["components"]["schemas"][schema];
    let props = schema["properties"]
        .as_object()
        .expect("documented schema has properties");
    let body = body.as_object().expect("body is an object");
    for key in body.keys() {
        assert!(props.contains_key(key), "{key} is not documented");
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        assert!(
            body.contains_key(required.as_str().expect("required entries are strings")),
            "{required} is documented as required but missing"
        );
    }
}

/// Malformed specs answer 400 with a code, a message and the node at fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_malformed_specs_answer_400_with_code_message_node() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_jm(dir.path()).await;
    let _tm = FakeTm::start("tm-1", 2, &jm.rpc_addr().to_string()).await;
    let rest = Rest::new(&jm);
    rest.wait_slots(2).await;

    assert_invalid(
        &rest,
        &spec(&[GEN, r#"{"id": "x", "kind": "nope", "input": "gen"}"#], 1),
        "invalid_spec",
        Some("x"),
    )
    .await;
    assert_invalid(
        &rest,
        &spec(&[GEN, r#"{"id": "out", "kind": "print"}"#], 1),
        "invalid_spec",
        Some("out"),
    )
    .await;
    let cycle = [
        GEN,
        r#"{"id": "a", "kind": "filter", "input": "b", "predicate": "true"}"#,
        r#"{"id": "b", "kind": "filter", "input": "a", "predicate": "true"}"#,
    ];
    assert_invalid(&rest, &spec(&cycle, 1), "invalid_spec", None).await;
    assert_invalid(
        &rest,
        &spec(
            &[GEN, r#"{"id": "out", "kind": "print", "input": "gen"}"#],
            0,
        ),
        "invalid_spec",
        None,
    )
    .await;
    assert_invalid(
        &rest,
        &spec(
            &[GEN, r#"{"id": "out", "kind": "print", "input": "gen"}"#],
            3,
        ),
        "insufficient_slots",
        None,
    )
    .await;
    // Job-level sections name their field.
    let print = r#"{"id": "out", "kind": "print", "input": "gen"}"#;
    for (section, field) in [
        (r#""checkpoint": {"interval": "0s"}"#, "checkpoint.interval"),
        (r#""checkpoint": {"backend": "disk"}"#, "checkpoint.backend"),
        (
            r#""restart": {"initial_backoff": "1m", "max_backoff": "1s"}"#,
            "restart.max_backoff",
        ),
    ] {
        let body = format!(r#"{{"name": "bad", {section}, "nodes": [{GEN}, {print}]}}"#);
        let (status, answer) = rest.post("/v1/jobs", &body, "application/json").await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_spec", "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    // A checkpoint section needs a storage: the job's own or the cluster's
    // default (this cluster has none).
    let body = format!(
        r#"{{"name": "chk", "checkpoint": {{"interval": "5s"}}, "nodes": [{GEN}, {print}]}}"#
    );
    let (status, answer) = rest.post("/v1/jobs", &body, "application/json").await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "checkpoint.storage", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no default checkpoint storage"),
        "{answer}"
    );
    // Not a spec at all.
    let (status, answer) = rest.post("/v1/jobs", "{not json", "application/json").await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    // YAML is accepted with a YAML content type.
    let yaml = "name: y\nnodes:\n  - {id: gen, kind: datagen, fields: [{name: id, type: int64, gen: sequence}]}\n  - {id: out, kind: print, input: gen}\n";
    let (status, answer) = rest.post("/v1/jobs", yaml, "application/yaml").await;
    assert_eq!(status, 201, "{answer}");
    jm.shutdown().await;
}

/// Column and SQL errors are caught by the schema checks of `eddy_sdk::plan::validate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_bad_sql_and_unknown_column_answer_400() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_jm(dir.path()).await;
    let _tm = FakeTm::start("tm-1", 2, &jm.rpc_addr().to_string()).await;
    let rest = Rest::new(&jm);
    rest.wait_slots(2).await;
    let bad_sql = spec(
        &[
            GEN,
            r#"{"id": "f", "kind": "filter", "input": "gen", "predicate": "id >>> 3"}"#,
            r#"{"id": "out", "kind": "print", "input": "f"}"#,
        ],
        1,
    );
    assert_invalid(&rest, &bad_sql, "invalid_spec", Some("f")).await;
    let unknown_col = spec(
        &[
            GEN,
            r#"{"id": "f", "kind": "filter", "input": "gen", "predicate": "nope > 3"}"#,
            r#"{"id": "out", "kind": "print", "input": "f"}"#,
        ],
        1,
    );
    assert_invalid(&rest, &unknown_col, "invalid_spec", Some("f")).await;
    jm.shutdown().await;
}

/// Errors of the HTTP layer itself keep the error shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_unknown_route_wrong_method_big_body_keep_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_jm(dir.path()).await;
    let rest = Rest::new(&jm);
    let (status, body) = rest.get("/v1/nope").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = rest.get("/v1/jobs/unknown").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = rest
        .post("/v1/jobs/unknown/cancel", "", "application/json")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let r = rest
        .http
        .delete(format!("{}/v1/jobs", rest.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"]["message"].is_string());
    let big = "x".repeat(5 * 1024 * 1024);
    let (status, body) = rest.post("/v1/jobs", &big, "application/json").await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"]["code"].is_string());
    let (status, doc) = rest.get("/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/overview",
        "/v1/taskmanagers",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/cancel",
        "/v1/jobs/{id}/stop",
        "/v1/jobs/{id}/checkpoints",
        "/v1/jobs/{id}/exceptions",
        "/v1/jobs/{id}/savepoints",
        "/v1/jobs/{id}/savepoints/{request_id}",
        "/v1/openapi.json",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    let overview = rest.get("/v1/overview").await.1;
    assert_matches_schema(&doc, "Overview", &overview);
    let metrics = rest
        .http
        .get(format!("{}/metrics", rest.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("eddy_jobmanager_rest_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("eddy_jobmanager_raft_term"), "{metrics}");
    jm.shutdown().await;
}

/// Submit -> scheduled over two TaskManagers -> deployed -> RUNNING ->
/// every subtask FINISHED -> job FINISHED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_spread_over_two_tms_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_jm(dir.path()).await;
    let rpc = jm.rpc_addr().to_string();
    let a = FakeTm::start("tm-a", 2, &rpc).await;
    let b = FakeTm::start("tm-b", 2, &rpc).await;
    let rest = Rest::new(&jm);
    rest.wait_slots(4).await;

    let id = rest.submit(&job(2)).await;
    rest.wait_state(&id, "RUNNING").await;
    assert_eq!(a.deployed_jobs(), vec![id.clone()]);
    assert_eq!(b.deployed_jobs(), vec![id.clone()]);
    let deploy = a.deploys.lock().unwrap()[0].clone();
    assert_eq!(deploy.placements.len(), 2, "one vertex of parallelism 2");
    assert_eq!(deploy.deploy.len(), 1, "one slot on each TaskManager");
    assert!(deploy.placements.iter().all(|p| !p.rpc_addr.is_empty()));

    wait_for("metrics in detail", || async {
        let detail = rest.get(&format!("/v1/jobs/{id}")).await.1;
        detail["vertices"][0]["subtasks"][0]["state"] == "RUNNING"
            && detail["vertices"][0]["records_in"] == 20
    })
    .await;
    let detail = rest.get(&format!("/v1/jobs/{id}")).await.1;
    let doc = rest.get("/v1/openapi.json").await.1;
    assert_matches_schema(&doc, "JobDetail", &detail);
    assert_matches_schema(&doc, "VertexInfo", &detail["vertices"][0]);
    assert_matches_schema(&doc, "SubtaskInfo", &detail["vertices"][0]["subtasks"][0]);
    assert_matches_schema(
        &doc,
        "TaskManagerList",
        &rest.get("/v1/taskmanagers").await.1,
    );
    assert_matches_schema(&doc, "JobList", &rest.get("/v1/jobs").await.1);
    assert_eq!(detail["vertices"][0]["backpressure"], 0.3);
    assert!(detail["start_time"].is_string());
    let overview = rest.get("/v1/overview").await.1;
    assert_eq!(
        (
            overview["slots_free"].as_u64(),
            overview["jobs_running"].as_u64()
        ),
        (Some(2), Some(1))
    );

    a.set_job_state(&id, pb::TaskState::Finished, None);
    b.set_job_state(&id, pb::TaskState::Finished, None);
    rest.wait_state(&id, "FINISHED").await;
    let detail = rest.get(&format!("/v1/jobs/{id}")).await.1;
    assert!(detail["end_time"].is_string());
    let (status, body) = rest
        .post(&format!("/v1/jobs/{id}/cancel"), "", "application/json")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    jm.shutdown().await;
}

/// A failed subtask fails the job with its chain and class, and the job's
/// other tasks are cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_subtask_fails_job_with_chain_and_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_jm(dir.path()).await;
    let tm = FakeTm::start("tm-a", 2, &jm.rpc_addr().to_string()).await;
    let rest = Rest::new(&jm);
    rest.wait_slots(2).await;
    let id = rest.submit(&job(1)).await;
    rest.wait_state(&id, "RUNNING").await;
    tm.set_job_state(
        &id,
        pb::TaskState::Failed,
        Some(("operator failed <- division by zero", "bad_data")),
    );
    rest.wait_state(&id, "FAILED").await;
    let failure = rest.get(&format!("/v1/jobs/{id}")).await.1["failure"].clone();
    assert_eq!(failure["class"], "bad_data");
    assert_eq!(
        failure["chain"],
        serde_json::json!(["operator failed", "division by zero"])
    );
    assert_eq!(failure["taskmanager"], "tm-a");
    wait_for("cancel sent", || async {
        tm.cancelled_jobs().contains(&id)
    })
    .await;
    jm.shutdown().await;
}

/// A TaskManager that stops heartbeating is declared lost and its job fails
/// (infrastructure); once it comes back it must register again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_tm_fails_its_job_as_infrastructure() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_jm(dir.path()).await;
    let tm = FakeTm::start("tm-a", 2, &jm.rpc_addr().to_string()).await;
    let rest = Rest::new(&jm);
    rest.wait_slots(2).await;
    let id = rest.submit(&job(1)).await;
    rest.wait_state(&id, "RUNNING").await;
    tm.silent.store(true, std::sync::atomic::Ordering::SeqCst);
    rest.wait_state(&id, "FAILED").await;
    let failure = rest.get(&format!("/v1/jobs/{id}")).await.1["failure"].clone();
    assert_eq!(failure["class"], "infrastructure");
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .starts_with("taskmanager tm-a lost: no heartbeat for"),
        "{failure}"
    );
    let tms = rest.get("/v1/taskmanagers").await.1;
    assert_eq!(tms["taskmanagers"][0]["state"], "LOST");
    tm.silent.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_for("re-registration", || async {
        rest.get("/v1/taskmanagers").await.1["taskmanagers"][0]["state"] == "ALIVE"
    })
    .await;
    jm.shutdown().await;
}

/// Cancel: RUNNING -> CANCELLING -> CancelJob sent -> tasks CANCELED -> CANCELED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_running_job_ends_canceled() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_jm(dir.path()).await;
    let tm = FakeTm::start("tm-a", 2, &jm.rpc_addr().to_string()).await;
    let rest = Rest::new(&jm);
    rest.wait_slots(2).await;
    let id = rest.submit(&job(2)).await;
    rest.wait_state(&id, "RUNNING").await;
    let (status, _) = rest
        .post(&format!("/v1/jobs/{id}/cancel"), "", "application/json")
        .await;
    assert_eq!(status, 202);
    rest.wait_state(&id, "CANCELED").await;
    assert!(tm.cancelled_jobs().contains(&id));
    jm.shutdown().await;
}

/// A job that fits the cluster but not its free slots waits, says why, and
/// runs once the slots free up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_waits_for_busy_slots_then_runs() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_jm(dir.path()).await;
    let _tm = FakeTm::start("tm-a", 2, &jm.rpc_addr().to_string()).await;
    let rest = Rest::new(&jm);
    rest.wait_slots(2).await;
    let first = rest.submit(&job(2)).await;
    rest.wait_state(&first, "RUNNING").await;
    let second = rest.submit(&job(2)).await;
    wait_for("waiting message", || async {
        rest.get(&format!("/v1/jobs/{second}")).await.1["status_message"]
            == "waiting for 2 free slots (0 free)"
    })
    .await;
    assert_eq!(rest.job_state(&second).await, "CREATED");
    rest.post(&format!("/v1/jobs/{first}/cancel"), "", "application/json")
        .await;
    rest.wait_state(&first, "CANCELED").await;
    rest.wait_state(&second, "RUNNING").await;
    jm.shutdown().await;
}

/// A deploy RPC failure fails the job with the error chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_failure_fails_job_with_chain() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_jm(dir.path()).await;
    let tm = FakeTm::start("tm-a", 2, &jm.rpc_addr().to_string()).await;
    *tm.fail_deploy.lock().unwrap() = Some("slot 0 is broken".into());
    let rest = Rest::new(&jm);
    rest.wait_slots(2).await;
    let id = rest.submit(&job(1)).await;
    rest.wait_state(&id, "FAILED").await;
    let failure = rest.get(&format!("/v1/jobs/{id}")).await.1["failure"].clone();
    assert_eq!(failure["class"], "infrastructure");
    let chain = failure["chain"].to_string();
    assert!(
        chain.contains("tm-a") && chain.contains("slot 0 is broken"),
        "{chain}"
    );
    jm.shutdown().await;
}

/// Jobs are durable: a restart from the same data dir lists them again, and a
/// running job's TaskManager re-attaches with its tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_same_data_dir_keeps_jobs_and_reattaches_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_jm(dir.path()).await;
    let tm = FakeTm::start("tm-a", 2, &jm.rpc_addr().to_string()).await;
    let rest = Rest::new(&jm);
    rest.wait_slots(2).await;
    let running = rest.submit(&job(1)).await;
    rest.wait_state(&running, "RUNNING").await;
    let canceled = rest.submit(&job(1)).await;
    rest.wait_state(&canceled, "RUNNING").await;
    rest.post(
        &format!("/v1/jobs/{canceled}/cancel"),
        "",
        "application/json",
    )
    .await;
    rest.wait_state(&canceled, "CANCELED").await;
    tm.stop();
    jm.shutdown().await;

    // Same data dir, new ports: the TaskManager comes back with its tasks.
    let jm = start_jm(dir.path()).await;
    let rest = Rest::new(&jm);
    let jobs = rest.get("/v1/jobs").await.1;
    let ids: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&running.as_str()) && ids.contains(&canceled.as_str()),
        "{jobs}"
    );
    assert_eq!(rest.job_state(&canceled).await, "CANCELED");
    assert_eq!(rest.job_state(&running).await, "RUNNING");
    let tasks = tm.tasks.lock().unwrap().clone();
    let back = FakeTm::start("tm-a", 2, &jm.rpc_addr().to_string()).await;
    *back.tasks.lock().unwrap() = tasks;
    back.register().await;
    // Past the re-registration grace period the job still runs.
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    assert_eq!(rest.job_state(&running).await, "RUNNING");
    jm.shutdown().await;
}

/// After a restart, a RUNNING job whose TaskManager never comes back fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_tm_fails_job_did_not_reregister() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_jm(dir.path()).await;
    let tm = FakeTm::start("tm-a", 2, &jm.rpc_addr().to_string()).await;
    let rest = Rest::new(&jm);
    rest.wait_slots(2).await;
    let id = rest.submit(&job(1)).await;
    rest.wait_state(&id, "RUNNING").await;
    tm.stop();
    jm.shutdown().await;
    let jm = start_jm(dir.path()).await;
    let rest = Rest::new(&jm);
    rest.wait_state(&id, "FAILED").await;
    let failure = rest.get(&format!("/v1/jobs/{id}")).await.1["failure"].clone();
    assert_eq!(failure["message"], "taskmanager tm-a did not re-register");
    jm.shutdown().await;
}

/// Tasks a TaskManager reports for a job the cluster does not know (or that
/// has ended) are cancelled there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_tasks_of_unknown_job_get_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_jm(dir.path()).await;
    let tm = FakeTm::start("tm-a", 2, &jm.rpc_addr().to_string()).await;
    tm.tasks.lock().unwrap().push(pb::TaskStatus {
        subtask: Some(pb::SubtaskRef {
            job_id: "ghost".into(),
            vertex: 0,
            index: 0,
            attempt: 0,
        }),
        state: pb::TaskState::Running as i32,
        ..Default::default()
    });
    wait_for("cancel of the unknown job", || async {
        tm.cancelled_jobs().contains(&"ghost".to_string())
    })
    .await;
    jm.shutdown().await;
}

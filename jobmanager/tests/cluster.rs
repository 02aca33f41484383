//! The JobManager group in-process: three nodes on port 0, grown from one
//! through `POST /v1/cluster/members` and shrunk with `DELETE`, writes sent
//! to followers forwarded to the leader, reads answered everywhere, a member
//! added after log compaction catching up from a snapshot, and bad bodies.

// Test helpers: a failed request or an unexpected body should fail loudly.
#![allow(clippy::unwrap_used)]

mod harness;

use eddy_jobmanager::JobManager;
use eddy_jobmanager::config::Config;
use harness::{FakeTm, job, wait_for};
use serde_json::{Value, json};
use std::path::Path;
use tracing::info;

async fn start_node(
    dir: &Path,
    id: u64,
    join: bool,
    tweak: impl FnOnce(&mut Config),
) -> JobManager {
    let mut config = harness::config(dir);
    config.id = id;
    config.join = join;
    tweak(&mut config);
    JobManager::start(config, None).await.unwrap()
}

/// An answer: status, the two role headers, the forwarded-to header, body.
struct Answer {
    status: u16,
    leader: Option<String>,
    role: Option<String>,
    forwarded_to: Option<String>,
    retry_after: Option<String>,
    body: Value,
}

async fn call(
    method: reqwest::Method,
    jm: &JobManager,
    path: &str,
    body: Option<String>,
) -> Answer {
    let url = format!("http://{}{path}", jm.rest_addr());
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request.send().await.unwrap();
    let headers = response.headers().clone();
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_string());
    let status = response.status().as_u16();
    Answer {
        status,
        leader: header("x-eddy-leader-id"),
        role: header("x-eddy-role"),
        forwarded_to: header("x-eddy-forwarded-to"),
        retry_after: header("retry-after"),
        body: response.json().await.unwrap_or(Value::Null),
    }
}

async fn get(jm: &JobManager, path: &str) -> Answer {
    call(reqwest::Method::GET, jm, path, None).await
}

async fn post(jm: &JobManager, path: &str, body: Value) -> Answer {
    call(reqwest::Method::POST, jm, path, Some(body.to_string())).await
}

async fn delete(jm: &JobManager, path: &str) -> Answer {
    call(reqwest::Method::DELETE, jm, path, None).await
}

fn member_body(jm: &JobManager, id: u64) -> Value {
    json!({"id": id, "raft_addr": jm.rpc_addr().to_string(), "rest_url": format!("http://{}", jm.rest_addr())})
}

/// The member ids and roles of a `GET /v1/cluster` body.
fn members(cluster: &Value) -> Vec<(u64, String)> {
    cluster["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["role"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn roles(pairs: &[(u64, &str)]) -> Vec<(u64, String)> {
    pairs
        .iter()
        .map(|(id, role)| (*id, role.to_string()))
        .collect()
}

fn job_ids(list: &Value) -> Vec<String> {
    list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

/// One node grows to three through REST (the third added through a
/// follower), every node agrees on the leader and members, a submit and a
/// cancel sent to followers are forwarded to the leader, and the group
/// shrinks back to one; the last voter cannot be removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_grows_to_three_and_shrinks_via_rest() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let jm1 = start_node(dirs[0].path(), 1, false, |_| {}).await;
    wait_for("node 1 leads", || async { jm1.context().is_leader() }).await;
    let jm2 = start_node(dirs[1].path(), 2, true, |_| {}).await;
    let jm3 = start_node(dirs[2].path(), 3, true, |_| {}).await;
    let _tm = FakeTm::start("tm-1", 2, &jm1.rpc_addr().to_string()).await;

    info!("--- a joining node is in no group and refuses writes with no_leader");
    let alone = get(&jm2, "/v1/cluster").await;
    assert_eq!(alone.status, 200);
    assert_eq!(alone.body["leader"], Value::Null, "{}", alone.body);
    assert_eq!(alone.body["members"], json!([]));
    assert_eq!(alone.leader, None);
    let refused = post(&jm2, "/v1/jobs", serde_json::from_str(&job(1)).unwrap()).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "no_leader");
    assert_eq!(refused.retry_after.as_deref(), Some("1"));

    info!("--- add node 2 at the leader, node 3 through follower 2");
    let added = post(&jm1, "/v1/cluster/members", member_body(&jm2, 2)).await;
    assert_eq!(added.status, 200, "{}", added.body);
    assert_eq!(
        members(&added.body),
        roles(&[(1, "leader"), (2, "follower")])
    );
    wait_for("node 2 follows", || async {
        jm2.context().leader_id() == Some(1)
    })
    .await;
    let added = post(&jm2, "/v1/cluster/members", member_body(&jm3, 3)).await;
    assert_eq!(added.status, 200, "{}", added.body);
    assert_eq!(added.forwarded_to.as_deref(), Some("1"));
    assert_eq!(added.role.as_deref(), Some("follower"));
    // Adding an existing voter again changes nothing.
    let again = post(&jm3, "/v1/cluster/members", member_body(&jm3, 3)).await;
    assert_eq!(again.status, 200, "{}", again.body);

    info!("--- every node agrees on the leader and members");
    let nodes = [&jm1, &jm2, &jm3];
    let expected = roles(&[(1, "leader"), (2, "follower"), (3, "follower")]);
    for (i, jm) in nodes.iter().enumerate() {
        wait_for("a node sees three members", || async {
            members(&get(jm, "/v1/cluster").await.body) == expected
        })
        .await;
        let c = get(jm, "/v1/cluster").await;
        assert_eq!(c.body["leader"], 1, "{}", c.body);
        assert_eq!(c.body["this_node"], i as u64 + 1);
        assert_eq!(c.leader.as_deref(), Some("1"));
        let role = if i == 0 { "leader" } else { "follower" };
        assert_eq!(c.role.as_deref(), Some(role));
        assert_eq!(c.body["role"], role);
        for m in c.body["members"].as_array().unwrap() {
            let id = m["id"].as_u64().unwrap();
            let jm = nodes[id as usize - 1];
            assert_eq!(m["raft_addr"], jm.rpc_addr().to_string());
            assert_eq!(m["rest_url"], format!("http://{}", jm.rest_addr()));
        }
    }
    let leader_view = get(&jm1, "/v1/cluster").await.body;
    assert!(
        leader_view["commit_index"].as_u64().unwrap() > 0,
        "{leader_view}"
    );
    for m in &leader_view["members"].as_array().unwrap()[1..] {
        assert!(m["matched_index"].as_u64().is_some(), "{leader_view}");
        assert!(m["last_contact_ms"].as_u64().is_some(), "{leader_view}");
    }

    info!("--- writes to followers are forwarded; reads are served everywhere");
    let submitted = post(&jm3, "/v1/jobs", serde_json::from_str(&job(1)).unwrap()).await;
    assert_eq!(submitted.status, 201, "{}", submitted.body);
    assert_eq!(submitted.forwarded_to.as_deref(), Some("1"));
    let id = submitted.body["job_id"].as_str().unwrap().to_string();
    for jm in nodes {
        wait_for("the job replicates", || async {
            job_ids(&get(jm, "/v1/jobs").await.body).contains(&id)
        })
        .await;
    }
    // The leader's error status and body come back unchanged.
    let missing = post(&jm2, "/v1/jobs/nope/cancel", json!({})).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(missing.body["error"]["code"], "not_found");
    assert_eq!(missing.forwarded_to.as_deref(), Some("1"));
    let cancelled = post(&jm2, &format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(cancelled.status, 202, "{}", cancelled.body);

    info!("--- shrink back to one");
    let removed = delete(&jm2, "/v1/cluster/members/3").await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(
        members(&removed.body),
        roles(&[(1, "leader"), (2, "follower")])
    );
    let removed = delete(&jm1, "/v1/cluster/members/2").await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(members(&removed.body), roles(&[(1, "leader")]));
    let last = delete(&jm1, "/v1/cluster/members/1").await;
    assert_eq!(last.status, 409, "{}", last.body);
    assert_eq!(last.body["error"]["code"], "conflict");
    let unknown = delete(&jm1, "/v1/cluster/members/7").await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let bad = delete(&jm1, "/v1/cluster/members/x").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.body["error"]["field"], "id");
    // The group of one still takes writes.
    let submitted = post(&jm1, "/v1/jobs", serde_json::from_str(&job(1)).unwrap()).await;
    assert_eq!(submitted.status, 201, "{}", submitted.body);

    for jm in [jm3, jm2, jm1] {
        jm.shutdown().await;
    }
}

/// The leader compacts its log into a snapshot and purges it; a member added
/// afterwards can only catch up from that snapshot, and then lists the jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_member_added_after_compaction_catches_up_from_snapshot() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let jm1 = start_node(dirs[0].path(), 1, false, |c| {
        c.raft.snapshot_logs = 5;
        c.raft.keep_logs = 0;
    })
    .await;
    wait_for("node 1 leads", || async { jm1.context().is_leader() }).await;
    let _tm = FakeTm::start("tm-1", 4, &jm1.rpc_addr().to_string()).await;
    wait_for("slots", || async {
        get(&jm1, "/v1/overview").await.body["slots_total"] == 4
    })
    .await;

    info!("--- submit jobs until the log is compacted");
    let mut ids = Vec::new();
    for _ in 0..4 {
        let submitted = post(&jm1, "/v1/jobs", serde_json::from_str(&job(1)).unwrap()).await;
        assert_eq!(submitted.status, 201, "{}", submitted.body);
        ids.push(submitted.body["job_id"].as_str().unwrap().to_string());
    }
    wait_for("a snapshot and a purged log", || async {
        let c = get(&jm1, "/v1/cluster").await.body;
        c["snapshot"]["purged_index"].as_u64().unwrap_or(0) >= 5
    })
    .await;

    info!("--- add node 2: it needs the snapshot");
    let jm2 = start_node(dirs[1].path(), 2, true, |_| {}).await;
    let added = post(&jm1, "/v1/cluster/members", member_body(&jm2, 2)).await;
    assert_eq!(added.status, 200, "{}", added.body);
    let c2 = get(&jm2, "/v1/cluster").await.body;
    assert!(
        c2["snapshot"]["last_log_index"].as_u64().unwrap_or(0) >= 5,
        "node 2 installed no snapshot: {c2}"
    );
    let listed = job_ids(&get(&jm2, "/v1/jobs").await.body);
    for id in &ids {
        assert!(listed.contains(id), "{id} missing on node 2: {listed:?}");
    }
    jm2.shutdown().await;
    jm1.shutdown().await;
}

/// The body has exactly the properties the OpenAPI schema documents.
fn assert_documented(doc: &Value, schema: &str, body: &Value) {
    let props = doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap();
    let mut documented: Vec<&String> = props.keys().collect();
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    documented.sort();
    keys.sort();
    assert_eq!(keys, documented, "{schema}");
}

/// Bad member bodies answer 400 with the field at fault; the status body
/// is the documented one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_bad_member_bodies_answer_400_with_field() {
    let dir = tempfile::tempdir().unwrap();
    let jm = start_node(dir.path(), 1, false, |_| {}).await;
    wait_for("node 1 leads", || async { jm.context().is_leader() }).await;
    let doc = get(&jm, "/v1/openapi.json").await.body;
    let status = get(&jm, "/v1/cluster").await.body;
    assert_documented(&doc, "ClusterStatus", &status);
    assert_documented(&doc, "MemberInfo", &status["members"][0]);
    let cases = [
        (
            json!({"raft_addr": "h:1", "rest_url": "http://h:2"}),
            Some("id"),
        ),
        (
            json!({"id": -1, "raft_addr": "h:1", "rest_url": "http://h:2"}),
            Some("id"),
        ),
        (
            json!({"id": 2, "raft_addr": "h", "rest_url": "http://h:2"}),
            Some("raft_addr"),
        ),
        (
            json!({"id": 2, "raft_addr": "h:1", "rest_url": "h:2"}),
            Some("rest_url"),
        ),
        (
            json!({"id": 2, "raft_addr": "h:1", "rest_url": "http://h:2", "x": 1}),
            Some("x"),
        ),
        (json!([1, 2]), None),
    ];
    for (body, field) in cases {
        let answer = post(&jm, "/v1/cluster/members", body.clone()).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        assert_eq!(answer.body["error"]["code"], "bad_request", "{body}");
        match field {
            Some(f) => assert_eq!(answer.body["error"]["field"], f, "{body}"),
            None => assert_eq!(answer.body["error"]["field"], Value::Null, "{body}"),
        }
    }
    let garbage = call(
        reqwest::Method::POST,
        &jm,
        "/v1/cluster/members",
        Some("{".into()),
    )
    .await;
    assert_eq!(garbage.status, 400, "{}", garbage.body);
    // Another id at a member's Raft address would be a second node there.
    let clash = post(
        &jm,
        "/v1/cluster/members",
        json!({"id": 2, "raft_addr": jm.rpc_addr().to_string(), "rest_url": "http://h:2"}),
    )
    .await;
    assert_eq!(clash.status, 409, "{}", clash.body);
    assert_eq!(clash.body["error"]["field"], "raft_addr");
    jm.shutdown().await;
}

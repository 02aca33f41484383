//! `eddy local` as a user runs it: a cluster of separate processes with the
//! demo job RUNNING and records flowing; Ctrl-C leaves no process behind.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use eddy_sdk::client::Client;
use eddy_sdk::rest::JobState;
use eddy_tests::bin_dir;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pid_alive(pid: i32) -> bool {
    // A zombie has exited; only a live process counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddy_local_demo_runs_and_ctrl_c_leaves_no_process() -> anyhow::Result<()> {
    eddy_tests::init_logging();
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(bin_dir().join("eddy"))
        .args([
            "local",
            "--demo",
            "--rest-port",
            "0",
            "--taskmanagers",
            "2",
            "--slots",
            "1",
            "--kpu-memory",
            "256MiB",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("eddy local> {line}");
            let _ = tx.send(line);
        }
    });
    let mut url = None;
    let mut job_id = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while (url.is_none() || job_id.is_none()) && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(u) = line.strip_prefix("REST:") {
                url = Some(u.trim().to_string());
            }
            if let Some(rest) = line.strip_prefix("demo job:") {
                job_id = rest.split_whitespace().next().map(str::to_string);
            }
        }
        if let Some(status) = child.try_wait()? {
            panic!("eddy local exited early: {status}");
        }
    }
    let url = url.expect("eddy local prints the REST URL");
    let job_id = job_id.expect("eddy local --demo prints the job id");
    let client = Client::new(&url);

    // RUNNING with records flowing through every vertex.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = client.job(&job_id).await?;
        let jobs = client.jobs().await?;
        let listed = jobs
            .jobs
            .iter()
            .any(|j| j.id == job_id && j.state == JobState::Running);
        if listed
            && job.vertices.iter().all(|v| v.records_in > 0 || v.id == 0)
            && job.vertices[0].records_out > 0
        {
            break;
        }
        assert!(!job.state.is_terminal(), "demo job ended: {job:?}");
        assert!(
            Instant::now() < deadline,
            "demo job not RUNNING with records flowing: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every process eddy local started, from their ready files.
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(dir.path())? {
        let ready = entry?.path().join("ready.json");
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            pids.push(v["pid"].as_i64().expect("ready files carry the pid") as i32);
        }
    }
    assert_eq!(pids.len(), 3, "one JobManager and two TaskManagers");
    assert!(pids.iter().all(|&p| pid_alive(p)));

    // Ctrl-C.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT)?;
    let status = child.wait()?;
    assert!(
        status.success(),
        "eddy local exits cleanly on Ctrl-C: {status}"
    );
    for pid in pids {
        assert!(!pid_alive(pid), "process {pid} left behind");
    }
    Ok(())
}

/// `eddy local --jobmanagers 3` starts a Raft group: it prints one REST URL
/// per JobManager, every one answers, exactly one leads and sees the
/// TaskManager, a client given the whole list works; Ctrl-C stops all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddy_local_three_jobmanagers_form_one_group() -> anyhow::Result<()> {
    eddy_tests::init_logging();
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(bin_dir().join("eddy"))
        .args([
            "local",
            "--jobmanagers",
            "3",
            "--rest-port",
            "0",
            "--taskmanagers",
            "1",
            "--slots",
            "1",
            "--kpu-memory",
            "256MiB",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("eddy local> {line}");
            let _ = tx.send(line);
        }
    });
    let mut urls = Vec::new();
    let mut up = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !up && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(u) = line.strip_prefix("REST:") {
                urls.push(u.trim().to_string());
            }
            up = line.starts_with("press Ctrl-C");
        }
        if let Some(status) = child.try_wait()? {
            panic!("eddy local exited early: {status}");
        }
    }
    assert!(up, "eddy local did not come up");
    assert_eq!(urls.len(), 3, "one REST URL per JobManager: {urls:?}");

    let mut leaders = 0;
    for url in &urls {
        let o = Client::new(url).overview().await?;
        if o.is_leader {
            leaders += 1;
            assert_eq!(o.taskmanagers, 1, "the leader sees the TaskManager");
        }
    }
    assert_eq!(leaders, 1, "exactly one JobManager leads");
    let all = Client::new(&urls.join(","));
    assert!(all.jobs().await?.jobs.is_empty());

    let mut pids = Vec::new();
    for entry in std::fs::read_dir(dir.path())? {
        let ready = entry?.path().join("ready.json");
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            pids.push(v["pid"].as_i64().expect("ready files carry the pid") as i32);
        }
    }
    assert_eq!(pids.len(), 4, "three JobManagers and one TaskManager");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT)?;
    let status = child.wait()?;
    assert!(status.success(), "eddy local exits cleanly: {status}");
    for pid in pids {
        assert!(!pid_alive(pid), "process {pid} left behind");
    }
    Ok(())
}

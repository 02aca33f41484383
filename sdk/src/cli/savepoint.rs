//! `eddy savepoint`, `eddy stop --savepoint` (wait for the operation), and
//! the tables of `eddy checkpoints` and `eddy exceptions`.

use crate::client::Client;
use crate::rest::{CheckpointStats, ExceptionList, OperationStatus};
use std::fmt::Write;
use std::time::Duration;

/// How long the CLI waits for a savepoint before giving up on watching it
/// (the operation itself goes on; its status stays queryable).
const WAIT: Duration = Duration::from_secs(600);

/// Polls the operation until it completes (prints the location) or fails.
pub async fn wait(client: &Client, job: &str, request: &str, json: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        let op = client.savepoint_status(job, request).await?;
        match op.status {
            OperationStatus::InProgress if started.elapsed() < WAIT => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            OperationStatus::InProgress => anyhow::bail!(
                "savepoint {request} of job {job} still in progress after {}s; its status: GET /v1/jobs/{job}/savepoints/{request}",
                WAIT.as_secs()
            ),
            OperationStatus::Failed => anyhow::bail!(
                "savepoint of job {job} failed: {}",
                op.failure.as_deref().unwrap_or("no reason given")
            ),
            OperationStatus::Completed => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&op)?);
                } else if op.stop {
                    println!("job {job} stopped at savepoint {}", op.location);
                } else {
                    println!("savepoint {}", op.location);
                }
                return Ok(());
            }
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

pub fn render_checkpoints(s: &CheckpointStats) -> String {
    let c = &s.counts;
    let mut out = format!(
        "completed {}  failed {}  in progress {}  restored {}\n",
        c.completed, c.failed, c.in_progress, c.restored
    );
    if let Some(r) = &s.latest.restored {
        let _ = writeln!(out, "restored from {} at {}", r.id, r.restore_time);
    }
    let _ = writeln!(
        out,
        "\n{:>6} {:<11} {:<9} {:>9} {:>12} {:>12} {:>10}  TRIGGERED",
        "ID", "STATUS", "KIND", "DURATION", "STATE", "UPLOADED", "ALIGNMENT"
    );
    for h in &s.history {
        let _ = writeln!(
            out,
            "{:>6} {:<11} {:<9} {:>9} {:>12} {:>12} {:>8}ms  {}{}",
            h.id,
            format!("{:?}", h.status).to_uppercase(),
            if h.is_savepoint {
                "savepoint"
            } else {
                "checkpoint"
            },
            h.duration_ms.map_or("-".to_string(), |d| format!("{d}ms")),
            mib(h.state_size_bytes),
            mib(h.uploaded_bytes),
            h.max_alignment_ms,
            h.trigger_time,
            h.failure_message
                .as_deref()
                .map_or(String::new(), |m| format!("  ({m})"))
        );
    }
    if !s.retained.is_empty() {
        let _ = writeln!(out, "\nretained (what a restart restores from):");
        for r in &s.retained {
            let place = r.savepoint_path.as_deref().unwrap_or(&r.storage);
            let _ = writeln!(
                out,
                "{:>6} {:<9} {}",
                r.id,
                if r.is_savepoint {
                    "savepoint"
                } else {
                    "checkpoint"
                },
                place
            );
        }
    }
    out
}

pub fn render_exceptions(list: &ExceptionList) -> String {
    if list.exceptions.is_empty() {
        return "no failures\n".to_string();
    }
    let mut out = String::new();
    for e in &list.exceptions {
        let _ = writeln!(
            out,
            "{} attempt {} [{}] {}",
            e.time, e.attempt, e.class, e.message
        );
        if let Some(tm) = &e.taskmanager {
            let _ = writeln!(out, "  taskmanager {tm}");
        }
        for cause in e.chain.iter().skip(1) {
            let _ = writeln!(out, "  caused by: {cause}");
        }
        let action = match (e.action.as_str(), e.backoff_ms) {
            ("restart", Some(b)) => format!(
                "restart after {b}ms from {}",
                e.restore_checkpoint
                    .map_or("the start".to_string(), |c| format!("checkpoint {c}"))
            ),
            (a, _) => a.to_string(),
        };
        let _ = writeln!(out, "  action: {action}");
        if let Some(d) = e.damaged_checkpoint {
            let _ = writeln!(out, "  checkpoint {d} was damaged and dropped");
        }
    }
    out
}

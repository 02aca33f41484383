//! Plain-text tables for the CLI.

use crate::error::ApiError;
use crate::rest::{JobDetail, JobList, Overview, TaskManagerList};
use std::fmt::Write;

pub fn api_error(e: &ApiError) -> String {
    let mut s = format!("error [{}]: {}", e.code, e.message);
    if let Some(node) = &e.node {
        let _ = write!(s, " (node `{node}`");
        if let Some(field) = &e.field {
            let _ = write!(s, ", field `{field}`");
        }
        s.push(')');
    } else if let Some(field) = &e.field {
        let _ = write!(s, " (field `{field}`)");
    }
    s
}

pub fn jobs(list: &JobList) -> String {
    let mut s = format!(
        "{:<18} {:<11} {:>4}  {:<25} {}\n",
        "ID", "STATE", "P", "SUBMITTED", "NAME"
    );
    for j in &list.jobs {
        let _ = writeln!(
            s,
            "{:<18} {:<11} {:>4}  {:<25} {}",
            j.id,
            j.state.as_str(),
            j.parallelism,
            j.submitted_at,
            j.name
        );
    }
    s
}

pub fn job(j: &JobDetail) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "job {} ({})", j.id, j.name);
    let _ = writeln!(s, "  state:       {}", j.state);
    let _ = writeln!(
        s,
        "  parallelism: {} (max {}), attempt {}",
        j.parallelism, j.max_parallelism, j.attempt
    );
    if let Some(t) = &j.start_time {
        let _ = writeln!(s, "  started:     {t}");
    }
    if let Some(t) = &j.end_time {
        let _ = writeln!(s, "  ended:       {t}");
    }
    if let Some(m) = &j.status_message {
        let _ = writeln!(s, "  status:      {m}");
    }
    if let Some(f) = &j.failure {
        let _ = writeln!(s, "  failure:     [{}] {}", f.class.as_str(), f.message);
        for cause in f.chain.iter().skip(1) {
            let _ = writeln!(s, "    caused by: {cause}");
        }
    }
    let _ = writeln!(
        s,
        "  {:<4} {:<40} {:>3} {:>14} {:>14} {:>6} {:>6}",
        "V", "NAME", "P", "RECORDS IN", "RECORDS OUT", "BACKP", "BUSY"
    );
    for v in &j.vertices {
        let _ = writeln!(
            s,
            "  {:<4} {:<40} {:>3} {:>14} {:>14} {:>5.0}% {:>5.0}%",
            v.id,
            v.name,
            v.parallelism,
            v.records_in,
            v.records_out,
            v.backpressure * 100.0,
            v.busy * 100.0
        );
    }
    s
}

pub fn overview(o: &Overview) -> String {
    format!(
        "taskmanagers: {}\nslots:        {} free of {}\njobs:         {} running, {} created, {} finished, {} canceled, {} failed\njobmanager:   {} ({})\n",
        o.taskmanagers,
        o.slots_free,
        o.slots_total,
        o.jobs_running,
        o.jobs_created,
        o.jobs_finished,
        o.jobs_cancelled,
        o.jobs_failed,
        o.jobmanager_id,
        if o.is_leader { "leader" } else { "follower" }
    )
}

pub fn taskmanagers(list: &TaskManagerList) -> String {
    let mut s = format!(
        "{:<28} {:<6} {:>5} {:>5} {:>10} {:<22}\n",
        "ID", "STATE", "SLOTS", "FREE", "RSS MB", "RPC"
    );
    for t in &list.taskmanagers {
        let _ = writeln!(
            s,
            "{:<28} {:<6} {:>5} {:>5} {:>10.1} {:<22}",
            t.id,
            t.state,
            t.slots_total,
            t.slots_free,
            t.rss_bytes as f64 / (1024.0 * 1024.0),
            t.rpc_addr
        );
    }
    s
}

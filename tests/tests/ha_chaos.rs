//! JobManager chaos (issue 7): for `EDDY_CHAOS_SECONDS` (default 180),
//! every few seconds a random JobManager of the three is SIGKILLed (and
//! restarted on its data dir later) or SIGSTOPped (and resumed later),
//! never more than one at a time, so a majority always runs. The victim is
//! the leader half of the time. The keyed window job of `windowed_job`
//! runs throughout, checkpointing every 500 ms into the exactly-once file
//! sink. The faults come from a seeded RNG; the seed is logged and
//! `EDDY_CHAOS_SEED` replays it (the leader each fault meets still depends
//! on timing).
//!
//! Meanwhile every JobManager's checkpoint catalog
//! (`GET /v1/jobs/{id}/checkpoints`, `retained`) is polled. Safety: every
//! catalog lists its checkpoints in increasing id order; the newest
//! checkpoint a JobManager process shows never goes back; one id always
//! names the same checkpoint on every JobManager (no two leaders minted it);
//! no task was ever restarted or redeployed (no TaskManager fails); and the
//! output holds every window exactly once. Liveness: checkpoints complete
//! after the faults stop, the job finishes, and every JobManager ends with
//! the same catalog.

use eddy_sdk::rest::CheckpointStats;
use eddy_tests::Cluster;
use eddy_tests::ha::{
    before, finish, group, newest_checkpoint, start_job, untouched, wait_settled,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::info;

const DEFAULT_SECONDS: u64 = 180;
/// Source rate; the job runs about 30 s longer than the faults.
const RATE: u32 = 2_500;
/// How often each JobManager's catalog is read.
const POLL: Duration = Duration::from_millis(200);

/// What one JobManager's catalog said.
#[derive(Debug)]
struct Seen {
    node: usize,
    /// Which process of that node answered (see [`Generations`]).
    generation: u64,
    /// The retained checkpoints in catalog order: (id, trigger time,
    /// completion time).
    catalog: Vec<(u64, String, String)>,
}

/// Per JobManager, a counter bumped before it is killed and again once it
/// runs again (odd: being restarted). A poll that reads the same even value
/// before and after its request was answered by one and the same process.
struct Generations(Vec<AtomicU64>);

impl Generations {
    fn get(&self, i: usize) -> u64 {
        self.0[i].load(Ordering::SeqCst)
    }
    fn bump(&self, i: usize) {
        self.0[i].fetch_add(1, Ordering::SeqCst);
    }
}

fn catalog(stats: &CheckpointStats) -> Vec<(u64, String, String)> {
    stats
        .retained
        .iter()
        .filter(|c| !c.is_savepoint)
        .map(|c| (c.id, c.trigger_time.clone(), c.completed_time.clone()))
        .collect()
}

/// Reads `jms[node]`'s catalog every [`POLL`] until `stop`, skipping
/// answers that may come from two different processes.
async fn poll(
    node: usize,
    url: String,
    job: String,
    generations: Arc<Generations>,
    seen: Arc<Mutex<Vec<Seen>>>,
    mut stop: watch::Receiver<bool>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("a reqwest client with a timeout builds");
    let target = format!("{url}/v1/jobs/{job}/checkpoints");
    while !*stop.borrow() {
        let generation = generations.get(node);
        let answer = async {
            http.get(&target)
                .send()
                .await?
                .error_for_status()?
                .json::<CheckpointStats>()
                .await
        }
        .await;
        if let Ok(stats) = answer
            && generation.is_multiple_of(2)
            && generations.get(node) == generation
        {
            seen.lock().expect("no poller panics").push(Seen {
                node,
                generation,
                catalog: catalog(&stats),
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => {}
        }
    }
}

/// The safety checks over everything the pollers saw; returns the newest
/// checkpoint id seen.
fn check_catalogs(seen: &[Seen]) -> anyhow::Result<u64> {
    let mut problems = Vec::new();
    let mut newest: BTreeMap<(usize, u64), u64> = BTreeMap::new();
    let mut names: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for s in seen {
        let ids: Vec<u64> = s.catalog.iter().map(|c| c.0).collect();
        if !ids.windows(2).all(|w| w[0] < w[1]) {
            problems.push(format!(
                "jobmanager-{} lists checkpoints out of order: {ids:?}",
                s.node + 1
            ));
        }
        if let Some(&last) = ids.last() {
            let prev = newest.entry((s.node, s.generation)).or_insert(last);
            if last < *prev {
                problems.push(format!(
                    "jobmanager-{} went back from checkpoint {prev} to {last}",
                    s.node + 1
                ));
            }
            *prev = (*prev).max(last);
        }
        for (id, trigger, completed) in &s.catalog {
            let named = names
                .entry(*id)
                .or_insert((trigger.clone(), completed.clone()));
            if named != &(trigger.clone(), completed.clone()) {
                problems.push(format!(
                    "checkpoint {id} is two checkpoints: {named:?} and ({trigger}, {completed}) on jobmanager-{}",
                    s.node + 1
                ));
            }
        }
    }
    anyhow::ensure!(
        problems.is_empty(),
        "{} problems in {} catalog reads; first: {:?}",
        problems.len(),
        seen.len(),
        &problems[..problems.len().min(10)]
    );
    Ok(names.keys().next_back().copied().unwrap_or(0))
}

/// A fault in progress.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Killed(usize),
    Paused(usize),
}

/// Brings the faulted JobManager back.
fn recover(cluster: &mut Cluster, generations: &Generations, fault: Fault) -> anyhow::Result<()> {
    match fault {
        Fault::Killed(i) => {
            info!(jobmanager = i + 1, "--- restart");
            // `restart` waits for the ready file on this thread.
            tokio::task::block_in_place(|| cluster.jms[i].restart())?;
            generations.bump(i);
        }
        Fault::Paused(i) => {
            info!(jobmanager = i + 1, "--- SIGCONT");
            cluster.jms[i].resume()?;
        }
    }
    Ok(())
}

fn env_u64(name: &str) -> anyhow::Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(
            v.parse()
                .map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}"))?,
        )),
        Err(_) => Ok(None),
    }
}

/// Random JobManager kills and pauses, never two at once, while the job
/// runs: the output is exactly-once and checkpoint ids only increase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobmanager_chaos_keeps_output_exactly_once_and_checkpoint_ids_increasing()
-> anyhow::Result<()> {
    let seconds = env_u64("EDDY_CHAOS_SECONDS")?.unwrap_or(DEFAULT_SECONDS);
    let seed = env_u64("EDDY_CHAOS_SEED")?.unwrap_or_else(rand::random);
    let rows = i64::from(RATE) * (seconds as i64 + 30);
    let mut running = start_job(group(), "ha-chaos", rows, RATE).await?;
    info!(
        seconds,
        seed, rows, "--- chaos (replay with EDDY_CHAOS_SEED={seed})"
    );
    eprintln!("chaos seed {seed} (EDDY_CHAOS_SEED replays it)");
    let job = running.job.clone();
    let cluster = &mut running.cluster;
    let leader = cluster.wait_for_leader(None).await?;
    let before = before(cluster, leader, &job).await?;

    let generations = Arc::new(Generations(
        (0..cluster.jms.len()).map(|_| AtomicU64::new(0)).collect(),
    ));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (stop, stop_rx) = watch::channel(false);
    let pollers: Vec<_> = (0..cluster.jms.len())
        .map(|i| {
            tokio::spawn(poll(
                i,
                cluster.jms[i].rest_url(),
                job.clone(),
                generations.clone(),
                seen.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();

    let mut rng = StdRng::seed_from_u64(seed);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut faults = 0;
    while Instant::now() < end {
        // A healthy gap, then one fault held for a while.
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..3_000))).await;
        let victim = match cluster.leader().await {
            Some(l) if rng.random_bool(0.5) => l,
            _ => rng.random_range(0..cluster.jms.len()),
        };
        let fault = if rng.random_bool(0.5) {
            info!(jobmanager = victim + 1, "--- SIGKILL");
            generations.bump(victim);
            cluster.jms[victim].kill9()?;
            Fault::Killed(victim)
        } else {
            info!(jobmanager = victim + 1, "--- SIGSTOP");
            cluster.jms[victim].pause()?;
            Fault::Paused(victim)
        };
        faults += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..5_000))).await;
        recover(cluster, &generations, fault)?;
    }
    info!(faults, "--- faults stop; checkpoints must resume");

    let leader = cluster.wait_for_leader(None).await?;
    let since = newest_checkpoint(&cluster.client_of(leader), &job)
        .await?
        .unwrap_or(0);
    untouched(cluster, leader, &job, &before, since).await?;

    info!("--- the job finishes; every JobManager ends with the same catalog");
    finish(&running, &before).await?;
    let cluster = &running.cluster;
    let clients: Vec<_> = (0..cluster.jms.len())
        .map(|i| cluster.client_of(i))
        .collect();
    wait_settled(cluster, "every JobManager has the same catalog", || {
        let (clients, job) = (clients.clone(), job.clone());
        async move {
            let mut catalogs = Vec::new();
            for c in &clients {
                catalogs.push(catalog(&c.checkpoints(&job).await?));
            }
            anyhow::Ok(catalogs.windows(2).all(|w| w[0] == w[1]))
        }
    })
    .await?;
    let last = catalog(&clients[0].checkpoints(&job).await?);
    let _ = stop.send(true);
    for p in pollers {
        p.await?;
    }
    let seen = std::mem::take(&mut *seen.lock().expect("the pollers are done"));
    let newest_seen = check_catalogs(&seen)?;
    let newest_last = last.last().map_or(0, |c| c.0);
    assert!(
        newest_last >= newest_seen,
        "the final catalog {last:?} is older than checkpoint {newest_seen} seen during the run"
    );
    info!(
        faults,
        reads = seen.len(),
        newest = newest_last,
        "--- checkpoint ids only increased"
    );
    Ok(())
}

//! RocksDB state checkpoint and restore at scale (docs/benchmarks.md):
//! loads `--gib` GiB of keyed state into two subtasks' RocksDB backends
//! (parallelism 2), takes a full checkpoint, changes `--change-pct` percent
//! of the keys, takes an incremental one, then restores it at the same
//! parallelism (2) and at double (4), each restore's subtasks concurrently,
//! as a job's subtasks restore in their slots.
//!
//! `cargo bench -p eddy-taskmanager --bench state_checkpoint -- --gib 1`

use anyhow::Context;
use eddy_sdk::ids::{CheckpointId, JobId, KeyGroup, NodeId, SubtaskIndex};
use eddy_sdk::keygroup::{key_group_of_hash, key_group_range};
use eddy_taskmanager::state::manifest::SubtaskManifest;
use eddy_taskmanager::state::rocksdb::{RocksDbBackend, RocksDbSlot};
use eddy_taskmanager::state::storage::CheckpointStorage;
use eddy_taskmanager::state::{
    KeyedStateBackend, SnapshotResult, SnapshotTarget, StateBatch, StateDescriptor, StateScope,
    SystemClock,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const MAX_PARALLELISM: u32 = 128;
/// A slot's RocksDB memory: half of a 4 GiB KPU.
const SLOT_MEMORY: u64 = 2 << 30;
const BATCH: u64 = 50_000;

struct Args {
    gib: f64,
    value_bytes: usize,
    change_pct: f64,
    dir: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        gib: 1.0,
        value_bytes: 1024,
        change_pct: 1.0,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--gib" => a.gib = value()?.parse()?,
            "--value-bytes" => a.value_bytes = value()?.parse()?,
            "--change-pct" => a.change_pct = value()?.parse()?,
            "--dir" => a.dir = Some(value()?),
            // cargo bench passes --bench; anything else is a mistake.
            "--bench" => {}
            other => anyhow::bail!(
                "unknown argument {other} (use --gib N --value-bytes N --change-pct N --dir D)"
            ),
        }
    }
    Ok(a)
}

fn scope(parallelism: u32, index: u32) -> StateScope {
    StateScope {
        job: JobId::from("bench"),
        node: NodeId::from("agg"),
        subtask: SubtaskIndex(index),
        max_parallelism: MAX_PARALLELISM,
        key_groups: key_group_range(MAX_PARALLELISM, parallelism, index),
    }
}

fn key(i: u64) -> ([u8; 8], KeyGroup) {
    let k = i.to_be_bytes();
    (
        k,
        key_group_of_hash(xxhash_rust::xxh3::xxh3_64(&k), MAX_PARALLELISM),
    )
}

/// Incompressible bytes for entry `i`, version `v`.
fn fill(buf: &mut Vec<u8>, len: usize, i: u64, v: u64) {
    buf.clear();
    let mut x = xxhash_rust::xxh3::xxh3_64(&[i.to_le_bytes(), v.to_le_bytes()].concat());
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(len);
}

/// Writes keys `0..n` whose key group `b` owns (every `step`-th only when
/// `step > 1`), with version `v`.
fn load(
    b: &mut RocksDbBackend,
    scope: &StateScope,
    n: u64,
    step: u64,
    v: u64,
    len: usize,
) -> anyhow::Result<u64> {
    let s = b.register_state("big", StateDescriptor::default())?;
    let mut batch = StateBatch::with_capacity(BATCH as usize);
    let mut value = Vec::with_capacity(len);
    let mut written = 0;
    for i in (0..n).step_by(step as usize) {
        let (k, kg) = key(i);
        if !scope.key_groups.contains(&kg.0) {
            continue;
        }
        fill(&mut value, len, i, v);
        batch.put(s, kg, &k, &value);
        written += 1;
        if batch.len() as u64 >= BATCH {
            b.write(std::mem::replace(
                &mut batch,
                StateBatch::with_capacity(BATCH as usize),
            ))?;
        }
    }
    b.write(batch)?;
    Ok(written)
}

async fn checkpoint(
    backends: &mut [RocksDbBackend],
    storage: &Arc<CheckpointStorage>,
    id: u64,
) -> anyhow::Result<(f64, f64, Vec<SnapshotResult>)> {
    let started = Instant::now();
    let mut uploads = Vec::new();
    for b in backends.iter_mut() {
        let pending = b.snapshot(
            storage.clone(),
            SnapshotTarget::Checkpoint(CheckpointId(id)),
        )?;
        uploads.push(tokio::spawn(pending.upload()));
    }
    let sync_part = started.elapsed().as_secs_f64();
    let mut results = Vec::new();
    for u in uploads {
        results.push(u.await??);
    }
    for b in backends.iter_mut() {
        b.notify_checkpoint_complete(CheckpointId(id));
    }
    Ok((sync_part, started.elapsed().as_secs_f64(), results))
}

/// Restores every subtask of `parallelism` concurrently; returns seconds
/// and the entries restored (counted by a full scan).
async fn restore(
    root: &Path,
    storage: &Arc<CheckpointStorage>,
    manifests: &[SubtaskManifest],
    parallelism: u32,
) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..parallelism {
        let slot = RocksDbSlot::new(
            root.join(format!("restore-p{parallelism}-{index}")),
            SLOT_MEMORY,
        );
        let (storage, manifests) = (storage.clone(), manifests.to_vec());
        tasks.push(tokio::spawn(async move {
            let scope = scope(parallelism, index);
            let b = slot
                .restore(scope.clone(), Arc::new(SystemClock), &storage, &manifests)
                .await?;
            anyhow::Ok(b)
        }));
    }
    let mut backends = Vec::new();
    for t in tasks {
        backends.push(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    let mut entries = 0;
    for b in &mut backends {
        let s = b.register_state("big", StateDescriptor::default())?;
        let range = key_group_range(MAX_PARALLELISM, 1, 0);
        for e in b.scan(s, range, &[])? {
            e?;
            entries += 1;
        }
    }
    Ok((secs, entries))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let tmp = match &a.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let root = tmp.path();
    let n = ((a.gib * (1u64 << 30) as f64) / a.value_bytes as f64) as u64;
    let storage = Arc::new(CheckpointStorage::open(
        root.join("checkpoints")
            .to_str()
            .context("non-UTF-8 temp dir")?,
        &[],
    )?);
    println!(
        "state: {n} entries of {} B values ({:.2} GiB), parallelism 2, {MAX_PARALLELISM} key groups",
        a.value_bytes, a.gib
    );

    let mut backends = Vec::new();
    let started = Instant::now();
    let mut loaded = 0;
    for index in 0..2 {
        let slot = RocksDbSlot::new(root.join(format!("slot-{index}")), SLOT_MEMORY);
        let scope = scope(2, index);
        let mut b = slot.open(scope.clone(), Arc::new(SystemClock))?;
        loaded += load(&mut b, &scope, n, 1, 0, a.value_bytes)?;
        backends.push(b);
    }
    println!(
        "load: {loaded} entries in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let (sync1, total1, r1) = checkpoint(&mut backends, &storage, 1).await?;
    let up1: u64 = r1.iter().map(|r| r.uploaded_bytes).sum();
    let size1: u64 = r1.iter().map(|r| r.state_bytes).sum();
    println!(
        "full checkpoint: {total1:.2} s (synchronous part {:.0} ms), uploaded {:.0} MiB of {:.0} MiB",
        sync1 * 1e3,
        mib(up1),
        mib(size1)
    );

    let step = (100.0 / a.change_pct).max(1.0) as u64;
    for (index, b) in backends.iter_mut().enumerate() {
        load(b, &scope(2, index as u32), n, step, 1, a.value_bytes)?;
    }
    let (sync2, total2, r2) = checkpoint(&mut backends, &storage, 2).await?;
    let up2: u64 = r2.iter().map(|r| r.uploaded_bytes).sum();
    let size2: u64 = r2.iter().map(|r| r.state_bytes).sum();
    println!(
        "incremental checkpoint after changing {}% of keys: {total2:.2} s (synchronous part {:.0} ms), uploaded {:.1} MiB of {:.0} MiB ({:.2}%)",
        a.change_pct,
        sync2 * 1e3,
        mib(up2),
        mib(size2),
        100.0 * up2 as f64 / size2 as f64
    );
    let manifests: Vec<SubtaskManifest> = r2.into_iter().map(|r| r.manifest).collect();
    drop(backends);

    for p in [2, 4] {
        let (secs, entries) = restore(root, &storage, &manifests, p).await?;
        anyhow::ensure!(
            entries == loaded,
            "restore at p={p} found {entries} entries, want {loaded}"
        );
        println!("restore at parallelism {p}: {secs:.2} s ({entries} entries verified by scan)");
    }
    Ok(())
}

//! RocksDB options for Eddy's state: memory bounded by the slot's budget,
//! shared by every instance of the slot, and the TTL compaction filter.
//!
//! The split of a slot's budget `B` (the KPU's state memory):
//! - one LRU block cache of capacity `B`, shared by all instances of the slot;
//! - one write-buffer manager limiting memtables to `B / 2`, *charged to that
//!   cache*, so memtables and cached blocks together stay within `B`;
//! - per column family, memtables of `clamp(B / 8, 1 MiB, 64 MiB)`, at most
//!   two of them (the manager flushes earlier when the slot's total is high);
//! - index and filter blocks live in the cache (counted in `B`), L0's pinned.
//!
//! Writes skip the write-ahead log: durability comes from checkpoints, and a
//! failed subtask is always restored from one, never reopened locally.

use crate::state::Clock;
use crate::state::ttl;
use rocksdb::compaction_filter::Decision;
use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, Options, WriteBufferManager};
use std::sync::Arc;

const MIB: usize = 1 << 20;

/// How a slot's memory budget is divided (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemorySplit {
    /// The budget, and the block cache's capacity.
    pub budget: usize,
    /// The write-buffer manager's limit for all memtables of the slot.
    pub write_buffers: usize,
    /// One memtable of one column family.
    pub write_buffer_size: usize,
}

impl MemorySplit {
    /// The split of `budget` bytes (at least 8 MiB are assumed).
    pub fn from_budget(budget: u64) -> Self {
        let budget = usize::try_from(budget).unwrap_or(usize::MAX).max(8 * MIB);
        Self {
            budget,
            write_buffers: budget / 2,
            write_buffer_size: (budget / 8).clamp(MIB, 64 * MIB),
        }
    }
}

/// Options every instance and column family of a slot starts from: they
/// carry the slot's shared block cache and write-buffer manager.
pub(crate) fn slot_template(split: MemorySplit) -> Options {
    let cache = Cache::new_lru_cache(split.budget);
    let manager = WriteBufferManager::new_write_buffer_manager_with_cache(
        split.write_buffers,
        false,
        cache.clone(),
    );
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_bloom_filter(10.0, false);

    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_manager(&manager);
    opts.set_write_buffer_size(split.write_buffer_size);
    opts.set_max_write_buffer_number(2);
    // Smaller files than RocksDB's default 64 MiB make incremental
    // checkpoints finer: a compaction rewrites fewer bytes to upload.
    opts.set_target_file_size_base(16 * MIB as u64);
    opts.set_max_bytes_for_level_base(64 * MIB as u64);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_max_background_jobs(2);
    opts
}

/// Options for one instance (the DB as a whole).
pub(crate) fn db_options(template: &Options) -> Options {
    let mut opts = template.clone();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Every column family is flushed together, so a checkpoint's files are
    // one consistent cut even without a write-ahead log.
    opts.set_atomic_flush(true);
    opts
}

/// Options for one column family: the template plus a compaction filter that
/// drops expired entries. The filter reads the expiry stored in each value
/// (see `state::ttl`), so it works for every state without knowing its TTL.
pub(crate) fn cf_options(template: &Options, clock: Arc<dyn Clock>) -> Options {
    let mut opts = template.clone();
    opts.set_compaction_filter("eddy-ttl", move |_level: u32, _key: &[u8], value: &[u8]| {
        match ttl::decode(value) {
            Some((expires_at, _)) if ttl::is_expired(expires_at, clock.now_ms()) => {
                Decision::Remove
            }
            _ => Decision::Keep,
        }
    });
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memtables get half the budget and per-family buffers stay in bounds.
    #[test]
    fn memory_split_from_budget_stays_within_bounds() {
        let s = MemorySplit::from_budget(512 << 20);
        assert_eq!(s.budget, 512 << 20);
        assert_eq!(s.write_buffers, 256 << 20);
        assert_eq!(s.write_buffer_size, 64 << 20);
        let small = MemorySplit::from_budget(16 << 20);
        assert_eq!(small.write_buffer_size, 2 << 20);
        assert!(small.write_buffers + small.write_buffer_size <= small.budget);
        let tiny = MemorySplit::from_budget(0);
        assert_eq!(tiny.budget, 8 << 20);
        assert_eq!(tiny.write_buffer_size, 1 << 20);
    }
}

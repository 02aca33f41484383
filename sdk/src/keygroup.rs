//! Key groups: keys hash into `max_parallelism` groups, and each subtask of a
//! keyed vertex owns a contiguous range of them (Flink's scheme). The
//! JobManager assigns ranges; the TaskManager routes rows by them. State is
//! stored per key group, so it can be redistributed when parallelism changes.

use crate::ids::KeyGroup;
use std::ops::Range;

/// The key group of a key hash.
#[inline]
pub fn key_group_of_hash(hash: u64, max_parallelism: u32) -> KeyGroup {
    KeyGroup((hash % u64::from(max_parallelism)) as u32)
}

/// The subtask that owns a key group.
#[inline]
pub fn subtask_for_key_group(kg: KeyGroup, max_parallelism: u32, parallelism: u32) -> u32 {
    debug_assert!(kg.0 < max_parallelism && parallelism >= 1 && parallelism <= max_parallelism);
    ((u64::from(kg.0) * u64::from(parallelism)) / u64::from(max_parallelism)) as u32
}

/// The key groups subtask `index` owns: the inverse of [`subtask_for_key_group`].
pub fn key_group_range(max_parallelism: u32, parallelism: u32, index: u32) -> Range<u32> {
    let (m, p, i) = (
        u64::from(max_parallelism),
        u64::from(parallelism),
        u64::from(index),
    );
    let start = (i * m).div_ceil(p);
    let end = ((i + 1) * m).div_ceil(p);
    start as u32..end as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every key group belongs to exactly the subtask whose range holds it.
        #[test]
        fn key_group_ranges_partition_and_agree_with_routing(maxp in 1u32..2048, p_frac in 0.0f64..1.0) {
            let p = ((f64::from(maxp) * p_frac) as u32).clamp(1, maxp);
            let mut next = 0;
            for i in 0..p {
                let r = key_group_range(maxp, p, i);
                prop_assert_eq!(r.start, next);
                prop_assert!(!r.is_empty());
                for kg in r.clone() {
                    prop_assert_eq!(subtask_for_key_group(KeyGroup(kg), maxp, p), i);
                }
                next = r.end;
            }
            prop_assert_eq!(next, maxp);
        }
    }
}

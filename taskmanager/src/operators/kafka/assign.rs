//! Which source subtask reads which partition, and under which key group its
//! offset is checkpointed.
//!
//! Checkpointed state moves between subtasks by key group (ADR 0007), so a
//! partition's offset must live under a key group that does not depend on
//! the parallelism, and the subtask that reads the partition must be the one
//! that owns that key group: otherwise a restore at another parallelism would
//! hand the offset to a subtask that does not read the partition.
//!
//! Partition `p` of topic `t` goes to key group
//! `(floor(vdc(p) * M) + h(t)) mod M`, where `M` is the max parallelism,
//! `vdc` the base-2 van der Corput sequence (bit-reversed `p` as a fraction:
//! 0, 1/2, 1/4, 3/4, 1/8, ...) and `h` a stable hash of the topic name. The
//! first `2^k` partitions of a topic are then evenly spaced around the key
//! groups whatever the rotation `h(t)`, so with contiguous key-group ranges
//! a topic of 4 partitions read at parallelism 2 gives each subtask 2, and at
//! parallelism 4 one each: round-robin in effect, and stable when partitions
//! are added or the parallelism changes.

use eddy_sdk::ids::KeyGroup;
use std::ops::Range;

/// The base-2 van der Corput value of `n`, in `[0, 1)`.
fn van_der_corput(n: u32) -> f64 {
    f64::from(n.reverse_bits()) / 4_294_967_296.0
}

/// The key group partition `partition` of `topic` is checkpointed under.
pub fn key_group(topic: &str, partition: i32, max_parallelism: u32) -> KeyGroup {
    let m = max_parallelism.max(1);
    let spread = (van_der_corput(partition.max(0) as u32) * f64::from(m)) as u32 % m;
    let rotation = (xxhash_rust::xxh3::xxh3_64(topic.as_bytes()) % u64::from(m)) as u32;
    KeyGroup((spread + rotation) % m)
}

/// Whether the subtask owning `key_groups` reads this partition.
pub fn owns(key_groups: &Range<u32>, topic: &str, partition: i32, max_parallelism: u32) -> bool {
    key_groups.contains(&key_group(topic, partition, max_parallelism).0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_sdk::keygroup::key_group_range;

    fn counts(topic: &str, partitions: i32, parallelism: u32, max: u32) -> Vec<usize> {
        (0..parallelism)
            .map(|s| {
                let range = key_group_range(max, parallelism, s);
                (0..partitions)
                    .filter(|p| owns(&range, topic, *p, max))
                    .count()
            })
            .collect()
    }

    #[test]
    fn assign_four_partitions_spread_evenly_at_two_and_four() {
        for topic in ["orders", "clicks", "x"] {
            assert_eq!(counts(topic, 4, 2, 128), vec![2, 2], "{topic}");
            assert_eq!(counts(topic, 4, 4, 128), vec![1, 1, 1, 1], "{topic}");
            assert_eq!(counts(topic, 8, 4, 128), vec![2, 2, 2, 2], "{topic}");
        }
    }

    #[test]
    fn assign_every_partition_has_exactly_one_owner_at_any_parallelism() {
        for max in [1, 7, 128, 1000] {
            for p in 1..=max.min(9) {
                for partition in 0..40 {
                    let owners = (0..p)
                        .filter(|s| owns(&key_group_range(max, p, *s), "t", partition, max))
                        .count();
                    assert_eq!(owners, 1, "max {max} parallelism {p} partition {partition}");
                }
            }
        }
    }

    #[test]
    fn assign_key_group_is_stable_and_in_range() {
        for partition in 0..100 {
            let kg = key_group("orders", partition, 128);
            assert!(kg.0 < 128);
            assert_eq!(kg, key_group("orders", partition, 128));
        }
    }
}

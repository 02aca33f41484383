//! Placing a job's subtasks on free slots. Pure: takes the free capacity and
//! the job's vertices, returns placements or how short the cluster is.
//!
//! Slot sharing: job slot `k` holds subtask `k` of every vertex whose
//! parallelism is greater than `k`, so a job of parallelism `p` (its widest
//! vertex) needs exactly `p` slots. Job slots are spread round-robin over
//! TaskManagers ordered by most free slots, then id, so `p = 2` over two
//! TaskManagers uses one slot on each.

use crate::cluster_state::Placement;
use eddy_sdk::ids::{SlotIndex, SubtaskIndex, TaskManagerId, VertexId};
use std::collections::BTreeSet;

/// The free capacity of one live TaskManager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub tm_id: TaskManagerId,
    /// Slots `0..slots` exist on it.
    pub slots: u32,
    /// Slots held by other jobs.
    pub used: BTreeSet<SlotIndex>,
}

impl Capacity {
    fn free(&self) -> impl Iterator<Item = SlotIndex> + '_ {
        (0..self.slots)
            .map(SlotIndex)
            .filter(|s| !self.used.contains(s))
    }
    pub fn free_count(&self) -> u32 {
        self.free().count() as u32
    }
}

/// Not enough free slots right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("waiting for {needed} free slots ({free} free)")]
pub struct Shortage {
    pub needed: u32,
    pub free: u32,
}

/// Places every subtask of `vertices` (id, parallelism) on free slots.
pub fn solve(
    capacity: &[Capacity],
    vertices: &[(VertexId, u32)],
) -> Result<Vec<Placement>, Shortage> {
    let needed = vertices.iter().map(|(_, p)| *p).max().unwrap_or(0);
    let mut free: Vec<(TaskManagerId, Vec<SlotIndex>)> = capacity
        .iter()
        .map(|c| (c.tm_id.clone(), c.free().collect()))
        .collect();
    let total_free: u32 = free.iter().map(|(_, f)| f.len() as u32).sum();
    if needed > total_free {
        return Err(Shortage {
            needed,
            free: total_free,
        });
    }
    free.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    // Job slot k -> (TaskManager, slot), taking the lowest free slot of each
    // TaskManager in turn.
    let mut job_slots: Vec<(TaskManagerId, SlotIndex)> = Vec::with_capacity(needed as usize);
    let mut round = 0;
    while (job_slots.len() as u32) < needed {
        for (tm, slots) in &free {
            if (job_slots.len() as u32) == needed {
                break;
            }
            if let Some(slot) = slots.get(round) {
                job_slots.push((tm.clone(), *slot));
            }
        }
        round += 1;
    }
    let mut out = Vec::new();
    for (vertex, parallelism) in vertices {
        for k in 0..*parallelism {
            let (tm_id, slot) = job_slots[k as usize].clone();
            out.push(Placement {
                vertex: *vertex,
                index: SubtaskIndex(k),
                tm_id,
                slot,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashSet};

    fn cap(id: &str, slots: u32, used: &[u32]) -> Capacity {
        Capacity {
            tm_id: id.into(),
            slots,
            used: used.iter().map(|s| SlotIndex(*s)).collect(),
        }
    }

    #[test]
    fn solve_two_subtasks_over_two_tms_uses_one_slot_each() {
        let placements = solve(&[cap("a", 2, &[]), cap("b", 2, &[])], &[(VertexId(0), 2)]).unwrap();
        let tms: HashSet<_> = placements.iter().map(|p| p.tm_id.clone()).collect();
        assert_eq!(tms.len(), 2);
    }

    #[test]
    fn solve_slot_sharing_puts_subtask_k_of_every_vertex_in_job_slot_k() {
        let placements = solve(&[cap("a", 2, &[])], &[(VertexId(0), 2), (VertexId(1), 1)]).unwrap();
        assert_eq!(placements.len(), 3);
        let v0_0 = placements
            .iter()
            .find(|p| p.vertex == VertexId(0) && p.index.0 == 0)
            .unwrap();
        let v1_0 = placements
            .iter()
            .find(|p| p.vertex == VertexId(1) && p.index.0 == 0)
            .unwrap();
        assert_eq!((&v0_0.tm_id, v0_0.slot), (&v1_0.tm_id, v1_0.slot));
    }

    #[test]
    fn solve_busy_slots_reports_shortage() {
        let err = solve(&[cap("a", 2, &[0])], &[(VertexId(0), 2)]).unwrap_err();
        assert_eq!(err, Shortage { needed: 2, free: 1 });
        assert_eq!(err.to_string(), "waiting for 2 free slots (1 free)");
    }

    #[test]
    fn solve_prefers_tm_with_most_free_slots() {
        let placements = solve(
            &[cap("a", 4, &[0, 1, 2]), cap("b", 4, &[])],
            &[(VertexId(0), 1)],
        )
        .unwrap();
        assert_eq!(placements[0].tm_id, TaskManagerId::from("b"));
    }

    fn arb_cluster() -> impl Strategy<Value = Vec<Capacity>> {
        prop::collection::vec((1u32..6, prop::collection::btree_set(0u32..6, 0..4)), 0..5).prop_map(
            |tms| {
                tms.into_iter()
                    .enumerate()
                    .map(|(i, (slots, used))| Capacity {
                        tm_id: format!("tm-{i}").into(),
                        slots,
                        used: used
                            .into_iter()
                            .filter(|s| *s < slots)
                            .map(SlotIndex)
                            .collect(),
                    })
                    .collect()
            },
        )
    }

    fn arb_vertices() -> impl Strategy<Value = Vec<(VertexId, u32)>> {
        prop::collection::vec(1u32..8, 1..4).prop_map(|ps| {
            ps.into_iter()
                .enumerate()
                .map(|(i, p)| (VertexId(i as u32), p))
                .collect()
        })
    }

    proptest! {
        /// Post-conditions of every successful solve: no slot over-committed or
        /// taken from another job, every subtask placed exactly once, and the
        /// job spread evenly over TaskManagers that still had room.
        #[test]
        fn solve_post_conditions_hold(cluster in arb_cluster(), vertices in arb_vertices()) {
            let needed = vertices.iter().map(|v| v.1).max().unwrap();
            let free: u32 = cluster.iter().map(Capacity::free_count).sum();
            match solve(&cluster, &vertices) {
                Err(shortage) => {
                    prop_assert!(needed > free);
                    prop_assert_eq!(shortage, Shortage { needed, free });
                }
                Ok(placements) => {
                    prop_assert!(needed <= free);
                    // Every subtask exactly once.
                    let mut seen = HashSet::new();
                    for p in &placements {
                        prop_assert!(seen.insert((p.vertex, p.index)));
                    }
                    let expected: usize = vertices.iter().map(|v| v.1 as usize).sum();
                    prop_assert_eq!(seen.len(), expected);
                    // Job slot k is one (tm, slot), distinct per k, free and existing.
                    let mut slot_of_index: BTreeMap<u32, (TaskManagerId, SlotIndex)> = BTreeMap::new();
                    for p in &placements {
                        let entry = slot_of_index.entry(p.index.0).or_insert((p.tm_id.clone(), p.slot));
                        prop_assert_eq!(entry, &(p.tm_id.clone(), p.slot));
                        let c = cluster.iter().find(|c| c.tm_id == p.tm_id).unwrap();
                        prop_assert!(p.slot.0 < c.slots && !c.used.contains(&p.slot));
                    }
                    let distinct: HashSet<_> = slot_of_index.values().collect();
                    prop_assert_eq!(distinct.len(), needed as usize);
                    // Spreading: a TM may take two more job slots than another
                    // only when the other has no free slot left.
                    let mut taken: BTreeMap<&TaskManagerId, u32> = BTreeMap::new();
                    for (tm, _) in slot_of_index.values() {
                        *taken.entry(tm).or_default() += 1;
                    }
                    for a in &cluster {
                        for b in &cluster {
                            let ta = taken.get(&a.tm_id).copied().unwrap_or(0);
                            let tb = taken.get(&b.tm_id).copied().unwrap_or(0);
                            if ta > tb + 1 {
                                prop_assert_eq!(tb, b.free_count(), "{} took {} but {} only {}", a.tm_id, ta, b.tm_id, tb);
                            }
                        }
                    }
                }
            }
        }

        /// Solving is deterministic: the same input gives the same placements.
        #[test]
        fn solve_same_input_same_output(cluster in arb_cluster(), vertices in arb_vertices()) {
            prop_assert_eq!(solve(&cluster, &vertices), solve(&cluster, &vertices));
        }
    }
}

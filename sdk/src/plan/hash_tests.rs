use super::*;
use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{Field, Schema};
use proptest::prelude::*;
use std::sync::Arc;

fn batch(ids: Vec<Option<i64>>, names: Vec<Option<String>>) -> RecordBatch {
    let seq: Vec<i64> = (0..ids.len() as i64).collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("seq", DataType::Int64, false),
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(Int64Array::from(seq)),
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(names)),
        ],
    )
    .unwrap()
}

/// These values are part of the state format (key groups of stored state).
/// If this test fails, the change breaks restoring every existing savepoint.
#[test]
fn hash_keys_golden_values_never_change() {
    let b = batch(
        vec![Some(0), Some(42), Some(-1), None],
        vec![
            Some("".into()),
            Some("user-42".into()),
            Some("é".into()),
            None,
        ],
    );
    assert_eq!(hash_keys(&b, &[1]).unwrap(), GOLDEN_INT64);
    assert_eq!(hash_keys(&b, &[2]).unwrap(), GOLDEN_UTF8);
    assert_eq!(hash_keys(&b, &[1, 2]).unwrap(), GOLDEN_ROWS);
}

const GOLDEN_INT64: [u64; 4] = [
    14374147212387527897,
    15395265915043915720,
    5841669975847748627,
    NULL_HASH,
];
const GOLDEN_UTF8: [u64; 4] = [
    3244421341483603138,
    5836184775705692621,
    17839895020865391795,
    NULL_HASH,
];
const GOLDEN_ROWS: [u64; 4] = [
    246168571294768359,
    5250108707565475411,
    5642850539347573145,
    5377294635745409996,
];

#[test]
fn hash_keys_fast_paths_follow_the_documented_encoding() {
    let b = batch(vec![Some(42)], vec![Some("user-42".into())]);
    assert_eq!(
        hash_keys(&b, &[1]).unwrap(),
        [xxh3_64(&42i64.to_le_bytes())]
    );
    assert_eq!(hash_keys(&b, &[2]).unwrap(), [xxh3_64(b"user-42")]);
}

#[test]
fn hash_keys_is_independent_of_batch_boundaries_and_slicing() {
    let b = batch(
        (0..100).map(Some).collect(),
        (0..100).map(|i| Some(format!("k{i}"))).collect(),
    );
    for keys in [&[1usize][..], &[2], &[1, 2]] {
        let whole = hash_keys(&b, keys).unwrap();
        let tail = hash_keys(&b.slice(37, 63), keys).unwrap();
        assert_eq!(&whole[37..], &tail[..]);
    }
}

#[test]
fn hash_keys_null_single_key_hashes_to_null_hash() {
    let b = batch(vec![None, Some(1)], vec![None, Some("a".into())]);
    assert_eq!(hash_keys(&b, &[1]).unwrap()[0], NULL_HASH);
    assert_eq!(hash_keys(&b, &[2]).unwrap()[0], NULL_HASH);
}

#[test]
fn hash_keys_bad_indices_are_errors() {
    let b = batch(vec![Some(1)], vec![Some("a".into())]);
    assert!(hash_keys(&b, &[]).is_err());
    assert!(hash_keys(&b, &[9]).is_err());
    assert!(partition_by_key(&b, &[1], 4, 0).is_err());
    assert!(partition_by_key(&b, &[1], 4, 5).is_err());
    assert!(partition_by_key(&b, &[1], 0, 1).is_err());
}

#[test]
fn partition_by_key_single_subtask_returns_the_batch() {
    let b = batch(vec![Some(1), Some(2)], vec![None, None]);
    let parts = partition_by_key(&b, &[1], 128, 1).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].0, 0);
    assert_eq!(parts[0].1.num_rows(), 2);
}

fn key_strategy() -> impl Strategy<Value = Vec<(Option<i64>, Option<String>)>> {
    proptest::collection::vec(
        (
            proptest::option::weighted(0.9, -50i64..50),
            proptest::option::weighted(0.9, "[a-c]{0,3}"),
        ),
        0..300,
    )
}

proptest! {
    /// Every row lands in exactly one part, in the subtask that owns its key group.
    #[test]
    fn partition_by_key_routes_every_row_once_to_its_owner(
        rows in key_strategy(),
        maxp in 1u32..300,
        p_frac in 0.0f64..1.0,
        key_choice in 0usize..3,
    ) {
        let p = ((f64::from(maxp) * p_frac) as u32).clamp(1, maxp);
        let keys: &[usize] = [&[1usize][..], &[2], &[1, 2]][key_choice];
        let (ids, names): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
        let b = batch(ids, names);
        let hashes = hash_keys(&b, keys).unwrap();
        let parts = partition_by_key(&b, keys, maxp, p).unwrap();
        let mut seen = vec![0u32; b.num_rows()];
        let mut last_target = None;
        for (target, part) in &parts {
            prop_assert!(*target < p);
            prop_assert!(last_target < Some(*target), "parts are in subtask order, one per subtask");
            last_target = Some(*target);
            prop_assert!(part.num_rows() > 0);
            let seqs = part.column(0).as_primitive::<Int64Type>();
            let mut prev = -1;
            for &s in seqs.values() {
                prop_assert!(s > prev, "rows keep their input order");
                prev = s;
                seen[s as usize] += 1;
                let kg = key_group_of_hash(hashes[s as usize], maxp);
                prop_assert_eq!(subtask_for_key_group(kg, maxp, p), *target);
            }
            // The rows in a part hash the same as in the whole batch.
            let part_hashes = hash_keys(part, keys).unwrap();
            for (i, &s) in seqs.values().iter().enumerate() {
                prop_assert_eq!(part_hashes[i], hashes[s as usize]);
            }
        }
        prop_assert!(seen.iter().all(|&n| n == 1));
    }
}

use super::*;

#[test]
fn sink_chunks_roundtrip_and_split_large_buffers() {
    let records: Vec<Rec> = (0..3000)
        .map(|i| Rec {
            key: (i % 3 != 0).then(|| format!("k{i}").into_bytes()),
            value: vec![b'v'; 700 + i % 5],
        })
        .collect();
    let chunks = encode_chunks(&records);
    assert!(
        chunks.len() > 1,
        "about 2 MiB of records make more than one chunk"
    );
    let mut back = Vec::new();
    for c in &chunks {
        decode_chunk(c, &mut back).unwrap();
    }
    assert_eq!(back, records);
    assert!(decode_chunk(&chunks[0][..chunks[0].len() - 1], &mut Vec::new()).is_none());
}

#[test]
fn sink_state_key_roundtrips() {
    let key = state_key("eddy-job-out-3", CheckpointId(258), 7);
    assert_eq!(
        parse_key(&key),
        Some(("eddy-job-out-3".to_string(), CheckpointId(258), 7))
    );
    assert_eq!(parse_key(b"short"), None);
}

#[test]
fn sink_json_lines_one_object_per_row() {
    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("amount", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(Float64Array::from(vec![Some(10.5), None])),
        ],
    )
    .unwrap();
    let lines = json_lines(&batch, 2).unwrap();
    assert_eq!(lines[0], br#"{"user_id":1,"amount":10.5}"#.to_vec());
    assert_eq!(lines[1], br#"{"user_id":2}"#.to_vec());
}

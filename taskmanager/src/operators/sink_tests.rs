use super::*;
use crate::operators::harness::{OperatorHarness, task_context, watermarks};
use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use std::sync::{Arc, Mutex};

fn batch() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new(
            "window_start",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("name", DataType::Utf8, true),
        Field::new("total", DataType::Float64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![7, 8])),
            Arc::new(TimestampMillisecondArray::from(vec![
                1_767_225_601_000,
                1_767_225_602_500,
            ])),
            Arc::new(StringArray::from(vec![Some("a\"b"), None])),
            Arc::new(Float64Array::from(vec![Some(1.5), None])),
        ],
    )
    .unwrap()
}

const LINES: [&str; 2] = [
    r#"{"user_id":7,"window_start":"2026-01-01T00:00:01.000Z","name":"a\"b","total":1.5}"#,
    r#"{"user_id":8,"window_start":"2026-01-01T00:00:02.500Z"}"#,
];

#[test]
fn file_sink_writes_json_lines_per_subtask() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested/out");
    let spec = FileSinkSpec {
        path: out.to_string_lossy().into_owned(),
        format: FileFormat::Jsonl,
    };
    let sink = FileSink::create(&NodeId::from("out"), &spec, &task_context(3, 4, false)).unwrap();
    assert_eq!(sink.path(), Some(out.join("part-3.jsonl").as_path()));
    let mut h = OperatorHarness::new(vec![Box::new(sink)]);
    h.batch(batch()).unwrap();
    assert_eq!(
        watermarks(&h.watermark(5).unwrap()),
        [5],
        "a sink forwards watermarks"
    );
    h.batch(batch().slice(0, 1)).unwrap();
    h.end().unwrap();
    let text = std::fs::read_to_string(out.join("part-3.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, [LINES[0], LINES[1], LINES[0]]);
    assert!(text.ends_with('\n'));
}

#[test]
fn file_sink_unwritable_path_is_a_connector_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let spec = FileSinkSpec {
        path: blocker.join("sub").to_string_lossy().into_owned(),
        format: FileFormat::Jsonl,
    };
    let e = FileSink::create(&NodeId::from("out"), &spec, &task_context(0, 1, false))
        .err()
        .unwrap();
    assert_eq!(e.class, FailureClass::Connector);
    assert!(
        e.message.contains("a-file") && e.message.contains("`out`"),
        "{}",
        e.message
    );
}

/// A writer tests can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn print_sink_prefixes_each_line_with_node_and_subtask() {
    let shared = Shared::default();
    let mut h = OperatorHarness::new(vec![Box::new(Print::to_writer(
        &NodeId::from("show"),
        1,
        Box::new(shared.clone()),
    ))]);
    h.batch(batch()).unwrap();
    let text = String::from_utf8(shared.0.lock().unwrap().clone()).unwrap();
    let expected = format!("show:1> {}\nshow:1> {}\n", LINES[0], LINES[1]);
    assert_eq!(text, expected);
}

#[test]
fn blackhole_counts_and_drops() {
    let mut sink = Blackhole::default();
    let mut c = Collector::new();
    sink.on_batch(batch(), &mut c).unwrap();
    sink.on_batch(batch(), &mut c).unwrap();
    assert!(c.is_empty());
    assert_eq!(sink.rows(), 4);
}

#[test]
fn blackhole_with_rate_throttles_after_a_batch() {
    let mut sink = Blackhole::new(&BlackholeSpec {
        rows_per_second: Some(10.0),
    });
    assert_eq!(
        sink.throttle(),
        None,
        "nothing accepted yet, nothing to wait for"
    );
    sink.on_batch(batch(), &mut Collector::new()).unwrap();
    // Two rows at 10 rows/s take 200 ms to accept.
    assert!(sink.throttle().is_some_and(|d| d > Duration::ZERO));
    let mut unlimited = Blackhole::new(&BlackholeSpec {
        rows_per_second: None,
    });
    unlimited.on_batch(batch(), &mut Collector::new()).unwrap();
    assert_eq!(unlimited.throttle(), None);
}

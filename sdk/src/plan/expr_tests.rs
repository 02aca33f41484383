use super::*;
use arrow::array::{
    Array, AsArray, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{Float64Type, Int64Type, TimeUnit};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("amount", DataType::Float64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("userId", DataType::Int64, false),
    ]))
}

fn batch() -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(vec![1, 150, -7])),
            Arc::new(TimestampMillisecondArray::from(vec![0, 1_000, 86_400_000])),
            Arc::new(Float64Array::from(vec![Some(10.0), None, Some(75.5)])),
            Arc::new(StringArray::from(vec![Some("ab"), Some("Cd"), None])),
            Arc::new(Int64Array::from(vec![7, 8, 9])),
        ],
    )
    .unwrap()
}

fn items(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

#[test]
fn compile_projection_issue_example_names_and_types() {
    let (exprs, out) = compile_projection(
        &schema(),
        &items(&[
            "id",
            "ts",
            "id % 1000 AS user_id",
            "CAST(id % 100 AS DOUBLE) AS amount2",
            "id % 10",
        ]),
    )
    .unwrap();
    let names: Vec<_> = out.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["id", "ts", "user_id", "amount2", "id % 10"]);
    assert_eq!(
        out.field(1).data_type(),
        &DataType::Timestamp(TimeUnit::Millisecond, None)
    );
    assert_eq!(out.field(2).data_type(), &DataType::Int64);
    assert_eq!(out.field(3).data_type(), &DataType::Float64);
    let b = batch();
    let amount = evaluate(&exprs[3], &b).unwrap();
    assert_eq!(
        amount.as_primitive::<Float64Type>().values(),
        &[1.0, 50.0, -7.0]
    );
}

#[test]
fn compile_predicate_float_against_int_literal_is_coerced() {
    let p = compile_predicate(&schema(), "amount >= 50").unwrap();
    let mask = evaluate(&p, &batch()).unwrap();
    let mask = mask.as_boolean();
    assert_eq!(
        (mask.value(0), mask.is_null(1), mask.value(2)),
        (false, true, true)
    );
}

#[test]
fn compile_projection_scalar_functions_evaluate() {
    let (exprs, out) = compile_projection(
        &schema(),
        &items(&[
            "abs(id) AS a",
            "upper(name) AS u",
            "concat(name, '-', CAST(id AS VARCHAR)) AS c",
            "coalesce(amount, 0) AS z",
            "date_trunc('day', ts) AS d",
            "EXTRACT(hour FROM ts) AS h",
        ]),
    )
    .unwrap();
    assert_eq!(
        out.field(2).data_type(),
        &DataType::Utf8,
        "strings stay Utf8, not Utf8View"
    );
    let b = batch();
    assert_eq!(
        evaluate(&exprs[0], &b)
            .unwrap()
            .as_primitive::<Int64Type>()
            .values(),
        &[1, 150, 7]
    );
    let u = evaluate(&exprs[1], &b).unwrap();
    assert_eq!(u.as_string::<i32>().value(1), "CD");
    let c = evaluate(&exprs[2], &b).unwrap();
    assert_eq!(c.as_string::<i32>().value(0), "ab-1");
    let z = evaluate(&exprs[3], &b).unwrap();
    assert_eq!(z.as_primitive::<Float64Type>().values(), &[10.0, 0.0, 75.5]);
    assert!(evaluate(&exprs[4], &b).is_ok());
    assert!(evaluate(&exprs[5], &b).is_ok());
}

#[test]
fn compile_projection_identifiers_are_case_sensitive() {
    let (_, out) =
        compile_projection(&schema(), &items(&["userId", "\"userId\" + 1 AS next"])).unwrap();
    assert_eq!(out.field(0).name(), "userId");
    let e = compile_projection(&schema(), &items(&["userid"])).unwrap_err();
    assert!(matches!(e, Error::UnknownColumn { .. }), "{e}");
}

#[test]
fn compile_projection_unknown_column_lists_available() {
    let e = compile_projection(&schema(), &items(&["id", "nope + 1 AS x"])).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, Error::UnknownColumn { column, .. } if column == "nope"),
        "{msg}"
    );
    assert!(
        msg.contains("nope + 1") && msg.contains("`amount`") && msg.contains("`userId`"),
        "{msg}"
    );
    assert!(msg.starts_with(char::is_lowercase), "{msg}");
}

#[test]
fn compile_projection_duplicate_names_are_rejected() {
    let e = compile_projection(&schema(), &items(&["id", "amount AS id"])).unwrap_err();
    assert!(
        matches!(&e, Error::DuplicateName { name, .. } if name == "id"),
        "{e}"
    );
}

#[test]
fn compile_projection_empty_and_wildcard_are_rejected() {
    assert_eq!(
        compile_projection(&schema(), &[]).unwrap_err(),
        Error::EmptyProjection
    );
    assert!(matches!(
        compile_projection(&schema(), &items(&["*"])).unwrap_err(),
        Error::Syntax { .. }
    ));
}

#[test]
fn compile_predicate_non_boolean_is_rejected() {
    let e = compile_predicate(&schema(), "id + 1").unwrap_err();
    assert!(
        matches!(
            e,
            Error::NotBoolean {
                data_type: DataType::Int64,
                ..
            }
        ),
        "{e}"
    );
}

const DEEP_PARENS: &str = "((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((id))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))";

#[test]
fn compile_garbage_sql_is_an_error_not_a_panic() {
    for text in [
        "",
        "(",
        "id +",
        "id id id",
        "SELECT * FROM t",
        "id; DROP TABLE x",
        "'unterminated",
        "sum(id)",
        "no_such_fn(id)",
        "CAST(name AS NOTATYPE)",
        "now() > ts",
        "\u{0}\u{1}💥",
        DEEP_PARENS,
    ] {
        let e = compile_predicate(&schema(), text).expect_err(text);
        assert!(e.to_string().starts_with(char::is_lowercase), "{e}");
        if text != DEEP_PARENS {
            // Parentheses are no expression node of their own in a projection item.
            let e = compile_projection(&schema(), &[text.to_string()]).expect_err(text);
            assert!(e.to_string().starts_with(char::is_lowercase), "{e}");
        }
    }
}

#[test]
fn compile_deep_expression_is_rejected_without_overflowing_the_stack() {
    let deep = std::iter::repeat_n("id", 5000)
        .collect::<Vec<_>>()
        .join(" + ");
    // A small stack, like a worker thread's, must be enough.
    let handle = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || compile_projection(&schema(), &[deep]).map(|_| ()))
        .unwrap();
    let e = handle.join().unwrap().unwrap_err();
    assert!(matches!(e, Error::Syntax { .. }), "{e}");
}

#[test]
fn evaluate_division_by_zero_is_an_eval_error() {
    let (exprs, _) = compile_projection(&schema(), &items(&["id / (id - id) AS boom"])).unwrap();
    let e = evaluate(&exprs[0], &batch()).unwrap_err();
    assert!(matches!(e, Error::Eval { .. }), "{e}");
    assert!(
        e.to_string().to_lowercase().contains("divide by zero"),
        "{e}"
    );
}

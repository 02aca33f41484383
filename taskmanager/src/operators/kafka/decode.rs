//! JSON record values into Arrow columns, with arrow-json's decoder and the
//! declared schema; one bad record does not spoil its batch.
//!
//! The fast path feeds every value of a poll to one decoder. If that fails
//! (a syntax or type error), or the values did not make exactly one row
//! each, the values are decoded again one by one to find the bad ones, and
//! the good ones are decoded together. Bad data is rare, so the slow path
//! costs nothing in the common case.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow_json::ReaderBuilder;
use arrow_json::reader::Decoder;

/// Why one record's value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the record has no value")]
    NoValue,
    #[error("the value is not one JSON object")]
    NotOneObject,
    #[error("the value does not decode: {0}")]
    Decode(String),
}

/// The good values as a batch, and the index of each bad one with its error.
#[derive(Debug)]
pub struct Decoded {
    /// One row per good value, in order.
    pub batch: RecordBatch,
    /// Index into the values of every good row, in order.
    pub good: Vec<usize>,
    pub bad: Vec<(usize, RecordError)>,
}

pub struct JsonDecoder {
    schema: SchemaRef,
}

impl JsonDecoder {
    pub fn new(schema: SchemaRef) -> Self {
        JsonDecoder { schema }
    }

    fn decoder(&self, rows: usize) -> Result<Decoder, ArrowError> {
        ReaderBuilder::new(self.schema.clone())
            .with_batch_size(rows + 1)
            .build_decoder()
    }

    /// Decodes `values` (`None`: a record without a value).
    pub fn decode(&self, values: &[Option<&[u8]>]) -> Result<Decoded, ArrowError> {
        if values.iter().all(Option::is_some)
            && let Ok(batch) = self.decode_all(values.iter().flatten().copied(), values.len())
            && batch.num_rows() == values.len()
        {
            return Ok(Decoded {
                batch,
                good: (0..values.len()).collect(),
                bad: Vec::new(),
            });
        }
        let mut good = Vec::with_capacity(values.len());
        let mut bad = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let Some(v) = v else {
                bad.push((i, RecordError::NoValue));
                continue;
            };
            match self.decode_all(std::iter::once(*v), 1) {
                Ok(b) if b.num_rows() == 1 => good.push(i),
                Ok(_) => bad.push((i, RecordError::NotOneObject)),
                Err(e) => bad.push((i, RecordError::Decode(e.to_string()))),
            }
        }
        let batch = self.decode_all(good.iter().filter_map(|&i| values[i]), good.len())?;
        Ok(Decoded { batch, good, bad })
    }

    /// One decoder over all `values`, each followed by a newline.
    fn decode_all<'a>(
        &self,
        values: impl Iterator<Item = &'a [u8]>,
        rows: usize,
    ) -> Result<RecordBatch, ArrowError> {
        let mut decoder = self.decoder(rows)?;
        for v in values {
            feed(&mut decoder, v)?;
            feed(&mut decoder, b"\n")?;
        }
        Ok(decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())))
    }
}

fn feed(decoder: &mut Decoder, mut buf: &[u8]) -> Result<(), ArrowError> {
    while !buf.is_empty() {
        let n = decoder.decode(buf)?;
        if n == 0 {
            // The batch is full: only when a value held more than one object.
            return Err(ArrowError::JsonError(
                "more JSON objects than records".into(),
            ));
        }
        buf = &buf[n..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
    use std::sync::Arc;

    fn decoder() -> JsonDecoder {
        JsonDecoder::new(Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ])))
    }

    #[test]
    fn decode_good_values_in_one_batch() {
        let values: Vec<Option<&[u8]>> = vec![
            Some(br#"{"id": 1, "ts": "2026-01-01T00:00:00Z"}"#),
            Some(br#"{"id": 2, "ts": 1000, "extra": [1]}"#),
            Some(br#"{"ts": 5}"#),
        ];
        let d = decoder().decode(&values).unwrap();
        assert!(d.bad.is_empty());
        assert_eq!(d.good, vec![0, 1, 2]);
        let ids = d.batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids, &Int64Array::from(vec![Some(1), Some(2), None]));
    }

    #[test]
    fn decode_bad_values_are_named_and_the_rest_kept() {
        let values: Vec<Option<&[u8]>> = vec![
            Some(br#"{"id": 1}"#),
            Some(b"{not json"),
            None,
            Some(br#"{"id": "seven"}"#),
            Some(br#"{"id": 4}{"id": 5}"#),
            Some(b"   "),
            Some(br#"{"id": 6}"#),
        ];
        let d = decoder().decode(&values).unwrap();
        assert_eq!(d.good, vec![0, 6]);
        let bad: Vec<usize> = d.bad.iter().map(|(i, _)| *i).collect();
        assert_eq!(bad, vec![1, 2, 3, 4, 5]);
        assert_eq!(d.bad[1].1, RecordError::NoValue);
        assert_eq!(d.bad[3].1, RecordError::NotOneObject);
        let ids = d.batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids, &Int64Array::from(vec![Some(1), Some(6)]));
    }
}

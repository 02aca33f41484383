//! A Kafka source's records: as read (before decoding), their metadata
//! columns, their dead letters, and the state key of a partition's offset.

use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use eddy_sdk::spec::KafkaMetadata;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use std::sync::Arc;

/// A partition, as the state key spells it: `topic \0 partition`.
pub type Tp = (String, i32);

pub fn state_key(tp: &Tp) -> Vec<u8> {
    let mut k = tp.0.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&tp.1.to_be_bytes());
    k
}

pub fn parse_state_key(key: &[u8]) -> Option<Tp> {
    let split = key.len().checked_sub(5)?;
    if key[split] != 0 {
        return None;
    }
    let partition = i32::from_be_bytes(key[split + 1..].try_into().ok()?);
    Some((String::from_utf8(key[..split].to_vec()).ok()?, partition))
}

/// One record as read, before decoding.
pub struct Raw {
    /// Index into the poll's partitions.
    pub tp: usize,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: Option<i64>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// The metadata column `m` of the records `rows` (`tps`: their partitions).
pub fn metadata_column(m: KafkaMetadata, rows: &[&Raw], tps: &[Tp]) -> ArrayRef {
    match m {
        KafkaMetadata::Key => {
            let mut b = StringBuilder::new();
            for r in rows {
                b.append_option(r.key.as_deref().map(String::from_utf8_lossy));
            }
            Arc::new(b.finish())
        }
        KafkaMetadata::Headers => {
            let mut b = StringBuilder::new();
            for r in rows {
                let obj: serde_json::Map<String, serde_json::Value> = r
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let v = v.as_deref().map_or(serde_json::Value::Null, |v| {
                            serde_json::Value::String(String::from_utf8_lossy(v).into())
                        });
                        (k.clone(), v)
                    })
                    .collect();
                b.append_value(serde_json::Value::Object(obj).to_string());
            }
            Arc::new(b.finish())
        }
        KafkaMetadata::Timestamp => {
            let mut b = TimestampMillisecondBuilder::new();
            for r in rows {
                b.append_option(r.timestamp);
            }
            Arc::new(b.finish())
        }
        KafkaMetadata::Topic => {
            let mut b = StringBuilder::new();
            for r in rows {
                b.append_value(&tps[r.tp].0);
            }
            Arc::new(b.finish())
        }
        KafkaMetadata::Partition => {
            let mut b = Int64Builder::new();
            for r in rows {
                b.append_value(i64::from(tps[r.tp].1));
            }
            Arc::new(b.finish())
        }
        KafkaMetadata::Offset => {
            let mut b = Int64Builder::new();
            for r in rows {
                b.append_value(r.offset);
            }
            Arc::new(b.finish())
        }
    }
}

/// The dead letter of `r`: its key and value as they were, with the error
/// and where the record came from as headers.
pub fn dead_letter_record<'a>(
    dlq: &'a str,
    r: &'a Raw,
    topic: &str,
    partition: i32,
    err: &super::decode::RecordError,
) -> BaseRecord<'a, [u8], [u8]> {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "eddy.error",
            value: Some(err.to_string().as_bytes()),
        })
        .insert(Header {
            key: "eddy.topic",
            value: Some(topic.as_bytes()),
        })
        .insert(Header {
            key: "eddy.partition",
            value: Some(partition.to_string().as_bytes()),
        })
        .insert(Header {
            key: "eddy.offset",
            value: Some(r.offset.to_string().as_bytes()),
        });
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(dlq).headers(headers);
    if let Some(k) = r.key.as_deref() {
        record = record.key(k);
    }
    if let Some(v) = r.value.as_deref() {
        record = record.payload(v);
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_state_key_roundtrips() {
        for tp in [
            ("orders".to_string(), 3),
            ("a.b".to_string(), 0),
            (String::new(), i32::MAX),
            ("t".to_string(), 256),
        ] {
            assert_eq!(parse_state_key(&state_key(&tp)), Some(tp));
        }
        assert_eq!(parse_state_key(b"no-zero"), None);
    }
}

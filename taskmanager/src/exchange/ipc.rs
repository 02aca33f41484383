//! Arrow IPC stream-format framing of batches: one frame = one record batch
//! message, the first frame of a channel also carrying the schema message.

use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

/// Encodes the batches of one channel. The writer is created from the first
/// batch's schema (so the schema message rides with the first frame) and
/// keeps its dictionary state across frames.
#[derive(Default)]
pub struct IpcEncoder {
    writer: Option<(SchemaRef, StreamWriter<Vec<u8>>)>,
}

impl IpcEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The frame bytes of `batch`.
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
        let (schema, writer) = match &mut self.writer {
            Some(w) => w,
            None => {
                let schema = batch.schema();
                let writer = StreamWriter::try_new(Vec::with_capacity(64 * 1024), &schema)?;
                self.writer.insert((schema, writer))
            }
        };
        // The stream format has one schema per stream; a batch of another
        // schema would decode as garbage on the other side.
        if !std::sync::Arc::ptr_eq(schema, &batch.schema()) && **schema != *batch.schema() {
            return Err(ArrowError::SchemaError(format!(
                "batch schema {:?} differs from the channel schema {:?}",
                batch.schema(),
                schema
            )));
        }
        writer.write(batch)?;
        // The frame owns its bytes; the writer starts the next frame in a
        // fresh buffer of the same capacity.
        let cap = writer.get_ref().capacity();
        Ok(std::mem::replace(writer.get_mut(), Vec::with_capacity(cap)))
    }
}

/// Decodes the frames of one channel, in order.
#[derive(Default)]
pub struct IpcDecoder {
    decoder: StreamDecoder,
}

impl IpcDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The one record batch a data frame holds. A frame that holds no
    /// complete batch, more than one, or bytes that are not Arrow IPC is an
    /// error: frames must never be silently dropped or merged.
    pub fn decode(&mut self, frame: Vec<u8>) -> Result<RecordBatch, ArrowError> {
        let mut buf = Buffer::from_vec(frame);
        let mut out = None;
        while !buf.is_empty() {
            if let Some(batch) = self.decoder.decode(&mut buf)? {
                if out.is_some() {
                    return Err(ArrowError::IpcError(
                        "frame holds more than one record batch".into(),
                    ));
                }
                out = Some(batch);
            }
        }
        out.ok_or_else(|| ArrowError::IpcError("frame holds no complete record batch".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..n)),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("v{i}")),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn encode_decode_several_frames_roundtrip() {
        let (mut enc, mut dec) = (IpcEncoder::new(), IpcDecoder::new());
        let first = enc.encode(&batch(3)).unwrap();
        let second = enc.encode(&batch(5)).unwrap();
        assert_eq!(dec.decode(first).unwrap(), batch(3));
        assert_eq!(dec.decode(second).unwrap(), batch(5));
    }

    #[test]
    fn decode_garbage_bytes_is_an_error() {
        let mut dec = IpcDecoder::new();
        assert!(
            dec.decode(vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8])
                .is_err()
        );
    }

    #[test]
    fn decode_truncated_frame_is_an_error() {
        let mut enc = IpcEncoder::new();
        let mut frame = enc.encode(&batch(3)).unwrap();
        frame.truncate(frame.len() / 2);
        assert!(IpcDecoder::new().decode(frame).is_err());
    }

    #[test]
    fn encode_other_schema_is_an_error() {
        let mut enc = IpcEncoder::new();
        enc.encode(&batch(1)).unwrap();
        let other = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        assert!(enc.encode(&other).is_err());
    }
}

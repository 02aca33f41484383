//! The built-in sinks: `print` (JSON lines on stdout, prefixed with
//! `<node>:<subtask>> ` like Flink's print sink), `blackhole` (counts and
//! drops, optionally at a limited rate) and `file`
//! (`<path>/part-<subtask>.jsonl`).
//!
//! Rows are written with arrow-json's line-delimited writer. Timestamps are
//! rendered as RFC 3339 strings with milliseconds: a timestamp without a
//! time zone is taken as UTC (`2026-01-01T00:00:01.000Z`), one with a zone
//! keeps its offset. Null values are left out of the JSON object.
//!
//! Without checkpoints, the file sink truncates its part file when it starts,
//! buffers writes, flushes when the watermark advances (at most once per
//! second) and at the end of input, where it also syncs the file to disk:
//! after a restart, a part file holds what was written since that restart.
//! With checkpoints it writes transactionally ([`super::file_commit`]): output
//! becomes visible only once the checkpoint covering it is committed.

use super::TaskContext;
use super::file_commit::Transactional;
use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use arrow_json::writer::{LineDelimited, Writer, WriterBuilder};
use eddy_sdk::FailureClass;
use eddy_sdk::ids::{CheckpointId, NodeId};
use eddy_sdk::operator::{
    Barrier, Collector, Operator, OperatorError, RestoredState, StateChanges,
};
use eddy_sdk::spec::{BlackholeSpec, FileFormat, FileSinkSpec};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Format of timestamps without a time zone (taken as UTC).
const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";
/// Format of timestamps with a time zone.
const TIMESTAMP_TZ_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3f%:z";
/// The file sink flushes on watermarks at most this often.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) fn json_writer<W: Write>(w: W) -> Writer<W, LineDelimited> {
    WriterBuilder::new()
        .with_timestamp_format(TIMESTAMP_FORMAT.to_string())
        .with_timestamp_tz_format(TIMESTAMP_TZ_FORMAT.to_string())
        .build::<W, LineDelimited>(w)
}

/// `print`: every row as a JSON line on stdout (or any writer, for tests).
pub struct Print {
    prefix: Vec<u8>,
    target: Box<dyn Write + Send>,
    /// One batch's JSON, reused.
    buf: Vec<u8>,
    /// One batch's prefixed lines, reused, written at once.
    lines: Vec<u8>,
}

impl Print {
    pub fn stdout(node: &NodeId, subtask: u32) -> Self {
        Self::to_writer(node, subtask, Box::new(std::io::stdout()))
    }

    pub fn to_writer(node: &NodeId, subtask: u32, target: Box<dyn Write + Send>) -> Self {
        Print {
            prefix: format!("{node}:{subtask}> ").into_bytes(),
            target,
            buf: Vec::new(),
            lines: Vec::new(),
        }
    }
}

impl Operator for Print {
    fn on_batch(&mut self, batch: RecordBatch, _out: &mut Collector) -> Result<(), OperatorError> {
        self.buf.clear();
        let mut w = json_writer(&mut self.buf);
        w.write(&batch)
            .and_then(|()| w.finish())
            .map_err(|e| encode_error("print", e))?;
        self.lines.clear();
        for line in self.buf.split_inclusive(|&b| b == b'\n') {
            self.lines.extend_from_slice(&self.prefix);
            self.lines.extend_from_slice(line);
        }
        self.target
            .write_all(&self.lines)
            .and_then(|()| self.target.flush())
            .map_err(|e| {
                OperatorError::new(FailureClass::Connector, "print sink cannot write to stdout")
                    .with_source(e)
            })
    }
}

/// `blackhole`: counts rows and drops them. With `rows_per_second` it stands
/// in for a slow system: after each batch it asks the runtime (through
/// [`Operator::throttle`]) to wait until the batch would have been accepted
/// at that rate, so its input backs up and backpressures the producers.
#[derive(Debug, Default)]
pub struct Blackhole {
    rows: u64,
    /// Rows per second this subtask accepts; unlimited when `None`.
    rate: Option<f64>,
    /// When the rows accepted so far are paid for at `rate`.
    busy_until: Option<Instant>,
}

impl Blackhole {
    pub fn new(spec: &BlackholeSpec) -> Self {
        let rate = spec.rows_per_second.filter(|r| *r > 0.0 && r.is_finite());
        Blackhole {
            rows: 0,
            rate,
            busy_until: None,
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }
}

impl Operator for Blackhole {
    fn on_batch(&mut self, batch: RecordBatch, _out: &mut Collector) -> Result<(), OperatorError> {
        let n = batch.num_rows() as u64;
        self.rows += n;
        if let Some(rate) = self.rate {
            // Virtual time: a batch is paid for from when the previous one was
            // (or now, after an idle gap, so idling earns no burst).
            let now = Instant::now();
            let from = self.busy_until.filter(|t| *t > now).unwrap_or(now);
            self.busy_until = Some(from + Duration::from_secs_f64(n as f64 / rate));
        }
        Ok(())
    }

    fn throttle(&mut self) -> Option<Duration> {
        let wait = self.busy_until?.checked_duration_since(Instant::now())?;
        (!wait.is_zero()).then_some(wait)
    }
}

/// `file`: JSON lines. Without checkpoints, in `<path>/part-<subtask>.jsonl`
/// (truncated at start); with checkpoints, transactionally (see
/// [`super::file_commit`]).
pub struct FileSink {
    node: NodeId,
    mode: Mode,
    last_flush: Instant,
    dirty: bool,
}

enum Mode {
    /// One part file per subtask, rewritten by every attempt.
    Plain {
        path: PathBuf,
        writer: Writer<BufWriter<File>, LineDelimited>,
    },
    /// Two-phase commit: in-progress files, pending at a barrier, visible
    /// once the checkpoint is committed.
    Transactional(Box<Transactional>),
}

impl FileSink {
    /// Creates the directory; without checkpoints also the part file
    /// (truncating it). With checkpoints, files are created as data comes.
    pub fn create(
        node: &NodeId,
        spec: &FileSinkSpec,
        ctx: &TaskContext,
    ) -> Result<Self, OperatorError> {
        match spec.format {
            FileFormat::Jsonl => {}
        }
        let dir = Path::new(&spec.path);
        std::fs::create_dir_all(dir)
            .map_err(|e| io_error(node, dir, "cannot create directory", e))?;
        let mode = if ctx.exactly_once {
            Mode::Transactional(Box::new(Transactional::new(node, dir, ctx)))
        } else {
            let path = dir.join(format!("part-{}.jsonl", ctx.subtask));
            let file =
                File::create(&path).map_err(|e| io_error(node, &path, "cannot create", e))?;
            Mode::Plain {
                path,
                writer: json_writer(BufWriter::new(file)),
            }
        };
        tracing::debug!(node = %node, subtask = ctx.subtask, dir = %dir.display(), "file sink opened");
        Ok(FileSink {
            node: node.clone(),
            mode,
            last_flush: Instant::now(),
            dirty: false,
        })
    }

    /// The part file (plain mode) or the current in-progress file.
    pub fn path(&self) -> Option<&Path> {
        match &self.mode {
            Mode::Plain { path, .. } => Some(path),
            Mode::Transactional(t) => t.current_path(),
        }
    }

    fn flush(&mut self) -> Result<(), OperatorError> {
        match &mut self.mode {
            Mode::Plain { path, writer } => writer
                .get_mut()
                .flush()
                .map_err(|e| io_error(&self.node, path, "cannot write", e))?,
            Mode::Transactional(t) => t.flush()?,
        }
        self.last_flush = Instant::now();
        self.dirty = false;
        Ok(())
    }
}

impl Operator for FileSink {
    fn on_batch(&mut self, batch: RecordBatch, _out: &mut Collector) -> Result<(), OperatorError> {
        let (result, path) = match &mut self.mode {
            Mode::Plain { path, writer } => (writer.write(&batch), path.clone()),
            Mode::Transactional(t) => {
                let (writer, path) = t.writer()?;
                (writer.write(&batch), path)
            }
        };
        match result {
            Ok(()) => {
                self.dirty = true;
                Ok(())
            }
            // arrow-json reports I/O failures of the underlying writer as IoError.
            Err(ArrowError::IoError(_, e)) => Err(io_error(&self.node, &path, "cannot write", e)),
            Err(e) => Err(encode_error("file", e)),
        }
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<(), OperatorError> {
        if self.dirty && self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.flush()?;
        }
        out.watermark(watermark);
        Ok(())
    }

    fn on_end(&mut self, _out: &mut Collector) -> Result<(), OperatorError> {
        match &mut self.mode {
            Mode::Plain { path, writer } => {
                writer.finish().map_err(|e| encode_error("file", e))?;
                let file = writer.get_mut();
                file.flush()
                    .and_then(|()| file.get_ref().sync_data())
                    .map_err(|e| io_error(&self.node, path, "cannot write", e))
            }
            Mode::Transactional(t) => t.end(),
        }
    }

    fn snapshot_state(
        &mut self,
        barrier: &Barrier,
        changes: &mut StateChanges,
    ) -> Result<(), OperatorError> {
        match &mut self.mode {
            Mode::Plain { .. } => Ok(()),
            Mode::Transactional(t) => {
                self.dirty = false;
                t.pre_commit(barrier.checkpoint, changes)
            }
        }
    }

    fn restore_state(&mut self, state: RestoredState) -> Result<(), OperatorError> {
        match &mut self.mode {
            Mode::Plain { .. } => Ok(()),
            Mode::Transactional(t) => t.restore(state),
        }
    }

    fn notify_checkpoint_complete(
        &mut self,
        checkpoint: CheckpointId,
    ) -> Result<(), OperatorError> {
        match &mut self.mode {
            Mode::Plain { .. } => Ok(()),
            Mode::Transactional(t) => t.commit_up_to(checkpoint),
        }
    }
}

pub(crate) fn encode_error(sink: &str, e: ArrowError) -> OperatorError {
    OperatorError::new(
        FailureClass::BadData,
        format!("{sink} sink cannot encode a batch as json"),
    )
    .with_source(e)
}

pub(super) fn io_error(node: &NodeId, path: &Path, what: &str, e: std::io::Error) -> OperatorError {
    OperatorError::new(
        FailureClass::Connector,
        format!("file sink `{node}` {what} {}", path.display()),
    )
    .with_source(e)
}

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;

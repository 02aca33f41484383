//! The one error-code table, shared by REST, gRPC and the CLI, and the classes
//! of job failures.
//!
//! Codes are a restricted set: add a variant only when a client must react to it
//! differently from every existing one.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What went wrong, as a client can act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body could not be parsed (bad JSON/YAML, wrong types).
    BadRequest,
    /// The job spec parsed but is not a valid job (names the node and field).
    InvalidSpec,
    /// The job needs more slots than the cluster has.
    InsufficientSlots,
    /// No such job, TaskManager or route.
    NotFound,
    /// The request conflicts with the current state (e.g. cancel a finished job).
    Conflict,
    /// This JobManager is not the leader; the body names the leader if known.
    NotLeader,
    /// No JobManager leads right now (an election is under way, or the group
    /// lost its quorum): nothing was done, so any request may be retried
    /// after the `Retry-After` header's seconds.
    NoLeader,
    /// Temporarily unable to serve (shutting down, a write whose outcome is
    /// unknown): check, then retry later.
    Unavailable,
    /// A bug or an unexpected failure on the server side.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order the REST reference lists them.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadRequest,
        ErrorCode::InvalidSpec,
        ErrorCode::InsufficientSlots,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::NotLeader,
        ErrorCode::NoLeader,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidSpec => "invalid_spec",
            ErrorCode::InsufficientSlots => "insufficient_slots",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::NoLeader => "no_leader",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status REST answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidSpec | ErrorCode::InsufficientSlots => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::NotLeader => 421,
            ErrorCode::NoLeader | ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// The CLI's exit code for this error (0 is success, 1 is a local failure).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidSpec | ErrorCode::InsufficientSlots => 2,
            ErrorCode::NotFound => 3,
            ErrorCode::Conflict => 4,
            ErrorCode::NotLeader | ErrorCode::NoLeader | ErrorCode::Unavailable => 5,
            ErrorCode::Internal => 6,
        }
    }

    /// The gRPC status code name (tonic's `Code`) for this error.
    pub fn grpc_code(self) -> i32 {
        // Numbers are gRPC's canonical codes.
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidSpec => 3, // INVALID_ARGUMENT
            ErrorCode::InsufficientSlots => 8,                   // RESOURCE_EXHAUSTED
            ErrorCode::NotFound => 5,                            // NOT_FOUND
            ErrorCode::Conflict => 9,                            // FAILED_PRECONDITION
            ErrorCode::NotLeader | ErrorCode::NoLeader | ErrorCode::Unavailable => 14, // UNAVAILABLE
            ErrorCode::Internal => 13,                                                 // INTERNAL
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every REST error: `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

/// An error as REST returns it and the CLI prints it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The job-spec node the error is about, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The field (within the node, or of the job) the error is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The current leader's REST URL, with `not_leader`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            node: None,
            field: None,
            leader: None,
        }
    }
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

/// Why a job or task failed, as Flink operators triage it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// A bug in an operator (including a custom one).
    UserCode,
    /// A record the job cannot process.
    BadData,
    /// An external system (Kafka, object storage, files) failed.
    Connector,
    /// A process, host or network failed (e.g. a TaskManager was lost).
    Infrastructure,
    /// Out of memory, disk or slots.
    Resources,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::UserCode => "user_code",
            FailureClass::BadData => "bad_data",
            FailureClass::Connector => "connector",
            FailureClass::Infrastructure => "infrastructure",
            FailureClass::Resources => "resources",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "user_code" => FailureClass::UserCode,
            "bad_data" => FailureClass::BadData,
            "connector" => FailureClass::Connector,
            "infrastructure" => FailureClass::Infrastructure,
            "resources" => FailureClass::Resources,
            _ => return None,
        })
    }
    /// Whether restarting can help (infrastructure and connectors usually recover).
    pub fn retryable(self) -> bool {
        matches!(
            self,
            FailureClass::Infrastructure | FailureClass::Connector | FailureClass::Resources
        )
    }
}

/// The error and its `source()` chain, outermost first, for logs and REST.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out
}

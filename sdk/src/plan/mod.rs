//! Planning: everything both servers derive from a job spec beyond its
//! structure. [`expr`] compiles the SQL of `project` and `filter` nodes with
//! DataFusion, [`schema`] infers the Arrow schema of every node's output and
//! checks columns, and [`hash`] is the one key-hashing function that routes
//! rows to key groups.
//!
//! The JobManager calls [`validate`] on submission and the TaskManager calls it
//! again on deploy, so both always agree on schemas.

pub mod expr;
pub mod hash;
pub mod schema;

pub use expr::{ExprError, compile_predicate, compile_projection};
pub use schema::{Schemas, infer_schemas, validate};

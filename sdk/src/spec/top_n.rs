//! The `top_n` node: per group of rows sharing the `partition_by` columns,
//! the `n` rows with the highest (or lowest) `order_by` value, emitted once
//! event time completes the group. Column checks live in
//! `plan::schema::top_n`; the operator in the TaskManager.

use serde::{Deserialize, Serialize};

/// `top_n`: the best `n` rows of every group, by event time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopNSpec {
    /// Group columns; rows are hashed on them into key groups. They must
    /// include the `event_time` column, so a group has one event time.
    pub partition_by: Vec<String>,
    /// The ranking column (numeric or timestamp); rows where it is null are
    /// not ranked.
    pub order_by: String,
    /// `desc` (default): highest values first; `asc`: lowest first.
    #[serde(default)]
    pub order: SortOrder,
    /// Rows kept per group (at least 1).
    pub n: u32,
    /// Keep every row tied with the n-th (SQL `RANK() <= n`); with `false`,
    /// exactly `n` rows, the first to arrive winning a tie.
    #[serde(default = "default_with_ties")]
    pub with_ties: bool,
    /// When a group is complete: see [`TopNEventTime`].
    pub event_time: TopNEventTime,
    /// When set, the output gains an Int64 column of this name holding each
    /// row's SQL `RANK()` within its group (1 + rows strictly ahead of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_column: Option<String>,
}

/// A group's event time: a Timestamp(ms) or Int64 column whose value is an
/// exclusive end (as `window_end` is). A group with value `v` is emitted once
/// the watermark reaches `v - 1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopNEventTime {
    pub column: String,
}

/// Which end of `order_by` wins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortOrder {
    #[default]
    Desc,
    Asc,
}

fn default_with_ties() -> bool {
    true
}

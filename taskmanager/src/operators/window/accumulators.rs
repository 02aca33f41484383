//! Aggregate state of one window, column-oriented: one vector per aggregate,
//! indexed by the window's group (key) number. The `aggregate` operator
//! keeps its per-key state in the same accumulators, indexed by key.
//!
//! An update takes the rows of a batch that belong to the window and their
//! group numbers and folds them in with one monomorphic loop per aggregate:
//! the kind is matched once per batch, never per row. Values accumulate as
//! i64 (integers, timestamps) or f64 (floats, averages) and are cast to the
//! declared output type when the window fires. Nulls are ignored, as SQL
//! aggregates do; a group that saw no value yields null (`count` yields 0).
//! Integer sums wrap on overflow instead of failing the job.

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array};
use arrow::buffer::NullBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use arrow::error::ArrowError;
use eddy_sdk::plan::schema::{AggregateLayout, is_float, is_integer, is_timestamp};
use eddy_sdk::spec::AggregateFn;
use std::sync::Arc;

/// What an aggregate accumulates, decided once from its layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    CountRows,
    CountValid,
    SumI64,
    SumF64,
    MinI64,
    MaxI64,
    MinF64,
    MaxF64,
    Avg,
}

impl Kind {
    pub fn of(layout: &AggregateLayout) -> Kind {
        let t = layout.input.as_ref().map(|(_, t)| t);
        let int_like = t.is_some_and(|t| is_integer(t) || is_timestamp(t));
        match layout.func {
            AggregateFn::Count if t.is_none() => Kind::CountRows,
            AggregateFn::Count => Kind::CountValid,
            AggregateFn::Sum if int_like => Kind::SumI64,
            AggregateFn::Sum => Kind::SumF64,
            AggregateFn::Min if int_like => Kind::MinI64,
            AggregateFn::Min => Kind::MinF64,
            AggregateFn::Max if int_like => Kind::MaxI64,
            AggregateFn::Max => Kind::MaxF64,
            AggregateFn::Avg => Kind::Avg,
        }
    }

    /// Prepares this aggregate's input column of a batch (one cast per batch).
    pub fn prepare(self, column: Option<&ArrayRef>) -> Result<Prepared, ArrowError> {
        let Some(column) = column else {
            return Ok(Prepared::Rows);
        };
        Ok(match self {
            Kind::CountRows => Prepared::Rows,
            Kind::CountValid => Prepared::Valid(column.logical_nulls()),
            Kind::SumI64 | Kind::MinI64 | Kind::MaxI64 => Prepared::I64(
                cast(column, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            ),
            Kind::SumF64 | Kind::MinF64 | Kind::MaxF64 | Kind::Avg => {
                debug_assert!(is_float(column.data_type()) || is_integer(column.data_type()));
                Prepared::F64(
                    cast(column, &DataType::Float64)?
                        .as_primitive::<Float64Type>()
                        .clone(),
                )
            }
        })
    }
}

/// One batch's input to an aggregate.
pub enum Prepared {
    /// Count rows: no input column.
    Rows,
    /// Count non-null values: only the validity matters.
    Valid(Option<NullBuffer>),
    I64(Int64Array),
    F64(Float64Array),
}

/// The state of one aggregate over all groups of one window.
#[derive(Debug)]
pub enum Acc {
    Count(Vec<i64>),
    I64 {
        kind: Kind,
        v: Vec<i64>,
        seen: Vec<bool>,
    },
    F64 {
        kind: Kind,
        v: Vec<f64>,
        seen: Vec<bool>,
    },
    Avg {
        sum: Vec<f64>,
        count: Vec<i64>,
    },
}

impl Acc {
    pub fn new(kind: Kind) -> Acc {
        match kind {
            Kind::CountRows | Kind::CountValid => Acc::Count(Vec::new()),
            Kind::SumI64 | Kind::MinI64 | Kind::MaxI64 => Acc::I64 {
                kind,
                v: Vec::new(),
                seen: Vec::new(),
            },
            Kind::SumF64 | Kind::MinF64 | Kind::MaxF64 => Acc::F64 {
                kind,
                v: Vec::new(),
                seen: Vec::new(),
            },
            Kind::Avg => Acc::Avg {
                sum: Vec::new(),
                count: Vec::new(),
            },
        }
    }

    /// Folds `rows` of a batch into their `groups` (parallel slices);
    /// `num_groups` is the window's group count after assigning them.
    pub fn update(&mut self, input: &Prepared, rows: &[u32], groups: &[u32], num_groups: usize) {
        debug_assert_eq!(rows.len(), groups.len());
        match (self, input) {
            (Acc::Count(c), Prepared::Rows) => {
                c.resize(num_groups, 0);
                for &g in groups {
                    c[g as usize] += 1;
                }
            }
            (Acc::Count(c), Prepared::Valid(nulls)) => {
                c.resize(num_groups, 0);
                match nulls {
                    None => groups.iter().for_each(|&g| c[g as usize] += 1),
                    Some(n) => {
                        for (&r, &g) in rows.iter().zip(groups) {
                            c[g as usize] += i64::from(n.is_valid(r as usize));
                        }
                    }
                }
            }
            (Acc::I64 { kind, v, seen }, Prepared::I64(values)) => match kind {
                Kind::SumI64 => fold(v, seen, values, rows, groups, num_groups, i64::wrapping_add),
                Kind::MinI64 => fold(v, seen, values, rows, groups, num_groups, std::cmp::min),
                _ => fold(v, seen, values, rows, groups, num_groups, std::cmp::max),
            },
            (Acc::F64 { kind, v, seen }, Prepared::F64(values)) => match kind {
                Kind::SumF64 => fold(v, seen, values, rows, groups, num_groups, |a, b| a + b),
                // total_cmp orders NaN above every number, as SQL engines do.
                Kind::MinF64 => fold(v, seen, values, rows, groups, num_groups, |a, b| {
                    if b.total_cmp(&a).is_lt() { b } else { a }
                }),
                _ => fold(v, seen, values, rows, groups, num_groups, |a, b| {
                    if b.total_cmp(&a).is_gt() { b } else { a }
                }),
            },
            (Acc::Avg { sum, count }, Prepared::F64(values)) => {
                sum.resize(num_groups, 0.0);
                count.resize(num_groups, 0);
                let vals = values.values();
                let nulls = values.nulls().filter(|n| n.null_count() > 0);
                for (&r, &g) in rows.iter().zip(groups) {
                    let (r, g) = (r as usize, g as usize);
                    if nulls.is_none_or(|n| n.is_valid(r)) {
                        sum[g] += vals[r];
                        count[g] += 1;
                    }
                }
            }
            (acc, _) => unreachable!(
                "Kind::prepare pairs every aggregate with its input, but {acc:?} got another"
            ),
        }
    }

    /// The aggregate's output column for the window's groups.
    pub fn finish(self, num_groups: usize, output_type: &DataType) -> Result<ArrayRef, ArrowError> {
        let array: ArrayRef = match self {
            Acc::Count(mut c) => {
                c.resize(num_groups, 0);
                Arc::new(Int64Array::from(c))
            }
            Acc::I64 {
                mut v, mut seen, ..
            } => {
                v.resize(num_groups, 0);
                seen.resize(num_groups, false);
                Arc::new(Int64Array::new(v.into(), Some(NullBuffer::from(seen))))
            }
            Acc::F64 {
                mut v, mut seen, ..
            } => {
                v.resize(num_groups, 0.0);
                seen.resize(num_groups, false);
                Arc::new(Float64Array::new(v.into(), Some(NullBuffer::from(seen))))
            }
            Acc::Avg { mut sum, mut count } => {
                sum.resize(num_groups, 0.0);
                count.resize(num_groups, 0);
                let nulls = NullBuffer::from_iter(count.iter().map(|&c| c > 0));
                let avg: Vec<f64> = sum
                    .iter()
                    .zip(&count)
                    .map(|(&s, &c)| if c > 0 { s / c as f64 } else { 0.0 })
                    .collect();
                Arc::new(Float64Array::new(avg.into(), Some(nulls)))
            }
        };
        if array.data_type() == output_type {
            Ok(array)
        } else {
            cast(&array, output_type)
        }
    }
}

/// Group-wise operations for session windows, whose groups are session
/// slots: merging two sessions, reading some slots out, and recycling a slot.
impl Acc {
    /// Folds group `from` into group `into` (two sessions merged); `from` is
    /// left as it was (the caller resets it before reusing the slot).
    pub fn merge(&mut self, into: usize, from: usize) {
        let need = into.max(from) + 1;
        match self {
            Acc::Count(c) => {
                grow(c, need, 0);
                c[into] += c[from];
            }
            Acc::I64 { kind, v, seen } => {
                grow(v, need, 0);
                grow(seen, need, false);
                if seen[from] {
                    v[into] = if seen[into] {
                        match kind {
                            Kind::SumI64 => v[into].wrapping_add(v[from]),
                            Kind::MinI64 => v[into].min(v[from]),
                            _ => v[into].max(v[from]),
                        }
                    } else {
                        v[from]
                    };
                    seen[into] = true;
                }
            }
            Acc::F64 { kind, v, seen } => {
                grow(v, need, 0.0);
                grow(seen, need, false);
                if seen[from] {
                    let (a, b) = (v[into], v[from]);
                    v[into] = if !seen[into] {
                        b
                    } else {
                        match kind {
                            Kind::SumF64 => a + b,
                            Kind::MinF64 if b.total_cmp(&a).is_lt() => b,
                            Kind::MaxF64 if b.total_cmp(&a).is_gt() => b,
                            _ => a,
                        }
                    };
                    seen[into] = true;
                }
            }
            Acc::Avg { sum, count } => {
                grow(sum, need, 0.0);
                grow(count, need, 0);
                sum[into] += sum[from];
                count[into] += count[from];
            }
        }
    }

    /// Empties group `g` so its slot can hold a new session.
    pub fn reset(&mut self, g: usize) {
        match self {
            Acc::Count(c) => {
                if let Some(x) = c.get_mut(g) {
                    *x = 0;
                }
            }
            Acc::I64 { v, seen, .. } => {
                if let (Some(x), Some(s)) = (v.get_mut(g), seen.get_mut(g)) {
                    *x = 0;
                    *s = false;
                }
            }
            Acc::F64 { v, seen, .. } => {
                if let (Some(x), Some(s)) = (v.get_mut(g), seen.get_mut(g)) {
                    *x = 0.0;
                    *s = false;
                }
            }
            Acc::Avg { sum, count } => {
                if let (Some(x), Some(c)) = (sum.get_mut(g), count.get_mut(g)) {
                    *x = 0.0;
                    *c = 0;
                }
            }
        }
    }

    /// The output column of `groups`, in that order (groups never updated
    /// read as empty).
    pub fn gather(&self, groups: &[u32], output_type: &DataType) -> Result<ArrayRef, ArrowError> {
        let at = |g: &u32| *g as usize;
        let array: ArrayRef = match self {
            Acc::Count(c) => Arc::new(Int64Array::from_iter_values(
                groups.iter().map(|g| c.get(at(g)).copied().unwrap_or(0)),
            )),
            Acc::I64 { v, seen, .. } => {
                Arc::new(Int64Array::from_iter(groups.iter().map(|g| {
                    seen.get(at(g)).copied().unwrap_or(false).then(|| v[at(g)])
                })))
            }
            Acc::F64 { v, seen, .. } => {
                Arc::new(Float64Array::from_iter(groups.iter().map(|g| {
                    seen.get(at(g)).copied().unwrap_or(false).then(|| v[at(g)])
                })))
            }
            Acc::Avg { sum, count } => Arc::new(Float64Array::from_iter(groups.iter().map(|g| {
                match count.get(at(g)).copied().unwrap_or(0) {
                    0 => None,
                    c => Some(sum[at(g)] / c as f64),
                }
            }))),
        };
        if array.data_type() == output_type {
            Ok(array)
        } else {
            cast(&array, output_type)
        }
    }
}

/// Checkpointing: one group's accumulator as bytes, and back.
impl Acc {
    /// Appends group `g`'s value (a group never updated writes as empty).
    pub fn export(&self, g: usize, out: &mut Vec<u8>) {
        match self {
            Acc::Count(c) => out.extend_from_slice(&c.get(g).copied().unwrap_or(0).to_le_bytes()),
            Acc::I64 { v, seen, .. } => {
                out.push(u8::from(seen.get(g).copied().unwrap_or(false)));
                out.extend_from_slice(&v.get(g).copied().unwrap_or(0).to_le_bytes());
            }
            Acc::F64 { v, seen, .. } => {
                out.push(u8::from(seen.get(g).copied().unwrap_or(false)));
                out.extend_from_slice(&v.get(g).copied().unwrap_or(0.0).to_bits().to_le_bytes());
            }
            Acc::Avg { sum, count } => {
                out.extend_from_slice(&sum.get(g).copied().unwrap_or(0.0).to_bits().to_le_bytes());
                out.extend_from_slice(&count.get(g).copied().unwrap_or(0).to_le_bytes());
            }
        }
    }

    /// Bytes [`Acc::export`] writes per group.
    pub fn encoded_len(&self) -> usize {
        match self {
            Acc::Count(_) => 8,
            Acc::I64 { .. } | Acc::F64 { .. } => 9,
            Acc::Avg { .. } => 16,
        }
    }

    /// Sets group `g` from the bytes [`Acc::export`] wrote, consuming them
    /// from `input`; `None` when `input` is too short.
    pub fn import(&mut self, g: usize, input: &mut &[u8]) -> Option<()> {
        let need = g + 1;
        match self {
            Acc::Count(c) => {
                grow(c, need, 0);
                c[g] = i64::from_le_bytes(take(input)?);
            }
            Acc::I64 { v, seen, .. } => {
                grow(v, need, 0);
                grow(seen, need, false);
                seen[g] = take::<1>(input)?[0] != 0;
                v[g] = i64::from_le_bytes(take(input)?);
            }
            Acc::F64 { v, seen, .. } => {
                grow(v, need, 0.0);
                grow(seen, need, false);
                seen[g] = take::<1>(input)?[0] != 0;
                v[g] = f64::from_bits(u64::from_le_bytes(take(input)?));
            }
            Acc::Avg { sum, count } => {
                grow(sum, need, 0.0);
                grow(count, need, 0);
                sum[g] = f64::from_bits(u64::from_le_bytes(take(input)?));
                count[g] = i64::from_le_bytes(take(input)?);
            }
        }
        Some(())
    }
}

/// The first `N` bytes of `input`, consumed.
pub(crate) fn take<const N: usize>(input: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = input.split_first_chunk::<N>()?;
    *input = rest;
    Some(*head)
}

fn grow<T: Clone>(v: &mut Vec<T>, len: usize, fill: T) {
    if v.len() < len {
        v.resize(len, fill);
    }
}

/// `acc[g] = combine(acc[g], value)` for every valid row; the first value of
/// a group initializes it.
fn fold<T, A>(
    acc: &mut Vec<T::Native>,
    seen: &mut Vec<bool>,
    values: &arrow::array::PrimitiveArray<T>,
    rows: &[u32],
    groups: &[u32],
    num_groups: usize,
    combine: A,
) where
    T: arrow::datatypes::ArrowPrimitiveType,
    A: Fn(T::Native, T::Native) -> T::Native,
{
    acc.resize(num_groups, T::Native::default());
    seen.resize(num_groups, false);
    let vals = values.values();
    let nulls = values.nulls().filter(|n| n.null_count() > 0);
    for (&r, &g) in rows.iter().zip(groups) {
        let (r, g) = (r as usize, g as usize);
        if nulls.is_some_and(|n| n.is_null(r)) {
            continue;
        }
        let v = vals[r];
        acc[g] = if seen[g] { combine(acc[g], v) } else { v };
        seen[g] = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::TimeUnit;

    fn layout(func: AggregateFn, t: Option<DataType>) -> AggregateLayout {
        AggregateLayout {
            func,
            output_type: t.clone().unwrap_or(DataType::Int64),
            input: t.map(|t| (0, t)),
        }
    }

    #[test]
    fn kind_of_follows_function_and_input_type() {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        assert_eq!(Kind::of(&layout(AggregateFn::Count, None)), Kind::CountRows);
        assert_eq!(
            Kind::of(&layout(AggregateFn::Count, Some(DataType::Utf8))),
            Kind::CountValid
        );
        assert_eq!(
            Kind::of(&layout(AggregateFn::Sum, Some(DataType::Int32))),
            Kind::SumI64
        );
        assert_eq!(
            Kind::of(&layout(AggregateFn::Sum, Some(DataType::Float32))),
            Kind::SumF64
        );
        assert_eq!(Kind::of(&layout(AggregateFn::Max, Some(ts))), Kind::MaxI64);
        assert_eq!(
            Kind::of(&layout(AggregateFn::Avg, Some(DataType::Int64))),
            Kind::Avg
        );
    }

    #[test]
    fn acc_ignores_nulls_and_yields_null_for_empty_groups() {
        let input: ArrayRef = Arc::new(Int64Array::from(vec![Some(5), None, Some(-3), Some(9)]));
        let rows = [0, 1, 2, 3];
        let groups = [0, 1, 0, 0];
        let mut out = Vec::new();
        for kind in [
            Kind::CountValid,
            Kind::SumI64,
            Kind::MinI64,
            Kind::MaxI64,
            Kind::Avg,
        ] {
            let prepared = kind.prepare(Some(&input)).unwrap();
            let mut acc = Acc::new(kind);
            acc.update(&prepared, &rows, &groups, 2);
            let t = if kind == Kind::Avg {
                DataType::Float64
            } else {
                DataType::Int64
            };
            out.push(acc.finish(2, &t).unwrap());
        }
        assert_eq!(out[0].as_primitive::<Int64Type>().values(), &[3, 0]);
        assert_eq!(out[1].as_primitive::<Int64Type>().value(0), 11);
        assert!(out[1].is_null(1), "a group without values sums to null");
        assert_eq!(out[2].as_primitive::<Int64Type>().value(0), -3);
        assert_eq!(out[3].as_primitive::<Int64Type>().value(0), 9);
        assert!((out[4].as_primitive::<Float64Type>().value(0) - 11.0 / 3.0).abs() < 1e-12);
        assert!(out[4].is_null(1));
    }

    #[test]
    fn acc_min_max_cast_back_to_the_input_type() {
        let input: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![4, 2]));
        let prepared = Kind::MinI64.prepare(Some(&input)).unwrap();
        let mut acc = Acc::new(Kind::MinI64);
        acc.update(&prepared, &[0, 1], &[0, 0], 1);
        let out = acc.finish(1, &DataType::Int32).unwrap();
        assert_eq!(out.data_type(), &DataType::Int32);
        assert_eq!(
            out.as_primitive::<arrow::datatypes::Int32Type>().value(0),
            2
        );
    }

    #[test]
    fn acc_integer_sum_wraps_instead_of_panicking() {
        let input: ArrayRef = Arc::new(Int64Array::from(vec![i64::MAX, 1]));
        let prepared = Kind::SumI64.prepare(Some(&input)).unwrap();
        let mut acc = Acc::new(Kind::SumI64);
        acc.update(&prepared, &[0, 1], &[0, 0], 1);
        assert_eq!(
            acc.finish(1, &DataType::Int64)
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0),
            i64::MIN
        );
    }
}

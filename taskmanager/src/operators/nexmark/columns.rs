//! Column builders for one batch of a Nexmark table: events go straight from
//! the generator's borrowed views into Arrow buffers sized for a whole batch,
//! so a row costs a few appends and no allocation.

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringBuilder, TimestampMillisecondArray};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use eddy_sdk::nexmark::Generator;
use eddy_sdk::spec::NexmarkTable;
use std::sync::Arc;

/// A `Utf8` column builder that is replaced by a fresh one of the same
/// capacity when its batch is taken (the finished buffers leave with the batch).
#[derive(Debug)]
pub(super) struct Text {
    builder: StringBuilder,
    bytes_per_row: usize,
}

impl Text {
    fn new(rows: usize, bytes_per_row: usize) -> Self {
        Text {
            builder: StringBuilder::with_capacity(rows, rows * bytes_per_row),
            bytes_per_row,
        }
    }
    #[inline]
    fn push(&mut self, v: &str) {
        self.builder.append_value(v);
    }
    fn take(&mut self, rows: usize) -> ArrayRef {
        let next = StringBuilder::with_capacity(rows, rows * self.bytes_per_row);
        Arc::new(std::mem::replace(&mut self.builder, next).finish())
    }
}

/// An `Int64` (or millisecond timestamp) column.
#[derive(Debug)]
pub(super) struct Ints(Vec<i64>);

impl Ints {
    fn new(rows: usize) -> Self {
        Ints(Vec::with_capacity(rows))
    }
    #[inline]
    fn push(&mut self, v: i64) {
        self.0.push(v);
    }
    fn take(&mut self, rows: usize) -> Vec<i64> {
        std::mem::replace(&mut self.0, Vec::with_capacity(rows))
    }
    fn int64(&mut self, rows: usize) -> ArrayRef {
        Arc::new(Int64Array::from(self.take(rows)))
    }
    fn timestamp(&mut self, rows: usize) -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from(self.take(rows)))
    }
}

/// The builders of one table, in the column order of
/// `eddy_sdk::plan::schema::nexmark_table_schema`.
// One per source, built once and never moved in the hot loop: the variants'
// sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Columns {
    Person {
        id: Ints,
        name: Text,
        email: Text,
        card: Text,
        city: Text,
        state: Text,
        date_time: Ints,
        extra: Text,
    },
    Auction {
        id: Ints,
        item_name: Text,
        description: Text,
        initial_bid: Ints,
        reserve: Ints,
        date_time: Ints,
        expires: Ints,
        seller: Ints,
        category: Ints,
        extra: Text,
    },
    Bid {
        auction: Ints,
        bidder: Ints,
        price: Ints,
        channel: Text,
        url: Text,
        date_time: Ints,
        extra: Text,
    },
}

impl Columns {
    /// Builders for batches of `rows` rows; text capacities are the
    /// generator's typical lengths, so a batch rarely regrows a buffer.
    pub(super) fn new(table: NexmarkTable, rows: usize) -> Self {
        match table {
            NexmarkTable::Person => Columns::Person {
                id: Ints::new(rows),
                name: Text::new(rows, 14),
                email: Text::new(rows, 14),
                card: Text::new(rows, 19),
                city: Text::new(rows, 8),
                state: Text::new(rows, 2),
                date_time: Ints::new(rows),
                extra: Text::new(rows, 160),
            },
            NexmarkTable::Auction => Columns::Auction {
                id: Ints::new(rows),
                item_name: Text::new(rows, 12),
                description: Text::new(rows, 52),
                initial_bid: Ints::new(rows),
                reserve: Ints::new(rows),
                date_time: Ints::new(rows),
                expires: Ints::new(rows),
                seller: Ints::new(rows),
                category: Ints::new(rows),
                extra: Text::new(rows, 420),
            },
            NexmarkTable::Bid => Columns::Bid {
                auction: Ints::new(rows),
                bidder: Ints::new(rows),
                price: Ints::new(rows),
                channel: Text::new(rows, 8),
                url: Text::new(rows, 48),
                date_time: Ints::new(rows),
                extra: Text::new(rows, 68),
            },
        }
    }

    /// Appends event `n`, which must be of this table's type.
    #[inline]
    pub(super) fn push(&mut self, generator: &mut Generator, n: u64) {
        match self {
            Columns::Person {
                id,
                name,
                email,
                card,
                city,
                state,
                date_time,
                extra,
            } => {
                let p = generator.person(n);
                id.push(p.id);
                name.push(p.name);
                email.push(p.email_address);
                card.push(p.credit_card);
                city.push(p.city);
                state.push(p.state);
                date_time.push(p.date_time);
                extra.push(p.extra);
            }
            Columns::Auction {
                id,
                item_name,
                description,
                initial_bid,
                reserve,
                date_time,
                expires,
                seller,
                category,
                extra,
            } => {
                let a = generator.auction(n);
                id.push(a.id);
                item_name.push(a.item_name);
                description.push(a.description);
                initial_bid.push(a.initial_bid);
                reserve.push(a.reserve);
                date_time.push(a.date_time);
                expires.push(a.expires);
                seller.push(a.seller);
                category.push(a.category);
                extra.push(a.extra);
            }
            Columns::Bid {
                auction,
                bidder,
                price,
                channel,
                url,
                date_time,
                extra,
            } => {
                let b = generator.bid(n);
                auction.push(b.auction);
                bidder.push(b.bidder);
                price.push(b.price);
                channel.push(b.channel);
                url.push(b.url);
                date_time.push(b.date_time);
                extra.push(b.extra);
            }
        }
    }

    /// Takes the rows appended so far as a batch; the builders start over
    /// with room for `rows` more.
    pub(super) fn finish(
        &mut self,
        schema: &SchemaRef,
        rows: usize,
    ) -> Result<RecordBatch, ArrowError> {
        let arrays: Vec<ArrayRef> = match self {
            Columns::Person {
                id,
                name,
                email,
                card,
                city,
                state,
                date_time,
                extra,
            } => vec![
                id.int64(rows),
                name.take(rows),
                email.take(rows),
                card.take(rows),
                city.take(rows),
                state.take(rows),
                date_time.timestamp(rows),
                extra.take(rows),
            ],
            Columns::Auction {
                id,
                item_name,
                description,
                initial_bid,
                reserve,
                date_time,
                expires,
                seller,
                category,
                extra,
            } => vec![
                id.int64(rows),
                item_name.take(rows),
                description.take(rows),
                initial_bid.int64(rows),
                reserve.int64(rows),
                date_time.timestamp(rows),
                expires.timestamp(rows),
                seller.int64(rows),
                category.int64(rows),
                extra.take(rows),
            ],
            Columns::Bid {
                auction,
                bidder,
                price,
                channel,
                url,
                date_time,
                extra,
            } => vec![
                auction.int64(rows),
                bidder.int64(rows),
                price.int64(rows),
                channel.take(rows),
                url.take(rows),
                date_time.timestamp(rows),
                extra.take(rows),
            ],
        };
        RecordBatch::try_new(Arc::clone(schema), arrays)
    }
}

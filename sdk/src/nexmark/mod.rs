//! The Nexmark event generator: the one implementation of the standard
//! Nexmark auction stream (people, auctions, bids) that the `nexmark` source
//! turns into Arrow batches and that tests use as their reference.
//!
//! It is pure: no I/O, no clock, no Arrow. Everything about event number `n`
//! (global over the whole job, starting at 0) is a function of `n` and the
//! [`GeneratorConfig`], so any subtask can generate any event and the union of
//! all subtasks is the same at any parallelism.
//!
//! Formulas follow the Beam/Flink Nexmark generator (`GeneratorConfig`,
//! `NexmarkGenerator`, `PersonGenerator`, `AuctionGenerator`, `BidGenerator`,
//! `PriceGenerator`, `StringsGenerator` in `apache/beam`
//! `sdks/java/testing/nexmark` and `nexmark/nexmark` `nexmark-flink`):
//! - event type: `n % 50` — 0 is a person, 1..=3 an auction, 4..=49 a bid
//!   (the 1 : 3 : 46 proportion);
//! - event time: `base_time + floor(n * inter_event_delay_us) / 1000` ms with
//!   `inter_event_delay_us = 1e6 / events_per_second` (`timestampForEvent`);
//! - ids: `lastBase0PersonId`, `lastBase0AuctionId`, `nextBase0PersonId`
//!   (among the last `num_active_people`, plus a lead of 10),
//!   `nextBase0AuctionId` (among the last `num_in_flight_auctions`, plus a lead
//!   of 10), hot sellers / bidders / auctions chosen with probability
//!   `1 - 1/ratio` as the first (seller, auction) or second (bidder) id of the
//!   last batch of 100; first person and auction id 1000, categories 10..=14;
//! - prices: `round(10^(u * 6) * 100)` (`nextPrice`), reserve = initial bid +
//!   another price; auction length `1 + nextLong(2 * horizon)` where the
//!   horizon is the event time `num_in_flight_auctions * 50 / 3` events ahead;
//! - channels and urls: Flink Nexmark 0.2 — 99 in 100 bids use one of four hot
//!   channels, the rest one of 10 000 `channel-<k>` channels whose url carries
//!   `&channel_id=|reverse_bits(k)|` 9 times in 10;
//! - `extra` padding: `nextExtra` lengths (average record sizes 200 / 500 / 100
//!   bytes for person / auction / bid).
//!
//! Each event draws from `java.util.Random` seeded with its number (as Beam
//! does), mixed with the spec's `seed` (seed 0 is the reference seeding). Where
//! Eddy departs from the reference, for speed: a string's *characters* are a
//! slice of a fixed pool of Nexmark-style text (lower-case letters, one space in
//! 13) at a random offset instead of one draw per character; lengths are drawn
//! as in the reference. So numeric fields drawn before the first string of an
//! event match the reference draws, and later ones follow the same
//! distributions. The cold channels' urls, random per process in the
//! reference, are a function of the channel number here.

mod events;
mod random;

pub use events::{Auction, Bid, Generator, Person};
pub use random::JavaRandom;

/// First person id (`GeneratorConfig.FIRST_PERSON_ID`).
pub const FIRST_PERSON_ID: i64 = 1000;
/// First auction id (`GeneratorConfig.FIRST_AUCTION_ID`).
pub const FIRST_AUCTION_ID: i64 = 1000;
/// First category id (`GeneratorConfig.FIRST_CATEGORY_ID`).
pub const FIRST_CATEGORY_ID: i64 = 10;
/// Number of categories (`AuctionGenerator.NUM_CATEGORIES`).
pub const NUM_CATEGORIES: i32 = 5;
/// Events per proportion period.
pub const PROPORTION_DENOMINATOR: u64 = 50;
const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;

/// 2015-07-15T00:00:00Z in ms: the default base time, as in Nexmark.
pub const DEFAULT_BASE_TIME_MS: i64 = 1_436_918_400_000;
/// Nexmark's default `firstEventRate`.
pub const DEFAULT_EVENTS_PER_SECOND: f64 = 10_000.0;

/// The three event types, and the three tables of the `nexmark` source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Person,
    Auction,
    Bid,
}

impl EventType {
    /// The type of event number `n`: computed before anything else, so a
    /// source skips the other types at the cost of one remainder.
    #[inline]
    pub fn of(n: u64) -> EventType {
        let rem = n % PROPORTION_DENOMINATOR;
        if rem < PERSON_PROPORTION {
            EventType::Person
        } else if rem < PERSON_PROPORTION + AUCTION_PROPORTION {
            EventType::Auction
        } else {
            EventType::Bid
        }
    }
}

/// Everything that shapes the stream. Build it from a spec with
/// `NexmarkSpec::generator_config`; validation keeps every field in range.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorConfig {
    /// Mixed into each event's random seed; 0 is the reference seeding.
    pub seed: u64,
    /// Event time of event 0, ms since the epoch.
    pub base_time_ms: i64,
    /// Event-time distance between consecutive events, µs (may be fractional).
    pub inter_event_delay_us: f64,
    /// A bid is for a hot auction with probability `1 - 1/hot_auction_ratio`.
    pub hot_auction_ratio: i32,
    /// An auction has a hot seller with probability `1 - 1/hot_sellers_ratio`.
    pub hot_sellers_ratio: i32,
    /// A bid has a hot bidder with probability `1 - 1/hot_bidders_ratio`.
    pub hot_bidders_ratio: i32,
    /// Cold bids and auction lengths look this many auctions back / ahead.
    pub num_in_flight_auctions: i64,
    /// Cold sellers and bidders are among the last this many people.
    pub num_active_people: i64,
}

impl Default for GeneratorConfig {
    /// Nexmark's defaults.
    fn default() -> Self {
        GeneratorConfig {
            seed: 0,
            base_time_ms: DEFAULT_BASE_TIME_MS,
            inter_event_delay_us: 1e6 / DEFAULT_EVENTS_PER_SECOND,
            hot_auction_ratio: 2,
            hot_sellers_ratio: 4,
            hot_bidders_ratio: 4,
            num_in_flight_auctions: 100,
            num_active_people: 1000,
        }
    }
}

impl GeneratorConfig {
    /// Event time of event `n`, ms since the epoch (`timestampForEvent`).
    #[inline]
    pub fn timestamp_ms(&self, n: u64) -> i64 {
        let offset_us = (n as f64 * self.inter_event_delay_us) as i64;
        self.base_time_ms.saturating_add(offset_us / 1000)
    }
}

/// The base-0 id of the last person generated at or before event `n`.
#[inline]
pub fn last_base0_person_id(n: u64) -> i64 {
    // The reference adds `min(n % 50, PERSON_PROPORTION - 1)`: with one person
    // per period that is always 0 (person k is event 50k).
    (n / PROPORTION_DENOMINATOR * PERSON_PROPORTION) as i64
}

/// The base-0 id of the last auction generated at or before event `n` (-1
/// before the first auction).
#[inline]
pub fn last_base0_auction_id(n: u64) -> i64 {
    let mut epoch = (n / PROPORTION_DENOMINATOR) as i64;
    let mut offset = (n % PROPORTION_DENOMINATOR) as i64;
    let (person, auction) = (PERSON_PROPORTION as i64, AUCTION_PROPORTION as i64);
    if offset < person {
        // A person: the last auction is the previous period's last.
        epoch -= 1;
        offset = auction - 1;
    } else if offset >= person + auction {
        // A bid: the last auction is this period's last.
        offset = auction - 1;
    } else {
        offset -= person;
    }
    epoch * auction + offset
}

#[cfg(test)]
mod tests;

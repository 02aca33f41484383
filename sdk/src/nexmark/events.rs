//! The three Nexmark event types and how event number `n` becomes one of them.
//!
//! Events are returned as views: numbers by value, strings borrowed from the
//! generator's reusable buffers or from the static text pool, so generating an
//! event allocates nothing once the buffers have grown. A caller copies what it
//! needs (into Arrow builders) before asking for the next event.

use super::random::JavaRandom;
use super::{
    FIRST_AUCTION_ID, FIRST_CATEGORY_ID, FIRST_PERSON_ID, GeneratorConfig, NUM_CATEGORIES,
    PROPORTION_DENOMINATOR, last_base0_auction_id, last_base0_person_id,
};
use std::fmt::Write;
use std::sync::LazyLock;

/// Hot sellers, bidders and auctions are picked from the last batch of this
/// many (`HOT_SELLER_RATIO`, `HOT_BIDDER_RATIO`, `HOT_AUCTION_RATIO`).
const HOT_BATCH: i64 = 100;
/// Cold picks may run this far past the last generated person / auction.
const PERSON_ID_LEAD: i64 = 10;
const AUCTION_ID_LEAD: i64 = 10;
/// Average serialized sizes the `extra` field pads records to.
const AVG_PERSON_BYTES: i32 = 200;
const AVG_AUCTION_BYTES: i32 = 500;
const AVG_BID_BYTES: i32 = 100;
/// Shortest generated string (`StringsGenerator.MIN_STRING_LENGTH`).
const MIN_STRING_LENGTH: i32 = 3;
/// One bid in this many uses a cold channel.
const HOT_CHANNELS_RATIO: i32 = 100;
const CHANNELS_NUMBER: i32 = 10_000;

const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const HOT_URLS: [&str; 4] = [
    "https://www.nexmark.com/googl/item.htm?query=1",
    "https://www.nexmark.com/meta/item.htm?query=1",
    "https://www.nexmark.com/bidu/item.htm?query=1",
    "https://www.nexmark.com/aapl/item.htm?query=1",
];

/// Strings start at a random offset below this (a power of two: one draw, no
/// rejection) ...
const POOL_OFFSETS: i32 = 1 << 15;
/// ... and are at most this long, so every slice fits in the pool.
const MAX_STRING: usize = 1024;

/// Nexmark-style text (`nextExactString`: a space one time in 13, else a
/// lower-case letter), generated once from a fixed seed. ASCII, so any byte
/// range is a valid `str` slice.
static POOL: LazyLock<String> = LazyLock::new(|| {
    let mut rng = JavaRandom::new(0x004E_4558_4D41_524B); // "NEXMARK"
    (0..POOL_OFFSETS as usize + MAX_STRING)
        .map(|_| {
            if rng.next_int(13) == 0 {
                ' '
            } else {
                char::from(b'a' + rng.next_int(26) as u8)
            }
        })
        .collect()
});

/// A person (`Person` in Nexmark).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Person<'a> {
    pub id: i64,
    pub name: &'a str,
    pub email_address: &'a str,
    pub credit_card: &'a str,
    pub city: &'static str,
    pub state: &'static str,
    /// Event time, ms since the epoch.
    pub date_time: i64,
    pub extra: &'a str,
}

/// An auction (`Auction` in Nexmark).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Auction<'a> {
    pub id: i64,
    pub item_name: &'a str,
    pub description: &'a str,
    pub initial_bid: i64,
    pub reserve: i64,
    /// Event time, ms since the epoch.
    pub date_time: i64,
    /// When the auction closes, ms since the epoch (after `date_time`).
    pub expires: i64,
    pub seller: i64,
    pub category: i64,
    pub extra: &'a str,
}

/// A bid (`Bid` in Nexmark, with Flink Nexmark's channel and url).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bid<'a> {
    pub auction: i64,
    pub bidder: i64,
    pub price: i64,
    pub channel: &'a str,
    pub url: &'a str,
    /// Event time, ms since the epoch.
    pub date_time: i64,
    pub extra: &'a str,
}

/// Generates any event by number. Cheap to create; holds reusable buffers for
/// the strings that are assembled from parts.
#[derive(Clone, Debug)]
pub struct Generator {
    config: GeneratorConfig,
    pool: &'static str,
    name: String,
    email: String,
    card: String,
    channel: String,
    url: String,
}

impl Generator {
    pub fn new(config: GeneratorConfig) -> Self {
        Generator {
            config,
            pool: POOL.as_str(),
            name: String::with_capacity(32),
            email: String::with_capacity(32),
            card: String::with_capacity(20),
            channel: String::with_capacity(16),
            url: String::with_capacity(80),
        }
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Event `n`'s random stream: Java's `new Random(n)` for seed 0.
    #[inline]
    fn rng(&self, n: u64) -> JavaRandom {
        let mixed = n.wrapping_add(self.config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        JavaRandom::new(mixed as i64)
    }

    /// Event `n` as a person. Meaningful when `EventType::of(n)` is `Person`.
    pub fn person(&mut self, n: u64) -> Person<'_> {
        let mut rng = self.rng(n);
        let id = last_base0_person_id(n) + FIRST_PERSON_ID;
        self.name.clear();
        self.name
            .push_str(FIRST_NAMES[rng.next_int(FIRST_NAMES.len() as i32) as usize]);
        self.name.push(' ');
        self.name
            .push_str(LAST_NAMES[rng.next_int(LAST_NAMES.len() as i32) as usize]);
        let user = next_string(self.pool, &mut rng, 7);
        let domain = next_string(self.pool, &mut rng, 5);
        self.email.clear();
        self.email.push_str(user);
        self.email.push('@');
        self.email.push_str(domain);
        self.email.push_str(".com");
        self.card.clear();
        for group in 0..4 {
            if group > 0 {
                self.card.push(' ');
            }
            push_4_digits(&mut self.card, rng.next_int(10_000));
        }
        let city = US_CITIES[rng.next_int(US_CITIES.len() as i32) as usize];
        let state = US_STATES[rng.next_int(US_STATES.len() as i32) as usize];
        let size =
            8 + self.name.len() + self.email.len() + self.card.len() + city.len() + state.len();
        let extra = next_extra(self.pool, &mut rng, size, AVG_PERSON_BYTES);
        Person {
            id,
            name: &self.name,
            email_address: &self.email,
            credit_card: &self.card,
            city,
            state,
            date_time: self.config.timestamp_ms(n),
            extra,
        }
    }

    /// Event `n` as an auction. Meaningful when `EventType::of(n)` is `Auction`.
    pub fn auction(&self, n: u64) -> Auction<'_> {
        let c = &self.config;
        let mut rng = self.rng(n);
        let id = last_base0_auction_id(n) + FIRST_AUCTION_ID;
        let seller = if rng.next_int(c.hot_sellers_ratio) > 0 {
            (last_base0_person_id(n) / HOT_BATCH) * HOT_BATCH
        } else {
            self.next_base0_person_id(n, &mut rng)
        } + FIRST_PERSON_ID;
        let category = FIRST_CATEGORY_ID + i64::from(rng.next_int(NUM_CATEGORIES));
        let initial_bid = next_price(&mut rng);
        let date_time = c.timestamp_ms(n);
        let expires = date_time.saturating_add(self.next_auction_length_ms(n, &mut rng, date_time));
        let item_name = next_string(self.pool, &mut rng, 20);
        let description = next_string(self.pool, &mut rng, 100);
        let reserve = initial_bid.saturating_add(next_price(&mut rng));
        let size = 8 + item_name.len() + description.len() + 8 * 5;
        let extra = next_extra(self.pool, &mut rng, size, AVG_AUCTION_BYTES);
        Auction {
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
        }
    }

    /// Event `n` as a bid. Meaningful when `EventType::of(n)` is `Bid`.
    pub fn bid(&mut self, n: u64) -> Bid<'_> {
        let mut rng = self.rng(n);
        let auction = if rng.next_int(self.config.hot_auction_ratio) > 0 {
            (last_base0_auction_id(n) / HOT_BATCH) * HOT_BATCH
        } else {
            self.next_base0_auction_id(n, &mut rng)
        } + FIRST_AUCTION_ID;
        let bidder = if rng.next_int(self.config.hot_bidders_ratio) > 0 {
            // The second of the batch, so hot bidders and hot sellers differ.
            (last_base0_person_id(n) / HOT_BATCH) * HOT_BATCH + 1
        } else {
            self.next_base0_person_id(n, &mut rng)
        } + FIRST_PERSON_ID;
        let price = next_price(&mut rng);
        let (channel, url) = if rng.next_int(HOT_CHANNELS_RATIO) > 0 {
            let i = rng.next_int(HOT_CHANNELS.len() as i32) as usize;
            (HOT_CHANNELS[i], HOT_URLS[i])
        } else {
            self.cold_channel(rng.next_int(CHANNELS_NUMBER));
            (self.channel.as_str(), self.url.as_str())
        };
        let extra = next_extra(self.pool, &mut rng, 8 * 4, AVG_BID_BYTES);
        Bid {
            auction,
            bidder,
            price,
            channel,
            url,
            date_time: self.config.timestamp_ms(n),
            extra,
        }
    }

    /// `nextBase0PersonId`: one of the last `num_active_people` people, or a
    /// few not generated yet.
    fn next_base0_person_id(&self, n: u64, rng: &mut JavaRandom) -> i64 {
        let num_people = last_base0_person_id(n) + 1;
        let active = num_people.min(self.config.num_active_people);
        num_people - active + rng.next_below(active + PERSON_ID_LEAD)
    }

    /// `nextBase0AuctionId`: one of the last `num_in_flight_auctions`
    /// auctions, or a few not generated yet.
    fn next_base0_auction_id(&self, n: u64, rng: &mut JavaRandom) -> i64 {
        let max = last_base0_auction_id(n);
        let min = (max - self.config.num_in_flight_auctions).max(0);
        min + rng.next_below(max - min + 1 + AUCTION_ID_LEAD)
    }

    /// `nextAuctionLengthMs`: on average the event time until
    /// `num_in_flight_auctions` more auctions have been generated.
    fn next_auction_length_ms(&self, n: u64, rng: &mut JavaRandom, date_time: i64) -> i64 {
        let c = &self.config;
        let ahead = c.num_in_flight_auctions as u64 * PROPORTION_DENOMINATOR / 3;
        let horizon = c.timestamp_ms(n.saturating_add(ahead)) - date_time;
        1 + rng.next_below(horizon.saturating_mul(2).max(1))
    }

    /// Channel `k` of the cold channels: its name and url, a function of `k`.
    fn cold_channel(&mut self, k: i32) {
        let mut rng = JavaRandom::new(i64::from(k) ^ 0x0C4A_77E1);
        self.channel.clear();
        let _ = write!(self.channel, "channel-{k}");
        self.url.clear();
        self.url.push_str("https://www.nexmark.com/");
        for b in next_string(self.pool, &mut rng, 5).bytes() {
            self.url.push(if b == b' ' { '_' } else { char::from(b) });
        }
        self.url.push_str("/item.htm?query=1");
        if rng.next_int(10) > 0 {
            let _ = write!(self.url, "&channel_id={}", k.reverse_bits().wrapping_abs());
        }
    }
}

/// `nextPrice`: log-uniform between 1.00 and 1 000 000.00, in cents.
#[inline]
fn next_price(rng: &mut JavaRandom) -> i64 {
    // Java's Math.round is floor(x + 0.5).
    (10f64.powf(rng.next_double() * 6.0) * 100.0 + 0.5).floor() as i64
}

/// `nextString(maxLength)`: `3 + nextInt(maxLength - 3)` characters, trimmed.
#[inline]
fn next_string<'p>(pool: &'p str, rng: &mut JavaRandom, max_length: i32) -> &'p str {
    let len = (MIN_STRING_LENGTH + rng.next_int(max_length - MIN_STRING_LENGTH)) as usize;
    pool_slice(pool, rng, len).trim_matches(' ')
}

/// `nextExtra`: padding that brings the record to about `avg` bytes
/// (uniform in `[0.8, 1.2) * (avg - size)`), empty when it is already larger.
#[inline]
fn next_extra<'p>(pool: &'p str, rng: &mut JavaRandom, size: usize, avg: i32) -> &'p str {
    let size = i32::try_from(size).unwrap_or(i32::MAX);
    if size > avg {
        return "";
    }
    let wanted = avg - size;
    let delta = (f64::from(wanted) * 0.2).round() as i32;
    let len = wanted - delta
        + if delta == 0 {
            0
        } else {
            rng.next_int(2 * delta)
        };
    pool_slice(pool, rng, len as usize)
}

#[inline]
fn pool_slice<'p>(pool: &'p str, rng: &mut JavaRandom, len: usize) -> &'p str {
    let start = rng.next_int(POOL_OFFSETS) as usize;
    // The pool is ASCII and POOL_OFFSETS + MAX_STRING long: always in bounds.
    &pool[start..start + len.min(MAX_STRING)]
}

/// `String.format("%04d", v)` for `v` in `0..10_000`.
fn push_4_digits(out: &mut String, v: i32) {
    for div in [1000, 100, 10, 1] {
        out.push(char::from(b'0' + ((v / div) % 10) as u8));
    }
}

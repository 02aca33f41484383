//! The expiry stored with every RocksDB value: an 8-byte big-endian header
//! holding the expiry time in ms since the epoch, or 0 when the entry never
//! expires. Keeping the absolute expiry in the value lets one compaction
//! filter, shared by every column family, drop expired entries without
//! knowing which state they belong to.

use std::time::Duration;

pub(crate) const HEADER: usize = 8;

/// The expiry of an entry written at `now_ms` by a state with `ttl`.
pub(crate) fn expiry(now_ms: i64, ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|t| now_ms.saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX)))
}

/// Whether an entry with `expires_at` is expired at `now_ms`.
pub(crate) fn is_expired(expires_at: Option<i64>, now_ms: i64) -> bool {
    expires_at.is_some_and(|e| e <= now_ms)
}

pub(crate) fn encode(expires_at: Option<i64>, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    let raw = expires_at.map_or(0u64, |e| e.max(1) as u64);
    out.extend_from_slice(&raw.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// Splits a stored value into its expiry and the user's bytes; `None` when
/// the value is shorter than the header (never written by this module).
pub(crate) fn decode(stored: &[u8]) -> Option<(Option<i64>, &[u8])> {
    let (head, value) = stored.split_first_chunk::<HEADER>()?;
    let raw = u64::from_be_bytes(*head);
    let expires_at = (raw != 0).then_some(raw as i64);
    Some((expires_at, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_header_round_trips_and_expires_at_deadline() {
        let e = expiry(1_000, Some(Duration::from_millis(500)));
        assert_eq!(e, Some(1_500));
        let stored = encode(e, b"v");
        assert_eq!(decode(&stored), Some((Some(1_500), &b"v"[..])));
        assert!(!is_expired(Some(1_500), 1_499));
        assert!(is_expired(Some(1_500), 1_500));
        let forever = encode(expiry(1_000, None), b"");
        assert_eq!(decode(&forever), Some((None, &b""[..])));
        assert!(!is_expired(None, i64::MAX));
        assert_eq!(decode(b"short"), None);
    }
}

//! Channel history: positions, which namespaces keep history, and what a read returns.
//!
//! A channel whose namespace has history (`[[namespaces]]` with `history_size`) numbers its
//! messages: `offset` goes up by exactly one per message, so a client detects a gap by
//! arithmetic, and `epoch` changes whenever the channel's history was lost (Redis flushed or
//! restarted without persistence, the history expired, the embedded node restarted), so an
//! offset is only meaningful with its epoch. The broker stores a message and publishes it with
//! its position in one atomic step (`broker`); a subscriber that comes back asks for what came
//! after its last position and is told precisely whether history still held all of it.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::NamespaceConfig;
use crate::namespace::{self, Pattern};

/// Where a message sits in its channel's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The message's number on its channel, from 1.
    pub offset: u64,
    /// The history the offset counts in.
    pub epoch: Arc<str>,
}

/// How much history a channel keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Messages kept (the oldest are trimmed past it).
    pub size: usize,
    /// How long the history lives after the channel's last publish.
    pub ttl: Duration,
}

/// Most messages one history read returns; a larger `limit` is clamped to it.
pub const MAX_READ: usize = 1000;

/// Which stored messages a read wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// The oldest messages after this offset (paging forward, recovery).
    After(u64),
    /// The newest messages.
    Latest,
}

/// The namespaces' options (history, and join/leave events), resolved per channel by the most
/// specific pattern (the rule of plugin bindings).
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    patterns: Vec<Pattern>,
    history: Vec<Option<HistoryOptions>>,
    join_leave: Vec<bool>,
}

impl Namespaces {
    /// The `[[namespaces]]` of the configuration.
    pub fn new(config: &[NamespaceConfig]) -> Self {
        Self {
            patterns: config.iter().map(|n| n.pattern.clone()).collect(),
            history: config
                .iter()
                .map(|n| {
                    (n.history_size > 0).then(|| HistoryOptions {
                        size: n.history_size,
                        ttl: Duration::from_secs(n.history_ttl_secs),
                    })
                })
                .collect(),
            join_leave: config.iter().map(|n| n.join_leave).collect(),
        }
    }

    /// The history `channel` keeps, if any.
    pub fn history(&self, channel: &str) -> Option<HistoryOptions> {
        if self.patterns.is_empty() {
            return None;
        }
        namespace::most_specific(&self.patterns, channel).and_then(|i| self.history[i])
    }

    /// Whether `channel`'s subscriptions are announced ([`crate::membership`]).
    pub fn join_leave(&self, channel: &str) -> bool {
        !self.patterns.is_empty()
            && namespace::most_specific(&self.patterns, channel).is_some_and(|i| self.join_leave[i])
    }
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its offset.
    pub offset: u64,
    /// Its data, as the publish hook produced it (JSON text).
    pub data: Bytes,
}

/// What a history read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// Messages after the requested offset, oldest first, at most the requested limit.
    pub messages: Vec<Stored>,
    /// The channel's current position: its last offset (0 before the first message) and epoch.
    pub position: Position,
    /// The oldest offset history still holds (`position.offset + 1` when it holds none).
    pub first: u64,
}

impl Read {
    /// Whether a client that last saw `since` loses nothing (see [`recovers`]).
    pub fn recovers(&self, since: &Position) -> bool {
        recovers(since, &self.position, self.first)
    }
}

/// Whether a client that last saw `since` loses nothing, reading a channel at `position` whose
/// history holds offsets from `first`: same epoch, not ahead of the channel, and history
/// reaches back to the message after `since`.
pub fn recovers(since: &Position, position: &Position, first: u64) -> bool {
    since.epoch == position.epoch
        && since.offset <= position.offset
        && since.offset.saturating_add(1) >= first
}

/// A new epoch: random, short, printable.
pub fn new_epoch() -> Arc<str> {
    // RandomState's keys are random per instance: a source of randomness without another
    // dependency. The time makes two epochs made in one instant differ even so.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish()).into()
}

/// How a message travels on the pub/sub wire with its position: these bytes, the offset, a
/// space, the epoch, a space, then the data. Reserved: the SOH byte keeps it from being JSON
/// or anything a backend would publish; a plain `PUBLISH` on a history channel is delivered
/// live without a position (and is not stored).
pub const ENVELOPE: &[u8] = b"\x01sy-h ";

/// The envelope of `data` at `position`.
pub fn envelope(position: &Position, data: &[u8]) -> Vec<u8> {
    let mut out = ENVELOPE.to_vec();
    out.extend_from_slice(format!("{} {} ", position.offset, position.epoch).as_bytes());
    out.extend_from_slice(data);
    out
}

/// The position and data of an enveloped payload; `None` for a plain one.
pub fn open_envelope(payload: &[u8]) -> Option<(Position, &[u8])> {
    let rest = payload.strip_prefix(ENVELOPE)?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let offset = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
    let rest = &rest[space + 1..];
    let space = rest.iter().position(|&b| b == b' ')?;
    let epoch = std::str::from_utf8(&rest[..space]).ok()?;
    Some((
        Position {
            offset,
            epoch: epoch.into(),
        },
        &rest[space + 1..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn envelopes_round_trip_and_plain_payloads_are_not_envelopes() {
        let p = at(42, "e1");
        let wire = envelope(&p, br#"{"a":1}"#);
        assert_eq!(open_envelope(&wire), Some((p, &br#"{"a":1}"#[..])));
        assert_eq!(open_envelope(br#"{"a":1}"#), None);
        assert_eq!(open_envelope(b"\x01sy-h x e {}"), None);
    }

    #[test]
    fn recovery_needs_the_epoch_and_history_back_to_the_next_message() {
        let read = Read {
            messages: Vec::new(),
            position: at(10, "e"),
            first: 6,
        };
        assert!(read.recovers(&at(5, "e")), "6..=10 held");
        assert!(read.recovers(&at(10, "e")), "nothing missed");
        assert!(!read.recovers(&at(4, "e")), "5 was trimmed");
        assert!(!read.recovers(&at(11, "e")), "ahead of the channel");
        assert!(!read.recovers(&at(8, "other")), "another history");
        let empty = Read {
            messages: Vec::new(),
            position: at(0, "e"),
            first: 1,
        };
        assert!(empty.recovers(&at(0, "e")));
    }

    #[test]
    fn epochs_differ() {
        assert_ne!(new_epoch(), new_epoch());
    }
}

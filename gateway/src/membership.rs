//! Join and leave events: on the channels of a namespace with `join_leave = true`, every
//! subscription that starts or ends is announced to the channel's subscribers.
//!
//! An event travels through the broker like a message, so it reaches every node, but in an
//! envelope of its own: the hub recognises it, runs the channel's deliver hook on the event
//! (so tenant filters apply to who sees whom) and encodes a `join` or `leave` frame instead
//! of a `message`. It is published without history: events are never stored or recovered.

use serde::{Deserialize, Serialize};

use crate::identity::Identity;

/// Reserved prefix of an event on the pub/sub wire: the SOH byte keeps it apart from JSON and
/// from the history envelope (`crate::history::ENVELOPE`).
pub const ENVELOPE: &[u8] = b"\x01sy-e ";

/// Whether a subscription started or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// A connection subscribed.
    Join,
    /// A connection's subscription ended (unsubscribe, server command or disconnect).
    Leave,
}

/// One join or leave; serialised, it is the JSON a deliver hook receives as `data`:
/// `{"event":"join","user":"alice","tenant":"acme"}` (`user` and `tenant` when known).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Join or leave.
    pub event: Change,
    /// The connection's user; absent for an anonymous connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The connection's tenant, for the deliver hook's filters; never sent to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl Event {
    /// `change` of a subscription held by `who`.
    pub fn of(change: Change, who: &Identity) -> Self {
        Self {
            event: change,
            user: who.user.clone(),
            tenant: who.tenant.clone(),
        }
    }

    /// The event on the pub/sub wire.
    pub fn envelope(&self) -> Vec<u8> {
        let mut out = ENVELOPE.to_vec();
        serde_json::to_writer(&mut out, self).expect("an event serialises");
        out
    }
}

/// The event in a broker payload and its JSON (the deliver hook's `data`): `Some` for an
/// event envelope, with `None` inside when what follows the prefix is not an event (an
/// external publisher's; it is dropped rather than delivered as a message).
pub fn open(payload: &[u8]) -> Option<Option<(Event, &[u8])>> {
    let json = payload.strip_prefix(ENVELOPE)?;
    Some(serde_json::from_slice(json).ok().map(|event| (event, json)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_other_payloads_are_not_events() {
        let who = Identity {
            user: Some("alice".into()),
            tenant: Some("acme".into()),
            claims: "{}".into(),
        };
        let wire = Event::of(Change::Join, &who).envelope();
        let (event, json) = open(&wire).unwrap().unwrap();
        assert_eq!(event, Event::of(Change::Join, &who));
        assert_eq!(json, br#"{"event":"join","user":"alice","tenant":"acme"}"#);
        let anonymous = Event::of(Change::Leave, &Identity::anonymous()).envelope();
        assert_eq!(&anonymous[ENVELOPE.len()..], br#"{"event":"leave"}"#);
        assert_eq!(open(br#"{"event":"join"}"#), None);
        assert_eq!(open(b"\x01sy-e {\"event\":\"wave\"}"), Some(None));
        assert_eq!(open(b"\x01sy-e not json"), Some(None));
    }
}

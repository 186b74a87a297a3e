//! Stored messages as a subscriber receives them: the reads behind the `history` request, the
//! HTTP history API and a recovering subscribe. Reading is allowed where subscribing is (the
//! same subscribe hook decides), and every stored message passes the reader's deliver hook,
//! exactly as a live delivery to the reader's group would: history is never a way around a
//! tenant filter or a redaction.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::broker::Broker;
use crate::history::{self, HistoryOptions, Namespaces, Position, Query};
use crate::hub::{Group, GroupKey, Hub, Prepared};
use crate::identity::Identity;
use crate::plugins::registry::PluginRegistry;
use crate::protocol::{self, ErrorCode, HistoryEntry, HistoryPage, Rejection};

/// Reads history for the node's clients and backends.
pub struct Replay {
    broker: Arc<dyn Broker>,
    hub: Arc<Hub>,
    plugins: Arc<PluginRegistry>,
    namespaces: Arc<Namespaces>,
}

/// Stored messages prepared for one reader.
#[derive(Debug)]
pub struct Page {
    /// The messages the reader's group receives, oldest first: offset and JSON text.
    pub messages: Vec<(u64, Box<RawValue>)>,
    /// The channel's position when it was read.
    pub position: Position,
    /// The oldest offset history held.
    pub first: u64,
    /// The offset of the last stored message read, whether the reader's hook kept it or not.
    pub last: Option<u64>,
    /// How many stored messages were read (before the hook skipped any).
    pub read: usize,
}

impl Page {
    /// Whether a reader that last saw `since` loses nothing (see [`history::recovers`]).
    pub fn recovers(&self, since: &Position) -> bool {
        history::recovers(since, &self.position, self.first)
    }
}

/// The default `limit` of a history request.
pub const DEFAULT_LIMIT: usize = 100;

impl Replay {
    /// Reads through `broker`, preparing with `hub`'s deliver hooks, allowed by `plugins`'
    /// subscribe hooks, on the channels `namespaces` give history.
    pub fn new(
        broker: Arc<dyn Broker>,
        hub: Arc<Hub>,
        plugins: Arc<PluginRegistry>,
        namespaces: Arc<Namespaces>,
    ) -> Self {
        Self {
            broker,
            hub,
            plugins,
            namespaces,
        }
    }

    /// The history `channel` keeps, if any.
    pub fn options(&self, channel: &str) -> Option<HistoryOptions> {
        self.namespaces.history(channel)
    }

    /// The history of `channel`, or the `no_history` refusal.
    pub fn require(&self, channel: &str) -> Result<HistoryOptions, Rejection> {
        self.options(channel).ok_or_else(|| {
            Rejection::new(
                ErrorCode::NoHistory,
                format!("channel {channel:?} keeps no history (see [[namespaces]] history_size)"),
            )
        })
    }

    /// Reads up to `limit` stored messages of `channel` for `group`.
    pub async fn read(
        &self,
        channel: &str,
        group: &Group,
        query: Query,
        limit: usize,
        options: HistoryOptions,
    ) -> Result<Page, Rejection> {
        let read = self
            .broker
            .history(channel, query, limit, options)
            .await
            .map_err(|e| Rejection::new(ErrorCode::Unavailable, e.to_string()))?;
        let last = read.messages.last().map(|m| m.offset);
        let count = read.messages.len();
        let mut messages = Vec::with_capacity(count);
        for m in read.messages {
            let data = protocol::normalize_payload(&m.data);
            let data = match self.hub.prepare(channel, group, &data) {
                Prepared::Skip => continue,
                Prepared::Unchanged => data.into_owned(),
                Prepared::Rewritten(data) => data,
                // Skipping it would move the reader past a message it may be owed.
                Prepared::Failed => {
                    return Err(Rejection::new(
                        ErrorCode::Unavailable,
                        format!(
                            "the deliver plugin of {channel:?} failed on a stored message; try again"
                        ),
                    ));
                }
            };
            // Stored data is the publish hook's JSON and a rewrite is checked JSON, so this
            // cannot fail; a message that did would be skipped, not sent broken.
            let Ok(text) = String::from_utf8(data) else {
                continue;
            };
            if let Ok(raw) = RawValue::from_string(text) {
                messages.push((m.offset, raw));
            }
        }
        Ok(Page {
            messages,
            position: read.position,
            first: read.first,
            last,
            read: count,
        })
    }

    /// Answers a history request of `who`: the subscribe hook's verdict, then up to `limit`
    /// messages (default [`DEFAULT_LIMIT`], at most [`history::MAX_READ`]) after `since`, or the
    /// newest without it.
    pub async fn request(
        &self,
        who: &Identity,
        channel: &str,
        limit: Option<u64>,
        since: Option<&Position>,
    ) -> Result<Answer, Rejection> {
        let options = self.require(channel)?;
        let group: GroupKey = self.plugins.current().subscribe(who, channel)?;
        let asked = limit.unwrap_or(DEFAULT_LIMIT as u64);
        let limit = asked.min(history::MAX_READ as u64) as usize;
        let query = match since {
            Some(since) => Query::After(since.offset),
            None => Query::Latest,
        };
        let mut page = self.read(channel, &group, query, limit, options).await?;
        let recovered = since.map(|since| page.recovers(since));
        if recovered == Some(false) {
            // Messages of another epoch, or after a gap, would read as following `since`.
            page.messages.clear();
        }
        Ok(Answer {
            page,
            limit,
            clamped: asked > limit as u64,
            recovered,
        })
    }
}

/// A history request's answer.
#[derive(Debug)]
pub struct Answer {
    /// What was read.
    pub page: Page,
    /// The limit applied.
    pub limit: usize,
    /// Whether the asked limit was lowered to [`history::MAX_READ`].
    pub clamped: bool,
    /// With `since`: whether the messages follow it with nothing lost.
    pub recovered: Option<bool>,
}

impl Answer {
    /// The `history` frame for `channel`, echoing `id`.
    pub fn frame(&self, channel: &str, id: Option<&RawValue>) -> protocol::Frame {
        protocol::history(channel, id, &self.header(), self.entries())
    }

    /// The answer as the HTTP API's JSON body.
    pub fn json(&self, channel: &str) -> serde_json::Value {
        let text = self.frame(channel, None);
        let mut value: serde_json::Value =
            serde_json::from_str(text.as_str()).expect("the history frame is JSON");
        if let Some(object) = value.as_object_mut() {
            object.remove("type");
        }
        value
    }

    fn header(&self) -> HistoryPage<'_> {
        HistoryPage {
            position: &self.page.position,
            first: self.page.first,
            limit: self.limit,
            clamped: self.clamped,
            recovered: self.recovered,
        }
    }

    fn entries(&self) -> Vec<HistoryEntry<'_>> {
        self.page
            .messages
            .iter()
            .map(|(offset, data)| HistoryEntry {
                offset: *offset,
                data,
            })
            .collect()
    }
}

//! The publish path shared by WebSocket clients and the HTTP API: the channel rules, the depth
//! of `data`, the namespace's publish hook, then the broker.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::broker::{self, Broker};
use crate::config::Limits;
use crate::history::{Namespaces, Position};
use crate::identity::Identity;
use crate::membership::Event;
use crate::metrics::Latency;
use crate::plugins::Routed;
use crate::plugins::registry::PluginRegistry;
use crate::protocol::{self, ErrorCode, Rejection};

/// Publishes for every client and backend of the node.
pub struct Publisher {
    broker: Arc<dyn Broker>,
    plugins: Arc<PluginRegistry>,
    /// Which channels keep history.
    namespaces: Arc<Namespaces>,
    max_channel_len: usize,
    channel_chars: String,
    max_json_depth: usize,
    metrics: Arc<PublishMetrics>,
}

/// Metric handles every publish records into, looked up once: the `metrics` macros look the
/// name up in the registry on every call.
struct PublishMetrics {
    published: metrics::Counter,
    seconds: Arc<Latency>,
    failed: metrics::Counter,
}

impl Publisher {
    /// Publishes through `broker` after `plugins`' publish hooks, under `limits`, storing
    /// messages on the channels `namespaces` give history. Build it after the metrics
    /// recorder is installed: the handles it takes are the recorder's.
    pub fn new(
        broker: Arc<dyn Broker>,
        plugins: Arc<PluginRegistry>,
        namespaces: Arc<Namespaces>,
        limits: &Limits,
    ) -> Self {
        Self {
            broker,
            plugins,
            namespaces,
            max_channel_len: limits.max_channel_len,
            channel_chars: limits.channel_chars.clone(),
            max_json_depth: limits.max_json_depth,
            metrics: Arc::new(PublishMetrics {
                published: metrics::counter!("switchyard_messages_published_total"),
                seconds: Latency::get("switchyard_publish_seconds", &[]),
                failed: metrics::counter!(
                    "switchyard_messages_dropped_total",
                    "reason" => "broker_unavailable"
                ),
            }),
        }
    }

    /// Checks a channel name against the configured rules.
    pub fn check_channel(&self, channel: &str) -> Result<(), Rejection> {
        protocol::validate_channel(channel, self.max_channel_len, &self.channel_chars)
    }

    /// Publishes `data` (JSON text) on `channel` as `who`; resolves once the broker accepted
    /// every message the publish made, with the message's position when it was one message
    /// on a channel with history.
    pub async fn publish(
        &self,
        who: &Identity,
        channel: &str,
        data: &str,
    ) -> Result<Option<Position>, Rejection> {
        self.start(who, channel, data)?.await
    }

    /// [`Publisher::publish`] in two steps, so a connection can have several publishes in
    /// flight: checks, the publish hook and the hand-over to the broker happen now, so calls
    /// reach the broker in call order (the embedded broker delivers right then); the returned
    /// future resolves once the broker accepted every message.
    pub fn start(
        &self,
        who: &Identity,
        channel: &str,
        data: &str,
    ) -> Result<PublishAck, Rejection> {
        self.check_channel(channel)?;
        protocol::check_depth(data.as_bytes(), self.max_json_depth)?;
        match self.plugins.current().publish(who, channel, data)? {
            Routed::Pass => Ok(self.send(channel, data)),
            Routed::Drop => Ok(PublishAck(Sending::Done)),
            Routed::Forward(list) => {
                // Check every destination before publishing any, so a bad route publishes nothing.
                for (to, _) in &list {
                    self.check_channel(to).map_err(|r| {
                        Rejection::new(
                            ErrorCode::PluginError,
                            format!("plugin forwarded to an invalid channel: {}", r.message),
                        )
                    })?;
                }
                let acks: Vec<PublishAck> =
                    list.iter().map(|(to, data)| self.send(to, data)).collect();
                Ok(PublishAck(Sending::Many(
                    futures_util::future::join_all(acks)
                        .map(|results| {
                            // Several messages: no one position to report.
                            results.into_iter().try_for_each(|r| r.map(drop))?;
                            Ok(None)
                        })
                        .boxed(),
                )))
            }
        }
    }

    /// Announces `event` to `channel`'s subscribers on every node, if its namespace asks for
    /// join/leave events. Not waited for, and never stored: a lost announcement (broker
    /// down) is counted, not retried.
    pub fn announce(&self, channel: &str, event: impl FnOnce() -> Event) {
        if !self.namespaces.join_leave(channel) {
            return;
        }
        let ack = self
            .broker
            .publish(channel, Bytes::from(event().envelope()), None);
        let failed = self.metrics.failed.clone();
        tokio::spawn(async move {
            if ack.await.is_err() {
                failed.increment(1);
            }
        });
    }

    fn send(&self, channel: &str, data: &str) -> PublishAck {
        let started = Instant::now();
        let ack = self.broker.publish(
            channel,
            Bytes::copy_from_slice(data.as_bytes()),
            self.namespaces.history(channel),
        );
        PublishAck(Sending::One {
            ack,
            started,
            metrics: self.metrics.clone(),
        })
    }
}

/// A publish handed to [`Publisher::start`]: resolves once the broker accepted every message
/// it made (with the position of a single message on a channel with history). Not boxed in
/// the common case (one message), for the reason [`broker::Ack`] is not.
pub struct PublishAck(Sending);

enum Sending {
    /// Nothing to wait for (the publish hook dropped the message).
    Done,
    /// One message, timed for the publish metrics.
    One {
        ack: broker::Ack,
        started: Instant,
        metrics: Arc<PublishMetrics>,
    },
    /// A hook forwarded it to several channels.
    Many(BoxFuture<'static, Result<Option<Position>, Rejection>>),
}

impl Future for PublishAck {
    type Output = Result<Option<Position>, Rejection>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Sending::Done => Poll::Ready(Ok(None)),
            Sending::One {
                ack,
                started,
                metrics,
            } => Pin::new(ack).poll(cx).map(|result| match result {
                Ok(position) => {
                    metrics.published.increment(1);
                    metrics.seconds.record(started.elapsed());
                    Ok(position)
                }
                Err(e) => {
                    metrics.failed.increment(1);
                    Err(Rejection::new(ErrorCode::Unavailable, e.to_string()))
                }
            }),
            Sending::Many(all) => all.as_mut().poll(cx),
        }
    }
}

//! Presence for a single node, in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::{ConnectionEntry, Presence, PresenceError, SubscriberEntry};
use crate::hub::ConnId;

/// Presence of this node only.
pub struct MemoryPresence {
    node: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    users: HashMap<String, BTreeMap<ConnId, u64>>,
    channels: HashMap<String, BTreeMap<ConnId, Option<String>>>,
}

impl MemoryPresence {
    /// Presence for node `node`.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            state: Mutex::default(),
        }
    }
}

impl Presence for MemoryPresence {
    fn connected(&self, conn: ConnId, user: &str, since_ms: u64) {
        let mut s = self.state.lock().expect("presence lock");
        s.users
            .entry(user.to_owned())
            .or_default()
            .insert(conn, since_ms);
    }

    fn disconnected(&self, conn: ConnId, user: &str, _since_ms: u64) {
        let mut s = self.state.lock().expect("presence lock");
        if let Some(m) = s.users.get_mut(user) {
            m.remove(&conn);
            if m.is_empty() {
                s.users.remove(user);
            }
        }
    }

    fn joined(&self, conn: ConnId, channel: &str, user: Option<&str>) {
        let mut s = self.state.lock().expect("presence lock");
        s.channels
            .entry(channel.to_owned())
            .or_default()
            .insert(conn, user.map(str::to_owned));
    }

    fn left(&self, conn: ConnId, channel: &str, _user: Option<&str>) {
        let mut s = self.state.lock().expect("presence lock");
        if let Some(m) = s.channels.get_mut(channel) {
            m.remove(&conn);
            if m.is_empty() {
                s.channels.remove(channel);
            }
        }
    }

    fn user(&self, user: &str) -> BoxFuture<'static, Result<Vec<ConnectionEntry>, PresenceError>> {
        let s = self.state.lock().expect("presence lock");
        let list = s
            .users
            .get(user)
            .map(|m| {
                m.iter()
                    .map(|(&conn, &connected_at)| ConnectionEntry {
                        node: self.node.clone(),
                        conn,
                        connected_at,
                    })
                    .collect()
            })
            .unwrap_or_default();
        futures_util::future::ready(Ok(list)).boxed()
    }

    fn channel(
        &self,
        channel: &str,
    ) -> BoxFuture<'static, Result<Vec<SubscriberEntry>, PresenceError>> {
        let s = self.state.lock().expect("presence lock");
        let list = s
            .channels
            .get(channel)
            .map(|m| {
                m.iter()
                    .map(|(&conn, user)| SubscriberEntry {
                        node: self.node.clone(),
                        conn,
                        user: user.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        futures_util::future::ready(Ok(list)).boxed()
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        *self.state.lock().expect("presence lock") = State::default();
        futures_util::future::ready(()).boxed()
    }
}

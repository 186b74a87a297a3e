//! Server-side control of live connections: the backend API's disconnect, unsubscribe,
//! subscribe and revoke, carried to every node on the control channel [`CHANNEL`] and applied
//! there to the sessions of the user they name ([`crate::connections`]).
//!
//! Revocations are also kept: in memory on every node (checked at connect and at refresh),
//! and with Redis in one hash, `<prefix>{revoked}` (field `jti:<jti>` or `user:<user>`, value
//! `<issued_before> <until>`), which a node loads when it starts and every
//! [`RELOAD_EVERY`] (so it also learns what it missed while the broker was down). An entry
//! is dropped once every token it covers has expired anyway.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::Grant;
use crate::broker::{Broker, BrokerError, Subscriptions};
use crate::hub::ConnId;
use crate::redis_link::{RedisConn, RedisTarget, bounded};

/// The control channel commands travel on (client channels never start with `$`).
pub const CHANNEL: &str = "$connections";

/// How often a node reloads the stored revocations.
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// A command for the live connections of one user, on whichever node they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Close the user's connections (or one of them) with `code` and `reason`.
    Disconnect {
        /// The user.
        user: String,
        /// Only this connection (with `node`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conn: Option<ConnId>,
        /// The node holding `conn`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// WebSocket close code.
        code: u16,
        /// Close reason text.
        reason: String,
    },
    /// End the user's subscriptions to `channel`.
    Unsubscribe {
        /// The user.
        user: String,
        /// The channel.
        channel: String,
    },
    /// Subscribe the user's connections to `channel`, through the subscribe hook if `hook`.
    Subscribe {
        /// The user.
        user: String,
        /// The channel.
        channel: String,
        /// Whether the channel's subscribe hook decides (else the subscription is made).
        hook: bool,
    },
    /// Revoke tokens: close the connections holding them, refuse them from now on.
    Revoke(Revocation),
}

impl Command {
    /// The user the command is for (`""` for a revocation by `jti`, which matches by token).
    pub fn user(&self) -> &str {
        match self {
            Command::Disconnect { user, .. }
            | Command::Unsubscribe { user, .. }
            | Command::Subscribe { user, .. } => user,
            Command::Revoke(r) => r.user.as_deref().unwrap_or_default(),
        }
    }

    /// Whether the command is for connection `conn` of node `node` (given it is the user's).
    pub fn aims_at(&self, node: &str, conn: ConnId) -> bool {
        match self {
            Command::Disconnect {
                conn: Some(c),
                node: n,
                ..
            } => *c == conn && n.as_deref().is_none_or(|n| n == node),
            _ => true,
        }
    }
}

/// Tokens revoked: the one with `jti`, or every token of `user` issued before
/// `issued_before` (a token without `iat` counts as issued before any time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The token's `jti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The user whose tokens are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Unix seconds: the user's tokens issued before this are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<u64>,
    /// Unix seconds after which every token the revocation covers has expired anyway.
    pub until: u64,
}

impl Revocation {
    /// Whether a connection of `user` holding `grant` is covered.
    pub fn covers(&self, user: Option<&str>, grant: &Grant) -> bool {
        match (&self.jti, &self.user) {
            (Some(jti), _) => grant.jti.as_deref() == Some(jti.as_str()),
            (None, Some(u)) => {
                user == Some(u.as_str())
                    && grant.issued.unwrap_or(0) < self.issued_before.unwrap_or(u64::MAX)
            }
            (None, None) => false,
        }
    }

    /// The field it is stored under.
    fn field(&self) -> String {
        match (&self.jti, &self.user) {
            (Some(jti), _) => format!("jti:{jti}"),
            (None, user) => format!("user:{}", user.as_deref().unwrap_or_default()),
        }
    }

    /// Rebuilds a stored revocation.
    fn parse(field: &str, value: &str) -> Option<Self> {
        let (before, until) = value.split_once(' ')?;
        let until = until.parse().ok()?;
        let before = before.parse().ok();
        Some(match field.split_once(':')? {
            ("jti", jti) => Revocation {
                jti: Some(jti.to_owned()),
                user: None,
                issued_before: None,
                until,
            },
            ("user", user) => Revocation {
                jti: None,
                user: Some(user.to_owned()),
                issued_before: before,
                until,
            },
            _ => return None,
        })
    }

    fn value(&self) -> String {
        format!("{} {}", self.issued_before.unwrap_or(0), self.until)
    }
}

/// The revocations in force, in memory, and their store.
pub struct Revocations {
    /// By field (`jti:<jti>`, `user:<user>`).
    held: RwLock<HashMap<String, Revocation>>,
    store: Option<Store>,
}

struct Store {
    con: RedisConn,
    key: String,
}

impl Revocations {
    /// Revocations kept in memory, and in the Redis `target` names (loaded by [`run`]).
    pub fn new(target: Option<&RedisTarget>, prefix: &str) -> Result<Self, redis::RedisError> {
        let store = match target {
            Some(t) => Some(Store {
                con: t.connect(crate::redis_link::COMMAND_TIMEOUT)?,
                key: format!("{prefix}{{revoked}}"),
            }),
            None => None,
        };
        Ok(Self {
            held: RwLock::default(),
            store,
        })
    }

    /// Whether a connection of `user` holding `grant` may be opened or refreshed.
    pub fn allows(&self, user: Option<&str>, grant: &Grant) -> bool {
        let held = self.held.read().unwrap_or_else(PoisonError::into_inner);
        if held.is_empty() {
            return true;
        }
        let now = crate::clock::now_ms() / 1000;
        let by_jti = grant
            .jti
            .as_ref()
            .and_then(|jti| held.get(&format!("jti:{jti}")));
        let by_user = user.and_then(|u| held.get(&format!("user:{u}")));
        ![by_jti, by_user]
            .into_iter()
            .flatten()
            .any(|r| r.until >= now && r.covers(user, grant))
    }

    /// Keeps `revocation` in memory (a later one for the same user replaces it).
    fn hold(&self, revocation: Revocation) {
        let mut held = self.held.write().unwrap_or_else(PoisonError::into_inner);
        held.insert(revocation.field(), revocation);
    }

    /// Stores `revocation` (with Redis; without, it is held when its command arrives).
    pub async fn store(&self, revocation: &Revocation) -> Result<(), BrokerError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut con = store.con.clone();
        let set = redis::cmd("HSET")
            .arg(&store.key)
            .arg(revocation.field())
            .arg(revocation.value())
            .to_owned();
        bounded(set.query_async::<()>(&mut con))
            .await
            .map_err(|e| BrokerError::Unavailable(format!("revocation store: {e}")))
    }

    /// Replaces what is held with what is stored, dropping entries that expired.
    pub async fn load(&self) -> Result<(), String> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut con = store.con.clone();
        let all: HashMap<String, String> =
            bounded(redis::cmd("HGETALL").arg(&store.key).query_async(&mut con)).await?;
        let now = crate::clock::now_ms() / 1000;
        let mut expired = Vec::new();
        let mut held = HashMap::new();
        for (field, value) in all {
            match Revocation::parse(&field, &value) {
                Some(r) if r.until >= now => {
                    held.insert(field, r);
                }
                _ => expired.push(field),
            }
        }
        if !expired.is_empty() {
            let del = redis::cmd("HDEL").arg(&store.key).arg(&expired).to_owned();
            bounded(del.query_async::<()>(&mut con)).await?;
        }
        *self.held.write().unwrap_or_else(PoisonError::into_inner) = held;
        Ok(())
    }
}

/// Sends `command` to every node (this one too) through the broker.
pub async fn send(broker: &dyn Broker, command: &Command) -> Result<(), BrokerError> {
    let payload = serde_json::to_vec(command).expect("commands serialize");
    broker
        .publish(CHANNEL, Bytes::from(payload), None)
        .await
        .map(|_| ())
}

/// What applies a command on this node.
pub trait Apply: Send + Sync + 'static {
    /// Applies `command` to this node's sessions.
    fn apply(&self, command: &Command);
}

/// Serves the control channel until `shutdown`: subscribes to it (retrying until the broker
/// accepts), then applies every command that arrives and reloads the stored revocations
/// every [`RELOAD_EVERY`] (the node loaded them before it served).
pub async fn run(
    revocations: Arc<Revocations>,
    apply: Arc<dyn Apply>,
    subscriptions: Subscriptions,
    mut commands: mpsc::UnboundedReceiver<Bytes>,
    shutdown: CancellationToken,
) {
    while subscriptions.subscribe(CHANNEL).await.is_err() {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    // The node loaded them before it started serving (`Node::start`).
    let mut reload =
        tokio::time::interval_at(tokio::time::Instant::now() + RELOAD_EVERY, RELOAD_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = reload.tick() => {
                if let Err(e) = revocations.load().await {
                    tracing::warn!(error = %e, "cannot load revocations; keeping those held");
                }
            }
            payload = commands.recv() => {
                let Some(payload) = payload else { return };
                match serde_json::from_slice::<Command>(&payload) {
                    Ok(command) => {
                        if let Command::Revoke(r) = &command {
                            revocations.hold(r.clone());
                        }
                        apply.apply(&command);
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring malformed connection command"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(jti: Option<&str>, issued: Option<u64>) -> Grant {
        Grant {
            expires: 2_000,
            issued,
            jti: jti.map(str::to_owned),
        }
    }

    #[test]
    fn a_revocation_covers_its_jti_or_the_users_older_tokens() {
        let by_jti = Revocation {
            jti: Some("a".into()),
            user: None,
            issued_before: None,
            until: 5_000,
        };
        assert!(by_jti.covers(Some("ann"), &grant(Some("a"), None)));
        assert!(!by_jti.covers(Some("ann"), &grant(Some("b"), None)));
        let by_user = Revocation {
            jti: None,
            user: Some("ann".into()),
            issued_before: Some(100),
            until: 5_000,
        };
        assert!(by_user.covers(Some("ann"), &grant(None, Some(99))));
        assert!(by_user.covers(Some("ann"), &grant(None, None)));
        assert!(!by_user.covers(Some("ann"), &grant(None, Some(100))));
        assert!(!by_user.covers(Some("bob"), &grant(None, Some(1))));
        for r in [by_jti, by_user] {
            assert_eq!(Revocation::parse(&r.field(), &r.value()), Some(r));
        }
    }

    #[test]
    fn commands_keep_their_wire_form() {
        let c = Command::Disconnect {
            user: "ann".into(),
            conn: Some(3),
            node: Some("n1".into()),
            code: 4005,
            reason: "bye".into(),
        };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(
            text,
            r#"{"op":"disconnect","user":"ann","conn":3,"node":"n1","code":4005,"reason":"bye"}"#
        );
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), c);
        assert!(c.aims_at("n1", 3) && !c.aims_at("n2", 3) && !c.aims_at("n1", 4));
    }
}

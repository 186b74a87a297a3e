//! Plain Rust types for everything that crosses the plugin boundary.
//!
//! They mirror the records and variants of `wit/plugin.wit` one to one, but are owned by the
//! SDK (not generated), so they implement `PartialEq`, `Default` and friendly constructors,
//! and they stay stable if the binding generator changes.

use serde_json::Value;

/// Who is acting: the connection's identity after authentication and the connect hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Stable user id, if the connection is authenticated.
    pub user: Option<String>,
    /// Tenant the user belongs to, if any.
    pub tenant: Option<String>,
    /// Extra claims as a JSON object (text); `{}` when there are none.
    pub claims: String,
}

impl Default for Identity {
    fn default() -> Self {
        Self::anonymous()
    }
}

impl Identity {
    /// An unauthenticated identity: no user, no tenant, claims `{}`.
    pub fn anonymous() -> Self {
        Self {
            user: None,
            tenant: None,
            claims: "{}".to_owned(),
        }
    }

    /// An identity for `user`, without tenant or claims.
    pub fn user(user: impl Into<String>) -> Self {
        Self::anonymous().with_user(user)
    }

    /// Returns this identity with its user set to `user`.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Returns this identity with its tenant set to `tenant`.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Returns this identity with its claims set to the JSON object `claims`.
    pub fn with_claims(mut self, claims: &Value) -> Self {
        self.claims = claims.to_string();
        self
    }

    /// The user id, if any, as `&str`.
    pub fn user_id(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The tenant, if any, as `&str`.
    pub fn tenant_id(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The claims parsed as JSON (`{}` when the text is empty).
    pub fn claims_json(&self) -> Result<Value, String> {
        if self.claims.trim().is_empty() {
            return Ok(Value::Object(Default::default()));
        }
        crate::json::parse(&self.claims)
    }
}

/// What a plugin learns about a new connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectInfo {
    /// Peer address as `ip:port`.
    pub remote_addr: String,
    /// Request headers the gateway is configured to forward (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Raw query string of the upgrade request, without the `?`.
    pub query: String,
    /// Identity verified by the gateway (anonymous when auth is off).
    pub identity: Identity,
}

impl ConnectInfo {
    /// The first forwarded header called `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter called `name`, as it appears in the query (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}

/// Verdict of the connect hook.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConnectDecision {
    /// Accept the connection with its identity unchanged.
    #[default]
    Accept,
    /// Accept and replace the identity (e.g. add tenant or claims).
    Enrich(Identity),
    /// Refuse the connection; the reason is sent to the client.
    Reject(String),
}

impl ConnectDecision {
    /// Refuse the connection with `reason`.
    pub fn reject(reason: impl Into<String>) -> Self {
        Self::Reject(reason.into())
    }
}

/// Verdict of the subscribe hook.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SubscribeDecision {
    /// Allow, in the default delivery group (the subscriber's tenant).
    #[default]
    Allow,
    /// Allow, and deliver to this subscriber as part of the named group.
    AllowInGroup(String),
    /// Refuse; the reason is sent to the client with code `forbidden`.
    Deny(String),
}

impl SubscribeDecision {
    /// Refuse the subscription with `reason`.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self::Deny(reason.into())
    }

    /// Allow the subscription in the delivery group `group`.
    pub fn allow_in_group(group: impl Into<String>) -> Self {
        Self::AllowInGroup(group.into())
    }
}

/// One message a publish hook routes onward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Destination channel.
    pub channel: String,
    /// Payload as JSON text.
    pub data: String,
}

impl Outgoing {
    /// A message for `channel` whose payload is the JSON text `data`.
    pub fn new(channel: impl Into<String>, data: impl Into<String>) -> Self {
        Self {
            channel: channel.into(),
            data: data.into(),
        }
    }

    /// A message for `channel` whose payload is `value` serialised as JSON.
    pub fn json(channel: impl Into<String>, value: &Value) -> Self {
        Self::new(channel, crate::json::to_string(value))
    }
}

/// Verdict of the publish hook.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PublishDecision {
    /// Publish the message unchanged to its own channel.
    #[default]
    Pass,
    /// Publish these messages instead (zero or more, possibly rewritten or rerouted).
    Forward(Vec<Outgoing>),
    /// Refuse; the reason is sent to the publisher with code `forbidden`.
    Reject(String),
    /// Discard silently; the publisher is acknowledged as if it had been published.
    Drop,
}

impl PublishDecision {
    /// Refuse the publish with `reason`.
    pub fn reject(reason: impl Into<String>) -> Self {
        Self::Reject(reason.into())
    }

    /// Publish exactly one message instead of the original.
    pub fn forward_one(message: Outgoing) -> Self {
        Self::Forward(vec![message])
    }
}

/// The delivery group a message is about to be delivered to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupContext {
    /// Group key: the tenant, or the key a subscribe hook chose; empty for the default group.
    pub key: String,
    /// Tenant of the group's subscribers, if known.
    pub tenant: Option<String>,
}

/// Verdict of the deliver hook.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeliverDecision {
    /// Deliver the message unchanged.
    #[default]
    Deliver,
    /// Deliver this JSON text instead.
    Rewrite(String),
    /// Do not deliver to this group.
    Skip,
}

impl DeliverDecision {
    /// Deliver `value` (serialised as JSON) instead of the original payload.
    pub fn rewrite_json(value: &Value) -> Self {
        Self::Rewrite(crate::json::to_string(value))
    }
}

/// Severity of a log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected but handled.
    Warn,
    /// Something failed.
    Error,
}

//! Who is on a connection: the gateway's own identity. The plugin contract has a record of the
//! same name; plugins get one built from this, borrowing, at each call (`crate::plugins`).

use std::sync::{Arc, LazyLock};

/// A connection's identity after authentication and the connect hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Stable user id, if the connection is authenticated.
    pub user: Option<String>,
    /// Tenant the user belongs to, if any.
    pub tenant: Option<String>,
    /// All claims as a JSON object (text); `{}` when there are none.
    pub claims: String,
}

impl Identity {
    /// The identity of a connection nobody authenticated.
    pub fn anonymous() -> Self {
        Self {
            user: None,
            tenant: None,
            claims: "{}".to_owned(),
        }
    }

    /// The identity plugins see for publishes through the backend API.
    pub fn server() -> Self {
        Self {
            user: None,
            tenant: None,
            claims: r#"{"source":"api"}"#.to_owned(),
        }
    }

    /// Whether this is the anonymous identity.
    pub fn is_anonymous(&self) -> bool {
        self.user.is_none() && self.tenant.is_none() && self.claims == "{}"
    }

    /// This identity behind an `Arc` for a session to keep: anonymous connections share one,
    /// so each keeps 8 bytes in its task instead of the identity's 72 (idle memory,
    /// docs/benchmarks.md).
    pub fn shared(self) -> Arc<Self> {
        static ANONYMOUS: LazyLock<Arc<Identity>> =
            LazyLock::new(|| Arc::new(Identity::anonymous()));
        if self.is_anonymous() {
            ANONYMOUS.clone()
        } else {
            Arc::new(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_connections_share_one_identity() {
        let (a, b) = (
            Identity::anonymous().shared(),
            Identity::anonymous().shared(),
        );
        assert!(Arc::ptr_eq(&a, &b));
        let user = Identity {
            user: Some("ann".into()),
            ..Identity::anonymous()
        };
        assert!(!Arc::ptr_eq(&user.clone().shared(), &user.shared()));
    }
}

//! Connection authentication: JWT verification and the allowed-origins check, applied to the
//! WebSocket upgrade request before any session exists.

use std::collections::HashMap;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::AuthConfig;
use crate::identity::Identity;

/// The credentials of an `Authorization: Bearer <credentials>` header: the scheme is matched
/// without regard to case (RFC 9110 section 11.1) and the credentials are trimmed. The one
/// parser for every endpoint that takes a token or key (`/ws`, `/api`, `/admin`).
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    let credentials = credentials.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty()).then_some(credentials)
}

/// Whether `given` equals one of `secrets`, comparing every one in constant time so the
/// answer's timing says nothing about how much of a secret matched.
pub fn matches_secret<'a>(given: &str, secrets: impl IntoIterator<Item = &'a str>) -> bool {
    use subtle::ConstantTimeEq;
    secrets.into_iter().fold(false, |ok, secret| {
        ok | bool::from(secret.as_bytes().ct_eq(given.as_bytes()))
    })
}

/// Why a connection was refused before upgrading; each maps to a distinct reason text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, and anonymous connections are refused.
    #[error("authentication required")]
    Missing,
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The token's `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `aud` does not match `auth.audience`.
    #[error("token audience not accepted")]
    WrongAudience,
    /// `iss` does not match `auth.issuer`.
    #[error("token issuer not accepted")]
    WrongIssuer,
    /// A claim the configuration requires is absent: `exp` always, `aud` when `auth.audience`
    /// is set, `iss` when `auth.issuer` is set. A token minted for another service by the same
    /// key usually lacks them, and must not be let in.
    #[error("token lacks the required `{0}` claim")]
    MissingClaim(String),
    /// The signature does not verify.
    #[error("token signature invalid")]
    BadSignature,
    /// The token's algorithm has no configured key.
    #[error("token algorithm {0} not accepted")]
    WrongAlgorithm(String),
    /// The token is not a well-formed JWT.
    #[error("token malformed: {0}")]
    Malformed(String),
    /// The `Origin` header is not in `auth.allowed_origins`.
    #[error("origin {0:?} not allowed")]
    Origin(String),
    /// The token was revoked (`POST /api/revoke`).
    #[error("token revoked")]
    Revoked,
    /// A refresh token names another user or tenant than the connection's.
    #[error("token names another {0} than the connection's")]
    NotSame(&'static str),
}

/// Why the auth configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct AuthConfigError {
    /// Config key.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

/// What a verified token grants besides an identity: until when, and the names revocation
/// knows it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's `exp` (Unix seconds): the connection is closed after it (and the leeway)
    /// unless the client refreshes.
    pub expires: u64,
    /// The token's `iat` (Unix seconds), if it has one.
    pub issued: Option<u64>,
    /// The token's `jti`, if it has one.
    pub jti: Option<String>,
}

/// A connection request that passed authentication.
#[derive(Debug)]
pub struct Verified {
    /// Who it is (before the connect hook).
    pub identity: Identity,
    /// What its token grants; `None` for an anonymous connection.
    pub grant: Option<Grant>,
}

/// Verifies tokens and origins with keys loaded once at start.
pub struct Authenticator {
    config: AuthConfig,
    keys: HashMap<Algorithm, DecodingKey>,
}

impl Authenticator {
    /// Loads the configured keys (reads and parses the key files); `config` was validated
    /// when the configuration was loaded ([`AuthConfig::validate`]).
    pub fn new(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        let mut keys = HashMap::new();
        if let Some(secret) = &config.hs256_secret {
            keys.insert(
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            );
        }
        type Parse = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
        let files: [(&'static str, &Option<std::path::PathBuf>, Algorithm, Parse); 2] = [
            (
                "auth.rs256_public_key_file",
                &config.rs256_public_key_file,
                Algorithm::RS256,
                DecodingKey::from_rsa_pem,
            ),
            (
                "auth.es256_public_key_file",
                &config.es256_public_key_file,
                Algorithm::ES256,
                DecodingKey::from_ec_pem,
            ),
        ];
        for (key, path, alg, parse) in files {
            let Some(path) = path else { continue };
            let pem = std::fs::read(path).map_err(|e| AuthConfigError {
                key,
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            let k = parse(&pem).map_err(|e| AuthConfigError {
                key,
                message: e.to_string(),
            })?;
            keys.insert(alg, k);
        }
        Ok(Self {
            config: config.clone(),
            keys,
        })
    }

    /// Checks the request's `Origin` header, if it has one.
    pub fn check_origin(&self, origin: Option<&str>) -> Result<(), AuthError> {
        match origin {
            Some(o)
                if !self.config.allowed_origins.is_empty()
                    && !self.config.allowed_origins.iter().any(|a| a == o) =>
            {
                Err(AuthError::Origin(o.to_owned()))
            }
            _ => Ok(()),
        }
    }

    /// Turns the request's token (if any) into an identity and what the token grants.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Verified, AuthError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return if self.config.anonymous {
                Ok(Verified {
                    identity: Identity::anonymous(),
                    grant: None,
                })
            } else {
                Err(AuthError::Missing)
            };
        };
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let key = self
            .keys
            .get(&header.alg)
            .ok_or_else(|| AuthError::WrongAlgorithm(format!("{:?}", header.alg)))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway_secs;
        validation.validate_nbf = true;
        // jsonwebtoken checks `aud` and `iss` only when the token has them: a configured
        // audience or issuer must also be required, or a token without the claim passes.
        validation.required_spec_claims.clear();
        validation.required_spec_claims.insert("exp".to_owned());
        match &self.config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.config.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            key,
            &validation,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm(format!("{:?}", header.alg)),
            ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
            other => AuthError::Malformed(format!("{other:?}")),
        })?;
        let claims = data.claims;
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let seconds = |name: &str| claims.get(name).and_then(serde_json::Value::as_u64);
        // `exp` is required and checked above: it is a number of seconds here.
        let grant = Grant {
            expires: seconds("exp").unwrap_or_default(),
            issued: seconds("iat"),
            jti: text("jti"),
        };
        Ok(Verified {
            identity: Identity {
                user: text(&self.config.user_claim),
                tenant: text(&self.config.tenant_claim),
                claims: serde_json::Value::Object(claims.clone()).to_string(),
            },
            grant: Some(grant),
        })
    }

    /// Verifies `token`, offered to extend the life of a connection of `identity` (as the
    /// connect hook left it): it must pass as a new connection's token would, and name the
    /// same user and tenant.
    pub fn refresh(&self, token: &str, identity: &Identity) -> Result<Grant, AuthError> {
        let verified = self.authenticate(Some(token))?;
        let grant = verified.grant.ok_or(AuthError::Missing)?;
        if verified.identity.user != identity.user {
            return Err(AuthError::NotSame("user"));
        }
        if verified.identity.tenant != identity.tenant {
            return Err(AuthError::NotSame("tenant"));
        }
        Ok(grant)
    }

    /// Seconds of clock skew tolerated on `exp`: a connection closes this long after it.
    pub fn leeway_secs(&self) -> u64 {
        self.config.leeway_secs
    }

    /// `auth.expiry_warning_secs`.
    pub fn warning_secs(&self) -> u64 {
        self.config.expiry_warning_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123";

    fn auth(extra: impl FnOnce(&mut AuthConfig)) -> Authenticator {
        let mut c = AuthConfig {
            hs256_secret: Some(SECRET.into()),
            anonymous: false,
            audience: Some("switchyard".into()),
            ..AuthConfig::default()
        };
        extra(&mut c);
        Authenticator::new(&c).unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn valid_token_maps_claims() {
        let exp = now() + 60;
        let t = token(
            json!({"sub": "ann", "tenant": "acme", "aud": "switchyard", "exp": exp, "role": "x"}),
        );
        let verified = auth(|_| {}).authenticate(Some(&t)).unwrap();
        let id = verified.identity;
        assert_eq!(
            (id.user.as_deref(), id.tenant.as_deref()),
            (Some("ann"), Some("acme"))
        );
        assert!(id.claims.contains("\"role\":\"x\""));
        let grant = verified.grant.unwrap();
        assert_eq!((grant.issued, grant.jti), (None, None));
        assert_eq!(grant.expires as i64, exp);
    }

    #[test]
    fn a_refresh_must_name_the_same_user_and_tenant() {
        let a = auth(|_| {});
        let exp = now() + 90;
        let claims = |sub: &str, tenant: &str| json!({"sub": sub, "tenant": tenant, "aud": "switchyard", "exp": exp, "iat": 1, "jti": "j2"});
        let ann = a
            .authenticate(Some(&token(claims("ann", "acme"))))
            .unwrap()
            .identity;
        let grant = a.refresh(&token(claims("ann", "acme")), &ann).unwrap();
        assert_eq!(grant.jti.as_deref(), Some("j2"));
        assert_eq!((grant.expires as i64, grant.issued), (exp, Some(1)));
        assert_eq!(
            a.refresh(&token(claims("bob", "acme")), &ann).err(),
            Some(AuthError::NotSame("user"))
        );
        assert_eq!(
            a.refresh(&token(claims("ann", "other")), &ann).err(),
            Some(AuthError::NotSame("tenant"))
        );
        let expired =
            token(json!({"sub": "ann", "tenant": "acme", "aud": "switchyard", "exp": now() - 600}));
        assert_eq!(a.refresh(&expired, &ann).err(), Some(AuthError::Expired));
        assert_eq!(a.refresh("", &ann).err(), Some(AuthError::Missing));
    }

    #[test]
    fn distinct_reasons() {
        let a = auth(|_| {});
        let exp = token(json!({"sub": "a", "aud": "switchyard", "exp": now() - 600}));
        let nbf =
            token(json!({"sub": "a", "aud": "switchyard", "exp": now() + 600, "nbf": now() + 300}));
        let aud = token(json!({"sub": "a", "aud": "other", "exp": now() + 600}));
        let sig = encode(
            &Header::default(),
            &json!({"sub": "a", "aud": "switchyard", "exp": now() + 600}),
            &EncodingKey::from_secret(b"another-secret-entirely"),
        )
        .unwrap();
        let alg = encode(
            &Header::new(Algorithm::HS384),
            &json!({"sub": "a", "aud": "switchyard", "exp": now() + 600}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(a.authenticate(Some(&exp)).err(), Some(AuthError::Expired));
        assert_eq!(
            a.authenticate(Some(&nbf)).err(),
            Some(AuthError::NotYetValid)
        );
        assert_eq!(
            a.authenticate(Some(&aud)).err(),
            Some(AuthError::WrongAudience)
        );
        assert_eq!(
            a.authenticate(Some(&sig)).err(),
            Some(AuthError::BadSignature)
        );
        assert!(matches!(
            a.authenticate(Some(&alg)),
            Err(AuthError::WrongAlgorithm(_))
        ));
        assert_eq!(a.authenticate(None).err(), Some(AuthError::Missing));
        assert!(matches!(
            a.authenticate(Some("x.y")),
            Err(AuthError::Malformed(_))
        ));
    }

    /// A token minted by the same key for another service (no `aud`, no `iss`) is refused
    /// when the configuration names an audience or an issuer.
    #[test]
    fn configured_audience_and_issuer_are_required() {
        let a = auth(|c| c.issuer = Some("https://issuer.example".into()));
        let no_aud = token(json!({"sub": "a", "iss": "https://issuer.example", "exp": now() + 60}));
        let no_iss = token(json!({"sub": "a", "aud": "switchyard", "exp": now() + 60}));
        let both = token(
            json!({"sub": "a", "aud": "switchyard", "iss": "https://issuer.example", "exp": now() + 60}),
        );
        let no_exp =
            token(json!({"sub": "a", "aud": "switchyard", "iss": "https://issuer.example"}));
        assert_eq!(
            a.authenticate(Some(&no_aud)).err(),
            Some(AuthError::MissingClaim("aud".into()))
        );
        assert_eq!(
            a.authenticate(Some(&no_iss)).err(),
            Some(AuthError::MissingClaim("iss".into()))
        );
        assert_eq!(
            a.authenticate(Some(&no_exp)).err(),
            Some(AuthError::MissingClaim("exp".into()))
        );
        assert_eq!(
            a.authenticate(Some(&both))
                .unwrap()
                .identity
                .user
                .as_deref(),
            Some("a")
        );
        // Without an audience or issuer configured, neither claim is needed.
        let open = auth(|c| c.audience = None);
        assert!(open.authenticate(Some(&no_aud)).is_ok());
    }

    #[test]
    fn rs256_and_es256_with_public_key_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let a = Authenticator::new(&AuthConfig {
            anonymous: false,
            rs256_public_key_file: Some(dir.join("rs256.pub.pem")),
            es256_public_key_file: Some(dir.join("es256.pub.pem")),
            ..AuthConfig::default()
        })
        .unwrap();
        let claims = json!({"sub": "rsa-user", "tenant": "t", "exp": now() + 60});
        let rsa = std::fs::read(dir.join("rs256.key.pem")).unwrap();
        let ec = std::fs::read(dir.join("es256.key.pem")).unwrap();
        let rs = encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(&rsa).unwrap(),
        )
        .unwrap();
        let es = encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(&ec).unwrap(),
        )
        .unwrap();
        assert_eq!(
            a.authenticate(Some(&rs)).unwrap().identity.user.as_deref(),
            Some("rsa-user")
        );
        assert_eq!(
            a.authenticate(Some(&es))
                .unwrap()
                .identity
                .tenant
                .as_deref(),
            Some("t")
        );
        // An HS256 token is refused: no secret is configured, whatever it is signed with.
        assert!(matches!(
            a.authenticate(Some(&token(claims))),
            Err(AuthError::WrongAlgorithm(_))
        ));
        // A signature taken from another token does not verify this one's claims.
        let other = encode(
            &Header::new(Algorithm::ES256),
            &json!({"sub": "someone-else", "exp": now() + 60}),
            &EncodingKey::from_ec_pem(&ec).unwrap(),
        )
        .unwrap();
        let (body, _) = es.rsplit_once('.').unwrap();
        let (_, sig) = other.rsplit_once('.').unwrap();
        let bad = format!("{body}.{sig}");
        assert_eq!(
            a.authenticate(Some(&bad)).err(),
            Some(AuthError::BadSignature)
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        use axum::http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_static(v));
            h
        };
        assert_eq!(bearer(&with("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&with("bearer abc ")), Some("abc"));
        assert_eq!(bearer(&with("BEARER  abc")), Some("abc"));
        assert_eq!(bearer(&with("Basic abc")), None);
        assert_eq!(bearer(&with("Bearer ")), None);
        assert_eq!(bearer(&with("Bearerabc")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn secrets_match_whole() {
        assert!(matches_secret("k2", ["k1", "k2"]));
        assert!(!matches_secret("k", ["k1", "k2"]));
        assert!(!matches_secret("k1x", ["k1"]));
        assert!(!matches_secret("k1", []));
    }

    #[test]
    fn origins() {
        let a = auth(|c| c.allowed_origins = vec!["https://ok.example".into()]);
        assert!(a.check_origin(Some("https://ok.example")).is_ok());
        assert!(a.check_origin(None).is_ok());
        assert_eq!(
            a.check_origin(Some("https://evil.example")),
            Err(AuthError::Origin("https://evil.example".into()))
        );
    }
}

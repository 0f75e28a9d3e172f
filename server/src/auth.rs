//! User authentication on the REST API: HTTP basic auth (GoFD-compatible)
//! and bearer JWTs ([`UserClaims`], audience [`AUD_API`]).
//!
//! Passwords are checked against the Argon2 PHC hash of the configuration.
//! Argon2 is slow on purpose, so the check runs on the blocking pool, at most
//! [`MAX_CONCURRENT_HASHES`] at once, and a successful `(user, SHA-1(password))`
//! pair is remembered (in a small bounded set) so scripts that poll do not pay
//! it on every request. Failures are never cached.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use chrono::{TimeZone, Utc};
use pollen_protocol::api::TokenResponse;
use pollen_protocol::token::{now_secs, Signer, UserClaims, Verifier, AUD_API};
use sha1::{Digest, Sha1};
use tokio::sync::Semaphore;

use crate::api_error::ApiError;

/// Argon2 verifications running at once; more wait.
pub const MAX_CONCURRENT_HASHES: usize = 2;
/// Successful credential pairs remembered; the set is cleared when full.
const CACHE_CAPACITY: usize = 64;

/// The user's credentials: a name and an Argon2 PHC hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password_hash: String,
}

/// How a request proved who it is; inserted as a request extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    Basic,
    Bearer,
}

/// Checks user credentials and issues user bearer tokens.
pub struct Authenticator {
    credentials: Credentials,
    signer: Signer,
    verifier: Verifier,
    token_ttl_secs: i64,
    verified: Mutex<HashSet<[u8; 20]>>,
    hashing: Semaphore,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("username", &self.credentials.username)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for `credentials`; tokens live `token_ttl_secs`.
    pub fn new(
        credentials: Credentials,
        signer: Signer,
        verifier: Verifier,
        token_ttl_secs: u64,
    ) -> Self {
        Self {
            credentials,
            signer,
            verifier,
            token_ttl_secs: i64::try_from(token_ttl_secs).unwrap_or(i64::MAX / 2),
            verified: Mutex::new(HashSet::new()),
            hashing: Semaphore::new(MAX_CONCURRENT_HASHES),
        }
    }

    /// The configured user name.
    pub fn username(&self) -> &str {
        &self.credentials.username
    }

    fn cache_key(user: &str, password: &str) -> [u8; 20] {
        let mut h = Sha1::new();
        h.update(user.as_bytes());
        h.update([0u8]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Whether `user`/`password` are the configured credentials.
    pub async fn check_password(&self, user: &str, password: &str) -> bool {
        if user != self.credentials.username {
            return false;
        }
        let key = Self::cache_key(user, password);
        if self.verified.lock().is_ok_and(|set| set.contains(&key)) {
            return true;
        }
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        let hash = self.credentials.password_hash.clone();
        let plain = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || pollen_config::verify_password(&hash, &plain))
            .await
            .unwrap_or(false);
        if ok {
            if let Ok(mut set) = self.verified.lock() {
                if set.len() >= CACHE_CAPACITY {
                    set.clear();
                }
                set.insert(key);
            }
        }
        ok
    }

    /// Authenticates an `Authorization` header value.
    ///
    /// # Errors
    /// 401 (`WWW-Authenticate: Basic`) when it is missing, malformed or wrong.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<AuthMethod, ApiError> {
        let Some(value) = authorization else {
            return Err(ApiError::unauthorized_basic("authentication required"));
        };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::unauthorized_basic("malformed basic credentials"))?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or_else(|| ApiError::unauthorized_basic("malformed basic credentials"))?;
            if self.check_password(user, password).await {
                Ok(AuthMethod::Basic)
            } else {
                Err(ApiError::unauthorized_basic("wrong user name or password"))
            }
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let claims: UserClaims = self
                .verifier
                .verify(rest, AUD_API)
                .map_err(|e| ApiError::unauthorized_basic(format!("bearer token rejected: {e}")))?;
            if claims.sub != self.credentials.username {
                return Err(ApiError::unauthorized_basic(
                    "bearer token is for another user",
                ));
            }
            Ok(AuthMethod::Bearer)
        } else {
            Err(ApiError::unauthorized_basic(
                "unsupported authorization scheme; use Basic or Bearer",
            ))
        }
    }

    /// Issues a bearer token for the configured user.
    ///
    /// # Errors
    /// 500 if signing fails.
    pub fn issue_token(&self) -> Result<TokenResponse, ApiError> {
        let iat = now_secs();
        let exp = iat.saturating_add(self.token_ttl_secs);
        let claims = UserClaims {
            aud: AUD_API.into(),
            sub: self.credentials.username.clone(),
            iat,
            exp,
        };
        let token = self.signer.sign(&claims).map_err(ApiError::internal)?;
        let expires_at = Utc.timestamp_opt(exp, 0).single().unwrap_or_else(Utc::now);
        Ok(TokenResponse { token, expires_at })
    }
}

/// Middleware: rejects requests without valid user credentials, and records
/// the [`AuthMethod`] for handlers that need it.
pub async fn require_user(
    State(auth): State<Arc<Authenticator>>,
    mut req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match auth.authenticate(header.as_deref()).await {
        Ok(method) => {
            req.extensions_mut().insert(method);
            next.run(req).await
        }
        Err(e) => {
            tracing::debug!(path = %req.uri().path(), error = %e, "authentication failed");
            axum::response::IntoResponse::into_response(e)
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        let (private, public) = pollen_protocol::token::generate_keypair().unwrap();
        let hash = pollen_config::hash_password("pw").unwrap();
        Authenticator::new(
            Credentials {
                username: "u".into(),
                password_hash: hash,
            },
            Signer::from_pem(private.as_bytes()).unwrap(),
            Verifier::from_pem(public.as_bytes()).unwrap(),
            60,
        )
    }

    fn basic(user: &str, pw: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    }

    #[tokio::test]
    async fn basic_and_bearer() {
        let a = auth();
        assert_eq!(
            a.authenticate(Some(&basic("u", "pw"))).await.unwrap(),
            AuthMethod::Basic
        );
        // Second time from the cache.
        assert_eq!(
            a.authenticate(Some(&basic("u", "pw"))).await.unwrap(),
            AuthMethod::Basic
        );
        assert!(a.authenticate(Some(&basic("u", "nope"))).await.is_err());
        assert!(a.authenticate(Some(&basic("x", "pw"))).await.is_err());
        assert!(a.authenticate(Some("Basic !!!")).await.is_err());
        assert!(a.authenticate(None).await.is_err());
        let t = a.issue_token().unwrap();
        assert_eq!(
            a.authenticate(Some(&format!("Bearer {}", t.token)))
                .await
                .unwrap(),
            AuthMethod::Bearer
        );
        assert!(a.authenticate(Some("Bearer garbage")).await.is_err());
        assert!(a.authenticate(Some("Digest x")).await.is_err());
    }
}

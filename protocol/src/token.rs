//! Signed tokens: Ed25519 JWTs (`EdDSA`) issued by the server.
//!
//! * [`TaskClaims`]: one per destination (and one for the seed) per task. It
//!   is presented in the AUTH message on the data port and as the bearer token
//!   of progress reports.
//! * [`CommandClaims`]: a short-lived token on every server-to-agent request,
//!   bound to the method, path and a SHA-1 of the body.
//! * [`UserClaims`]: bearer tokens for REST scripts.
//!
//! Agents hold only the public key, so a compromised agent cannot forge any
//! of these.

use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha1::{Digest, Sha1};

use crate::error::TokenError;

pub const AUD_TASK: &str = "pollen-task";
pub const AUD_AGENT: &str = "pollen-agent";
pub const AUD_API: &str = "pollen-api";
/// `sub` of the seed's own task token.
pub const SEED_SUBJECT: &str = "seed";

/// Claims of a task token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskClaims {
    pub aud: String,
    /// Destination IP, or [`SEED_SUBJECT`].
    pub sub: String,
    /// Task id.
    pub tid: String,
    /// Info-hash, hex.
    pub ih: String,
    pub iat: i64,
    pub exp: i64,
}

/// Claims of a server-to-agent command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandClaims {
    pub aud: String,
    /// The agent IP this command is for.
    pub sub: String,
    /// HTTP method.
    pub m: String,
    /// Request path.
    pub p: String,
    /// SHA-1 of the body, hex.
    pub bh: String,
    pub iat: i64,
    pub exp: i64,
}

/// Claims of a user bearer token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserClaims {
    pub aud: String,
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
}

/// Hex SHA-1 of a request body, for [`CommandClaims::bh`].
pub fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha1::digest(body))
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A fresh Ed25519 key pair as `(private PKCS#8 PEM, public SPKI PEM)`.
///
/// # Errors
/// If PEM encoding fails.
pub fn generate_keypair() -> Result<(String, String), TokenError> {
    let mut seed = [0u8; 32];
    rand::Rng::fill(&mut rand::rngs::OsRng, &mut seed);
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| TokenError::Key(e.to_string()))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| TokenError::Key(e.to_string()))?;
    Ok((private.to_string(), public))
}

/// Signs tokens with the server's private key.
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
}

impl Signer {
    /// # Errors
    /// If the PEM is not an Ed25519 PKCS#8 private key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TokenError> {
        Ok(Self {
            key: EncodingKey::from_ed_pem(pem)?,
        })
    }

    /// Signs any claims.
    ///
    /// # Errors
    /// If serialization or signing fails.
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, TokenError> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            claims,
            &self.key,
        )?)
    }
}

/// Verifies tokens with the server's public key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
}

impl Verifier {
    /// # Errors
    /// If the PEM is not an Ed25519 public key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TokenError> {
        Ok(Self {
            key: DecodingKey::from_ed_pem(pem)?,
        })
    }

    /// Checks signature, audience and expiry (30 s leeway), and returns the
    /// claims.
    ///
    /// # Errors
    /// [`TokenError::Invalid`] on any failure.
    pub fn verify<C: DeserializeOwned>(&self, token: &str, aud: &str) -> Result<C, TokenError> {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&[aud]);
        v.leeway = 30;
        v.set_required_spec_claims(&["exp", "aud", "sub"]);
        Ok(jsonwebtoken::decode::<C>(token, &self.key, &v)?.claims)
    }

    /// Verifies a task token and checks that it names `expected_ih`.
    ///
    /// # Errors
    /// As [`Verifier::verify`], or [`TokenError::Mismatch`].
    pub fn verify_task(&self, token: &str, expected_ih: &str) -> Result<TaskClaims, TokenError> {
        let c: TaskClaims = self.verify(token, AUD_TASK)?;
        if c.ih != expected_ih {
            return Err(TokenError::Mismatch {
                what: "info-hash",
                got: c.ih,
                expected: expected_ih.to_owned(),
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_claims(exp: i64) -> TaskClaims {
        TaskClaims {
            aud: AUD_TASK.into(),
            sub: "127.0.0.2".into(),
            tid: "t1".into(),
            ih: "ab".repeat(20),
            iat: now_secs(),
            exp,
        }
    }

    #[test]
    fn sign_and_verify() {
        let (private, public) = generate_keypair().unwrap();
        let s = Signer::from_pem(private.as_bytes()).unwrap();
        let v = Verifier::from_pem(public.as_bytes()).unwrap();
        let c = task_claims(now_secs() + 60);
        let t = s.sign(&c).unwrap();
        assert_eq!(v.verify_task(&t, &"ab".repeat(20)).unwrap(), c);
        assert!(matches!(
            v.verify_task(&t, &"cd".repeat(20)),
            Err(TokenError::Mismatch { .. })
        ));
        assert!(
            v.verify::<TaskClaims>(&t, AUD_AGENT).is_err(),
            "wrong audience"
        );
    }

    #[test]
    fn rejects_other_key_expired_and_garbage() {
        let (private, _) = generate_keypair().unwrap();
        let (_, other_public) = generate_keypair().unwrap();
        let s = Signer::from_pem(private.as_bytes()).unwrap();
        let v = Verifier::from_pem(other_public.as_bytes()).unwrap();
        let t = s.sign(&task_claims(now_secs() + 60)).unwrap();
        assert!(v.verify::<TaskClaims>(&t, AUD_TASK).is_err());
        let (private, public) = generate_keypair().unwrap();
        let s = Signer::from_pem(private.as_bytes()).unwrap();
        let v = Verifier::from_pem(public.as_bytes()).unwrap();
        let expired = s.sign(&task_claims(now_secs() - 3600)).unwrap();
        assert!(v.verify::<TaskClaims>(&expired, AUD_TASK).is_err());
        assert!(v.verify::<TaskClaims>("not.a.jwt", AUD_TASK).is_err());
        assert!(Signer::from_pem(b"nope").is_err());
    }
}

impl TaskClaims {
    /// Claims of a task token for `subject` (a destination IP or
    /// [`SEED_SUBJECT`]), valid for `ttl_secs`.
    pub fn new(subject: &str, task_id: &str, info_hash: &str, ttl_secs: i64) -> Self {
        let iat = now_secs();
        Self {
            aud: AUD_TASK.into(),
            sub: subject.into(),
            tid: task_id.into(),
            ih: info_hash.into(),
            iat,
            exp: iat + ttl_secs,
        }
    }
}

/// Lifetime of a server-to-agent command token.
pub const COMMAND_TTL_SECS: i64 = 60;

impl CommandClaims {
    /// Claims for one request to the agent at `agent_ip`.
    pub fn new(agent_ip: &str, method: &str, path: &str, body: &[u8]) -> Self {
        let iat = now_secs();
        Self {
            aud: AUD_AGENT.into(),
            sub: agent_ip.into(),
            m: method.to_ascii_uppercase(),
            p: path.into(),
            bh: body_hash(body),
            iat,
            exp: iat + COMMAND_TTL_SECS,
        }
    }

    /// Checks that these (already signature-verified) claims authorise this
    /// exact request at the agent whose address is `agent_ip`.
    ///
    /// # Errors
    /// [`TokenError::Mismatch`] naming the first field that differs.
    pub fn check(
        &self,
        agent_ip: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(), TokenError> {
        let pairs = [
            ("agent", self.sub.as_str(), agent_ip.to_owned()),
            ("method", self.m.as_str(), method.to_ascii_uppercase()),
            ("path", self.p.as_str(), path.to_owned()),
            ("body hash", self.bh.as_str(), body_hash(body)),
        ];
        for (what, got, expected) in pairs {
            if got != expected {
                return Err(TokenError::Mismatch {
                    what,
                    got: got.to_owned(),
                    expected,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod command_tests {
    use super::*;

    #[test]
    fn command_is_bound_to_request() {
        let c = CommandClaims::new("127.0.0.2", "post", "/api/v1/agent/tasks", b"{}");
        assert!(c
            .check("127.0.0.2", "POST", "/api/v1/agent/tasks", b"{}")
            .is_ok());
        assert!(c
            .check("127.0.0.3", "POST", "/api/v1/agent/tasks", b"{}")
            .is_err());
        assert!(c
            .check("127.0.0.2", "DELETE", "/api/v1/agent/tasks", b"{}")
            .is_err());
        assert!(c
            .check("127.0.0.2", "POST", "/api/v1/agent/tasks/x", b"{}")
            .is_err());
        assert!(c
            .check("127.0.0.2", "POST", "/api/v1/agent/tasks", b"{ }")
            .is_err());
    }
}

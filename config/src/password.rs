//! Password hashes for `auth.password` (Argon2id, PHC string format).

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;

use crate::error::{ConfigError, Result};

/// Hashes `plain` into a PHC string (`$argon2id$…`) for the config file.
///
/// # Errors
/// [`ConfigError::Hash`] if hashing fails.
pub fn hash_password(plain: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(plain.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ConfigError::Hash(e.to_string()))
}

/// Whether `s` parses as a PHC password hash.
pub fn is_password_hash(s: &str) -> bool {
    PasswordHash::new(s).is_ok()
}

/// Checks `plain` against a PHC `hash`. A malformed hash never matches.
pub fn verify_password(hash: &str, plain: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(plain.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(is_password_hash(&h));
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "S3cret"));
        assert!(!verify_password("gofd", "gofd"));
        assert!(!is_password_hash(
            "yrsK+2iiwPqecImH7obTUm1vhnvvQzFmYYiOz5oqaoc="
        ));
    }
}

//! Password policy and Argon2id hashing (OWASP: m = 19456 KiB, t = 2, p = 1), run off the async
//! executor. Unknown emails are verified against a dummy hash so both answers take as long.

use crate::error::ApiError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::collections::HashSet;
use std::sync::OnceLock;

pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 128;

static COMMON_PASSWORDS: &str = include_str!("../../data/common-passwords.txt");

fn common_passwords() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| COMMON_PASSWORDS.lines().filter(|l| !l.is_empty()).collect())
}

/// Builds the common-password set now, during init, rather than on the first request.
pub fn warm() {
    let _ = common_passwords().len();
    let _ = dummy_hash();
}

pub fn common_password_count() -> usize {
    common_passwords().len()
}

fn weak(detail: &str) -> ApiError {
    ApiError::BadRequest { code: "weak_password", detail: detail.to_owned() }
}

pub fn check_policy(password: &str, email: &str, username: Option<&str>) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if chars < MIN_LEN {
        return Err(weak("the password must be at least 8 characters long"));
    }
    if chars > MAX_LEN {
        return Err(weak("the password must be at most 128 characters long"));
    }
    let lowered = password.to_lowercase();
    if common_passwords().contains(lowered.as_str()) {
        return Err(weak("the password is among the most commonly used passwords"));
    }
    let local_part = email.split('@').next().unwrap_or("");
    if lowered == email.to_lowercase() || lowered == local_part.to_lowercase() {
        return Err(weak("the password must not be the email address"));
    }
    if username.is_some_and(|u| lowered == u.to_lowercase()) {
        return Err(weak("the password must not be the username"));
    }
    Ok(())
}

pub fn argon2() -> Argon2<'static> {
    // The parameters are constants within range; `Params::new` cannot fail for them.
    let params = Params::new(19_456, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub fn hash_blocking(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Ok(argon2().hash_password(password.as_bytes(), &salt)?.to_string())
}

pub struct Verification {
    pub ok: bool,
    /// The stored hash was made with other parameters; store a fresh one.
    pub needs_rehash: bool,
}

pub fn verify_blocking(password: &str, phc: &str) -> Verification {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return Verification { ok: false, needs_rehash: false };
    };
    let ok = argon2().verify_password(password.as_bytes(), &parsed).is_ok();
    let current = argon2();
    let expected = current.params();
    let needs_rehash = ok
        && (parsed.algorithm.as_str() != "argon2id"
            || parsed.version != Some(Version::V0x13.into())
            || Params::try_from(&parsed)
                .map(|p| p.m_cost() != expected.m_cost() || p.t_cost() != expected.t_cost() || p.p_cost() != expected.p_cost())
                .unwrap_or(true));
    Verification { ok, needs_rehash }
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_blocking("dummy password for timing equality").unwrap_or_default())
}

pub async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || hash_blocking(&password))
        .await
        .map_err(|e| ApiError::internal("password hashing task", e))?
        .map_err(|e| ApiError::internal("password hashing", e))
}

/// Verifies against `phc`, or against the dummy hash when there is no account, so the two cases
/// cost the same.
pub async fn verify(password: String, phc: Option<String>) -> Result<Verification, ApiError> {
    tokio::task::spawn_blocking(move || match phc {
        Some(phc) => verify_blocking(&password, &phc),
        None => {
            let _ = verify_blocking(&password, dummy_hash());
            Verification { ok: false, needs_rehash: false }
        }
    })
    .await
    .map_err(|e| ApiError::internal("password verification task", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_list_has_at_least_ten_thousand_entries() {
        assert!(common_password_count() >= 10_000, "{}", common_password_count());
    }

    #[test]
    fn common_short_and_self_referencing_passwords_are_refused() {
        assert_eq!(check_policy("short", "a@b.co", None).unwrap_err().code(), "weak_password");
        assert_eq!(check_policy("password123", "a@b.co", None).unwrap_err().code(), "weak_password");
        assert_eq!(check_policy("Alice@Example.com", "alice@example.com", None).unwrap_err().code(), "weak_password");
        assert_eq!(check_policy("captainzebra", "a@b.co", Some("CaptainZebra")).unwrap_err().code(), "weak_password");
        assert_eq!(check_policy(&"x".repeat(129), "a@b.co", None).unwrap_err().code(), "weak_password");
        assert!(check_policy("correct horse battery staple", "a@b.co", Some("alice")).is_ok());
    }

    #[test]
    fn hashes_are_argon2id_phc_strings_with_owasp_parameters() {
        let phc = hash_blocking("correct horse battery staple").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let v = verify_blocking("correct horse battery staple", &phc);
        assert!(v.ok && !v.needs_rehash);
        assert!(!verify_blocking("wrong", &phc).ok);
    }

    #[test]
    fn a_hash_made_with_weaker_parameters_asks_for_a_rehash() {
        let weak = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(4096, 1, 1, None).unwrap());
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let phc = weak.hash_password(b"correct horse battery staple", &salt).unwrap().to_string();
        let v = verify_blocking("correct horse battery staple", &phc);
        assert!(v.ok && v.needs_rehash);
    }
}

//! Password policy and Argon2id hashing (OWASP: m = 19456 KiB, t = 2, p = 1), run off the async
//! executor. Unknown emails are verified against a dummy hash so both answers take as long.

use crate::error::ApiError;
use argon2::password_hash::{self, Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

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

/// Argon2's working memory (19 MiB at our parameters), kept for the next hash. The argon2 crate
/// allocates and fills it afresh for every hash, a fifth of a verification's CPU; Argon2 writes
/// every block before it reads it, so what an earlier hash left there changes nothing. At most
/// two are kept (a Lambda serves one request at a time; tests and the local server run more).
static WORK_MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());
const KEPT_WORK_MEMORIES: usize = 2;

/// `argon`'s hash of `password` with `salt`, `len` bytes long, in kept working memory.
fn argon2_output(argon: &Argon2<'_>, password: &[u8], salt: Salt<'_>, len: usize) -> password_hash::Result<Output> {
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let salt = salt.decode_b64(&mut salt_bytes)?;
    // Only memory of our parameters' size is kept: a stored hash of other (older, or larger)
    // parameters is verified in memory of its own, then freed. A panic while the lock was held
    // leaves a list of buffers as good as before, so a poisoned lock is used all the same.
    let blocks = argon.params().block_count();
    let ours = blocks == argon2().params().block_count();
    let work_memory = || WORK_MEMORY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let kept = if ours { work_memory().pop() } else { None };
    let mut memory = kept.unwrap_or_else(|| vec![Block::default(); blocks]);
    let output = Output::init_with(len, |out| Ok(argon.hash_password_into_with_memory(password, salt, out, &mut memory)?));
    if ours {
        let mut kept = work_memory();
        if kept.len() < KEPT_WORK_MEMORIES {
            kept.push(memory);
        }
    }
    output
}

pub fn hash_blocking(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let argon = argon2();
    let hash = argon2_output(&argon, password.as_bytes(), salt.as_salt(), Params::DEFAULT_OUTPUT_LEN)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params())?,
        salt: Some(salt.as_salt()),
        hash: Some(hash),
    };
    Ok(phc.to_string())
}

pub struct Verification {
    pub ok: bool,
    /// The stored hash was made with other parameters; store a fresh one.
    pub needs_rehash: bool,
}

/// Whether `password` is the one `stored` was made from, with the algorithm, version and
/// parameters it names (the hashes compared in constant time, as `Output`'s equality is).
fn matches(password: &[u8], stored: &PasswordHash<'_>) -> password_hash::Result<bool> {
    let (Some(salt), Some(expected)) = (stored.salt, stored.hash) else {
        return Ok(false);
    };
    let algorithm = Algorithm::try_from(stored.algorithm)?;
    let version = stored.version.map(Version::try_from).transpose()?.unwrap_or_default();
    let argon = Argon2::new(algorithm, version, Params::try_from(stored)?);
    Ok(argon2_output(&argon, password, salt, expected.len())? == expected)
}

pub fn verify_blocking(password: &str, phc: &str) -> Verification {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return Verification { ok: false, needs_rehash: false };
    };
    let ok = matches(password.as_bytes(), &parsed).unwrap_or(false);
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
    fn hashes_made_here_and_by_the_argon2_crate_verify_each_other_in_every_cycle() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let password = "correct horse battery staple";
        let weak = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(4096, 1, 1, None).unwrap());
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x10, Params::new(8192, 3, 1, Some(24)).unwrap());
        // Kept working memory of one size, then another, then the first again.
        for round in 1..=3 {
            let ours = hash_blocking(password).unwrap();
            assert!(argon2().verify_password(password.as_bytes(), &PasswordHash::new(&ours).unwrap()).is_ok(), "round {round}");
            for theirs in [&argon2(), &weak, &argon2i] {
                let salt = SaltString::generate(&mut rand::rngs::OsRng);
                let phc = theirs.hash_password(password.as_bytes(), &salt).unwrap().to_string();
                assert!(verify_blocking(password, &phc).ok, "round {round}: {phc}");
                assert!(!verify_blocking("correct horse battery stapler", &phc).ok, "round {round}: {phc}");
            }
        }
    }

    #[test]
    fn verifications_on_several_threads_at_once_each_get_their_own_answer() {
        let (right, other) = (hash_blocking("correct horse battery staple").unwrap(), hash_blocking("another long passphrase").unwrap());
        let answers: Vec<bool> = std::thread::scope(|scope| {
            let running: Vec<_> = (0..6)
                .map(|i| {
                    let phc = if i % 2 == 0 { &right } else { &other };
                    scope.spawn(move || verify_blocking("correct horse battery staple", phc).ok)
                })
                .collect();
            running.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(answers, [true, false, true, false, true, false]);
    }

    #[test]
    fn a_hash_without_salt_or_digest_or_with_unknown_parameters_or_algorithm_matches_nothing() {
        let password = "correct horse battery staple";
        let real = hash_blocking(password).unwrap();
        assert!(verify_blocking(password, &real).ok);
        let (salted, digest) = real.rsplit_once('$').unwrap();
        let params = "m=19456,t=2,p=1";
        for phc in [
            salted.to_owned(),
            format!("{}$", salted.rsplit_once('$').unwrap().0),
            real.replace(params, &format!("{params},x=3")),
            real.replace("$argon2id$", "$scrypt$"),
            format!("{salted}${}", &digest[..digest.len() - 2]),
        ] {
            assert!(!verify_blocking(password, &phc).ok, "{phc}");
        }
    }

    #[test]
    fn a_hash_made_with_weaker_parameters_asks_for_a_rehash() {
        use argon2::password_hash::PasswordHasher;
        let weak = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(4096, 1, 1, None).unwrap());
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let phc = weak.hash_password(b"correct horse battery staple", &salt).unwrap().to_string();
        let v = verify_blocking("correct horse battery staple", &phc);
        assert!(v.ok && v.needs_rehash);
    }
}

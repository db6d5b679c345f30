//! TOTP two-factor sign-in: setup (a pending secret), enable (confirmed by a code, with recovery
//! codes), disable, the check of a presented code (a TOTP accepted once, or a recovery code spent),
//! and the single-use `mfa_token` a right password earns while two-factor is on.

use crate::auth::limits::hash_code;
use crate::auth::store::{FactorWrite, TotpRecord, UserStore};
use crate::auth::totp;
use crate::crypto::EncryptionKeys;
use crate::error::ApiError;
use crate::secrets::Secret;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

pub const RECOVERY_CODE_COUNT: usize = 10;
/// How long a right password waits for its second factor.
pub const MFA_TOKEN_TTL_SECS: u64 = 5 * 60;
/// What authenticator apps show above the code.
pub const TOTP_ISSUER: &str = "Trading Bot";

const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";

pub fn invalid_code() -> ApiError {
    ApiError::BadRequest { code: "invalid_code", detail: "the code is wrong, expired or already used".into() }
}

/// The secret is bound to its user and purpose: a ciphertext copied elsewhere does not decrypt.
fn associated_data(user_id: &str) -> Vec<u8> {
    format!("totp:{user_id}").into_bytes()
}

fn decrypt(keys: &EncryptionKeys, envelope: &str, user_id: &str) -> Result<Secret<Vec<u8>>, ApiError> {
    keys.decrypt(envelope, &associated_data(user_id)).map(Secret::new).map_err(|e| ApiError::internal("decrypting a TOTP secret", e))
}

pub struct TotpSetup {
    pub secret_base32: Secret<String>,
    pub otpauth_uri: Secret<String>,
}

/// A new secret, stored encrypted and pending until a code confirms it. Each setup replaces the
/// pending one; with two-factor on, 409 `mfa_already_enabled`.
pub async fn setup(users: &UserStore<'_>, keys: &EncryptionKeys, user_id: &str, account: &str) -> Result<TotpSetup, ApiError> {
    let secret = totp::new_secret();
    let envelope = keys.encrypt(secret.expose(), &associated_data(user_id));
    match users.set_pending_totp(user_id, &envelope).await? {
        FactorWrite::Written => {}
        FactorWrite::WrongState => return Err(already_enabled()),
    }
    let base32 = totp::base32(secret.expose());
    let uri = totp::otpauth_uri(TOTP_ISSUER, account, &base32);
    Ok(TotpSetup { secret_base32: Secret::new(base32), otpauth_uri: Secret::new(uri) })
}

fn already_enabled() -> ApiError {
    ApiError::conflict("mfa_already_enabled", "two-factor authentication is already on; disable it first to set it up again")
}

/// Turns two-factor on when `code` is the pending secret's code of now: the recovery codes, in
/// clear this once (only their hashes are stored).
pub async fn enable(
    users: &UserStore<'_>,
    keys: &EncryptionKeys,
    pepper: &[u8],
    email_form: &str,
    user_id: &str,
    code: &str,
) -> Result<Vec<Secret<String>>, ApiError> {
    let record = users.totp(user_id).await?.unwrap_or_default();
    if record.enabled {
        return Err(already_enabled());
    }
    let Some(pending) = record.pending_secret else {
        return Err(ApiError::conflict("mfa_not_set_up", "set two-factor authentication up first"));
    };
    let secret = decrypt(keys, &pending, user_id)?;
    let step = totp::matching_step(secret.expose(), code, chrono::Utc::now().timestamp()).ok_or_else(invalid_code)?;
    let codes: Vec<Secret<String>> = (0..RECOVERY_CODE_COUNT).map(|_| new_recovery_code()).collect();
    let hashes: Vec<String> = codes.iter().map(|c| recovery_hash(pepper, user_id, c.expose())).collect();
    match users.enable_totp(email_form, user_id, &pending, step, &hashes).await? {
        FactorWrite::Written => Ok(codes),
        // Another setup replaced the secret (or another enable won) meanwhile: this code was for
        // a secret that is not the pending one any more.
        FactorWrite::WrongState => Err(invalid_code()),
    }
}

/// Turns two-factor off (the caller has checked the password and a code).
pub async fn disable(users: &UserStore<'_>, email_form: &str, user_id: &str) -> Result<(), ApiError> {
    match users.disable_totp(email_form, user_id).await? {
        FactorWrite::Written => Ok(()),
        FactorWrite::WrongState => Err(not_enabled()),
    }
}

pub fn not_enabled() -> ApiError {
    ApiError::conflict("mfa_not_enabled", "two-factor authentication is not on")
}

/// Whether `code` is a second factor of the user's, spending it: a TOTP code is accepted once
/// (no code of its step or an earlier one again), a recovery code is used up. `false` for a wrong,
/// replayed or spent code, or when two-factor is off.
pub async fn accept_second_factor(
    users: &UserStore<'_>,
    keys: &EncryptionKeys,
    pepper: &[u8],
    user_id: &str,
    code: &str,
) -> Result<bool, ApiError> {
    let Some(record) = users.totp(user_id).await?.filter(|r| r.enabled) else {
        return Ok(false);
    };
    let code = code.trim();
    if code.len() == totp::DIGITS as usize && code.bytes().all(|b| b.is_ascii_digit()) {
        return accept_totp(users, keys, &record, user_id, code).await;
    }
    let Some(normalised) = normalise_recovery_code(code) else {
        return Ok(false);
    };
    Ok(users.use_recovery_code(user_id, &recovery_hash(pepper, user_id, &normalised)).await?)
}

async fn accept_totp(
    users: &UserStore<'_>,
    keys: &EncryptionKeys,
    record: &TotpRecord,
    user_id: &str,
    code: &str,
) -> Result<bool, ApiError> {
    let envelope = record.secret.as_deref().ok_or_else(|| ApiError::bug("an enabled TOTP record has no secret"))?;
    let secret = decrypt(keys, envelope, user_id)?;
    match totp::matching_step(secret.expose(), code, chrono::Utc::now().timestamp()) {
        // The stored step decides, in the write: a replay (or a race of two) gets `false`.
        Some(step) if step > record.last_step => Ok(users.use_totp_step(user_id, step).await?),
        _ => Ok(false),
    }
}

/// `xxxxx-xxxxx`, 50 random bits from an alphabet without look-alikes (no 0/o, 1/l).
fn new_recovery_code() -> Secret<String> {
    use rand::Rng;
    let mut rng = rand::rngs::OsRng;
    let mut code: String = (0..10).map(|_| RECOVERY_ALPHABET[rng.gen_range(0..RECOVERY_ALPHABET.len())] as char).collect();
    code.insert(5, '-');
    Secret::new(code)
}

/// A recovery code as typed (any case, with or without the dash or spaces), or `None` if it
/// cannot be one.
fn normalise_recovery_code(code: &str) -> Option<String> {
    let plain: String = code.chars().filter(|c| *c != '-' && !c.is_whitespace()).flat_map(char::to_lowercase).collect();
    (plain.len() == 10 && plain.bytes().all(|b| RECOVERY_ALPHABET.contains(&b))).then_some(plain)
}

fn recovery_hash(pepper: &[u8], user_id: &str, code: &str) -> String {
    let plain = normalise_recovery_code(code).unwrap_or_default();
    hash_code(pepper, user_id, &format!("recovery:{plain}"))
}

// ---------------------------------------------------------------- the pending sign-in

/// Who a right password belonged to, while the second factor is awaited.
#[derive(Serialize, Deserialize)]
pub struct PendingSignIn {
    pub user_id: String,
    /// The address as login keyed its lockout: the second factor's failures count there too.
    pub email: String,
    /// When the password was checked: a reset, change or global logout after it ends the
    /// sign-in too.
    pub password_checked_ms: i64,
    /// The login record's roles, for the session the second factor begins.
    #[serde(default)]
    pub roles: Vec<String>,
}

fn mfa_token_key(token: &str) -> String {
    use sha2::Digest;
    // Only a digest of the token is a key: whoever reads Redis cannot finish a sign-in.
    format!("mfa:{}", hex::encode(&sha2::Sha256::digest(token.as_bytes())[..16]))
}

/// 256 random bits, URL-safe: what `POST /auth/mfa/verify` takes back.
pub async fn issue_mfa_token(redis: &ConnectionManager, pending: &PendingSignIn) -> Result<Secret<String>, ApiError> {
    let token = crate::crypto::random_token();
    let value = serde_json::to_string(pending).map_err(|e| ApiError::internal("encoding a pending sign-in", e))?;
    let mut conn = redis.clone();
    redis::cmd("SET").arg(mfa_token_key(&token)).arg(value).arg("EX").arg(MFA_TOKEN_TTL_SECS).query_async::<()>(&mut conn).await?;
    Ok(Secret::new(token))
}

/// The sign-in `token` stands for, if it is live (not spent, not older than 5 minutes).
pub async fn pending_sign_in(redis: &ConnectionManager, token: &str) -> Result<Option<PendingSignIn>, ApiError> {
    if !crate::crypto::is_random_token(token) {
        return Ok(None);
    }
    let mut conn = redis.clone();
    let value: Option<String> = redis::cmd("GET").arg(mfa_token_key(token)).query_async(&mut conn).await?;
    Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
}

/// Spends `token`: `true` for exactly one caller however many race.
pub async fn spend_mfa_token(redis: &ConnectionManager, token: &str) -> Result<bool, ApiError> {
    let mut conn = redis.clone();
    let value: Option<String> = redis::cmd("GETDEL").arg(mfa_token_key(token)).query_async(&mut conn).await?;
    Ok(value.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_ten_characters_of_the_alphabet_and_read_back_as_typed() {
        let code = new_recovery_code();
        let code = code.expose();
        assert_eq!(code.len(), 11);
        assert_eq!(&code[5..6], "-");
        let plain = normalise_recovery_code(code).unwrap();
        assert_eq!(normalise_recovery_code(&plain.to_uppercase()), Some(plain.clone()));
        assert_eq!(normalise_recovery_code(&format!(" {} {} ", &plain[..5], &plain[5..])), Some(plain));
        assert_eq!(normalise_recovery_code("123456"), None);
        assert_eq!(normalise_recovery_code("0000000000"), None, "0 is not in the alphabet");
    }

    #[test]
    fn a_recovery_code_hash_is_bound_to_its_user() {
        let a = recovery_hash(b"pepper", "user-a", "abcde-fghij");
        assert_eq!(a, recovery_hash(b"pepper", "user-a", "ABCDEFGHIJ"));
        assert_ne!(a, recovery_hash(b"pepper", "user-b", "abcde-fghij"));
    }
}

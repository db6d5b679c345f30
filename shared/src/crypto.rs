//! AES-256-GCM envelope for exchange credentials. The key comes from Secrets Manager; the user id
//! is the associated data, so a ciphertext copied to another user's item does not decrypt.

use crate::secrets::{json_shape_error, Secret};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;

pub struct EncryptionKeys {
    current_id: String,
    keys: Vec<(String, Secret<[u8; 32]>)>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    key: Secret<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysSecret {
    /// The first key encrypts; all of them decrypt, so the key can rotate.
    keys: Vec<KeyEntry>,
}

pub fn parse_encryption_keys(text: &str, production: bool) -> Result<EncryptionKeys, String> {
    let secret: KeysSecret =
        serde_json::from_str(text).map_err(|e| format!("expected {{\"keys\":[{{\"id\",\"key\"}}]}}: {}", json_shape_error(&e)))?;
    let mut keys = Vec::new();
    for entry in secret.keys {
        let bytes = STANDARD.decode(entry.key.expose()).map_err(|_| format!("key {} is not base64", entry.id))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| format!("key {} is not 32 bytes", entry.id))?;
        // A hand-typed or placeholder key has few distinct bytes; 32 random bytes almost never do.
        let distinct = key.iter().collect::<std::collections::HashSet<_>>().len();
        if production && distinct < 16 {
            return Err(format!("key {} does not look random; production refuses it", entry.id));
        }
        keys.push((entry.id, Secret::new(key)));
    }
    let current_id = keys.first().map(|(id, _)| id.clone()).ok_or("no encryption key")?;
    Ok(EncryptionKeys { current_id, keys })
}

#[derive(Debug, thiserror::Error)]
#[error("ciphertext could not be decrypted")]
pub struct DecryptError;

impl EncryptionKeys {
    /// `key id . base64(nonce || ciphertext)`
    pub fn encrypt(&self, plaintext: &[u8], associated_data: &[u8]) -> String {
        let key = &self.keys[0].1;
        let cipher = Aes256Gcm::new(key.expose().into());
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // Encryption with a valid key and nonce size cannot fail.
        let sealed = cipher.encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad: associated_data }).unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend(sealed);
        format!("{}.{}", self.current_id, STANDARD.encode(blob))
    }

    pub fn decrypt(&self, envelope: &str, associated_data: &[u8]) -> Result<Vec<u8>, DecryptError> {
        let (id, b64) = envelope.split_once('.').ok_or(DecryptError)?;
        let (_, key) = self.keys.iter().find(|(k, _)| k == id).ok_or(DecryptError)?;
        let blob = STANDARD.decode(b64).map_err(|_| DecryptError)?;
        if blob.len() < 12 + 16 {
            return Err(DecryptError);
        }
        let (nonce, sealed) = blob.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| DecryptError)?;
        Aes256Gcm::new(key.expose().into())
            .decrypt(&Nonce::from(nonce), Payload { msg: sealed, aad: associated_data })
            .map_err(|_| DecryptError)
    }
}

pub fn generate_key_secret(id: &str) -> serde_json::Value {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    serde_json::json!({"keys": [{"id": id, "key": STANDARD.encode(key)}]})
}

/// Whether two byte strings are equal, in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// 256 random bits, URL-safe base64 without padding (43 characters): every bearer secret this
/// service mints (refresh tokens' random part, mailed link tokens, `mfa_token`s, signal tokens).
pub fn random_token() -> String {
    let mut random = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut random);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
}

/// Whether `token` has the shape `random_token` makes: anything else is refused before it
/// reaches a key or a hash.
pub fn is_random_token(token: &str) -> bool {
    token.len() == 43 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> EncryptionKeys {
        parse_encryption_keys(&generate_key_secret("k1").to_string(), true).unwrap()
    }

    #[test]
    fn ciphertext_round_trips_only_with_the_same_associated_data() {
        let k = keys();
        let sealed = k.encrypt(b"api-secret", b"user-a");
        assert!(!sealed.contains("api-secret"));
        assert_eq!(k.decrypt(&sealed, b"user-a").unwrap(), b"api-secret");
        assert!(k.decrypt(&sealed, b"user-b").is_err(), "moved to another user, it must not decrypt");
    }

    #[test]
    fn production_refuses_a_placeholder_key() {
        let zeros = serde_json::json!({"keys": [{"id": "k", "key": STANDARD.encode([0u8; 32])}]}).to_string();
        assert!(parse_encryption_keys(&zeros, true).is_err());
        assert!(parse_encryption_keys(&zeros, false).is_ok());
    }
}

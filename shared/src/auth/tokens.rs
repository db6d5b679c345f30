//! Access tokens: EdDSA-signed JWTs (RFC 9068 `at+jwt`), keys from Secrets Manager. The newest key
//! signs; every key in the secret verifies and is published in the JWKS, so keys rotate without
//! logging anyone out.

use crate::secrets::{json_shape_error, Secret};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const TOKEN_TYPE: &str = "at+jwt";
/// Clock skew tolerated on `exp`/`iat`.
pub const LEEWAY_SECS: u64 = 10;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    /// The session (refresh-token family) the token was issued for: revoking that session kills
    /// the token at once. Absent on tokens issued before sessions were carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// How the session was signed in (RFC 8176): `["pwd"]`, or `["pwd","otp"]` after a second
    /// factor. Absent on tokens issued before it was carried: password only.
    #[serde(default)]
    pub amr: Vec<String>,
    /// What the user may do beyond their own data: `["admin"]` for an operator. Absent for
    /// everyone else. Admin routes check the user item as well, so a role taken away ends at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// The roles a session was signed in with, read from the user item at sign-in and carried by
/// the session's refresh tokens (a refresh reads nothing but its own token).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    pub admin: bool,
}

pub const ADMIN_ROLE: &str = "admin";

impl Roles {
    pub const NONE: Roles = Roles { admin: false };

    pub fn from_names(names: &[String]) -> Self {
        Roles { admin: names.iter().any(|r| r == ADMIN_ROLE) }
    }

    pub fn names(self) -> Vec<String> {
        if self.admin {
            vec![ADMIN_ROLE.to_owned()]
        } else {
            Vec::new()
        }
    }
}

/// How a session was signed in: what its access tokens say in `amr`, and what its refresh tokens
/// carry to every successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignIn {
    Password,
    PasswordAndOtp,
}

impl SignIn {
    pub fn amr(self) -> Vec<String> {
        match self {
            SignIn::Password => vec!["pwd".into()],
            SignIn::PasswordAndOtp => vec!["pwd".into(), "otp".into()],
        }
    }

    pub fn from_amr(amr: &[String]) -> Self {
        if amr.iter().any(|m| m == "otp") {
            SignIn::PasswordAndOtp
        } else {
            SignIn::Password
        }
    }
}

/// How long the JWKS may be cached by verifiers (`Cache-Control: max-age` of `GET /jwks`).
pub const JWKS_MAX_AGE_SECS: u64 = 300;

/// How old a key must be before it signs: every function's cached key set (`SECRETS_TTL_SECS`)
/// and every verifier's cached JWKS (`JWKS_MAX_AGE_SECS`) know it by then.
pub fn activation_delay(secrets_ttl: std::time::Duration) -> std::time::Duration {
    secrets_ttl + std::time::Duration::from_secs(JWKS_MAX_AGE_SECS)
}

pub struct JwtKeys {
    pub code_pepper: Secret<Vec<u8>>,
    /// Every key that may sign, oldest first.
    signers: Vec<(chrono::DateTime<chrono::Utc>, String, EncodingKey)>,
    decoding: HashMap<String, DecodingKey>,
    jwks: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    kid: String,
    private_key_pem: Secret<String>,
    created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySetSecret {
    keys: Vec<KeyEntry>,
    /// HMAC key for verification codes: a 6-digit code hashed without a secret is brute-forced
    /// in a millisecond by whoever reads Redis.
    code_pepper: Option<Secret<String>>,
}

/// Parses `{"keys":[{"kid","private_key_pem","created_at"}]}`: Ed25519 PKCS#8 keys.
pub fn parse_jwt_keys(text: &str, production: bool) -> Result<JwtKeys, String> {
    let set: KeySetSecret = serde_json::from_str(text).map_err(|e| format!("expected {{\"keys\":[…]}}: {}", json_shape_error(&e)))?;
    let code_pepper = match &set.code_pepper {
        Some(p) if p.expose().len() >= 32 => p.expose().as_bytes().to_vec(),
        _ if production => return Err("production requires a code_pepper of at least 32 characters".into()),
        _ => b"local-development-pepper".to_vec(),
    };
    if set.keys.is_empty() {
        return Err("the key set is empty".into());
    }
    let mut decoding = HashMap::new();
    let mut jwks = Vec::new();
    let mut signers = Vec::new();
    for entry in &set.keys {
        if entry.kid.is_empty() || decoding.contains_key(&entry.kid) {
            return Err("every key needs a distinct, non-empty kid".into());
        }
        let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(entry.private_key_pem.expose())
            .map_err(|_| format!("key {} is not an Ed25519 PKCS#8 PEM private key", entry.kid))?;
        let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
        decoding.insert(entry.kid.clone(), DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?);
        jwks.push(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": entry.kid, "x": x}));
        let encoding = EncodingKey::from_ed_der(signing.to_pkcs8_der().map_err(|e| e.to_string())?.as_bytes());
        signers.push((entry.created_at, entry.kid.clone(), encoding));
    }
    signers.sort_by_key(|(created_at, _, _)| *created_at);
    Ok(JwtKeys { code_pepper: Secret::new(code_pepper), signers, decoding, jwks: serde_json::json!({ "keys": jwks }) })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid access token")]
pub struct InvalidToken;

impl JwtKeys {
    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// The key that signs now: the newest one older than `activation` (so every other function
    /// and verifier knows it), else the oldest (a fresh key set, which nobody else can know less).
    fn signer(&self, activation: std::time::Duration) -> &(chrono::DateTime<chrono::Utc>, String, EncodingKey) {
        let ready_by = chrono::Utc::now() - chrono::Duration::from_std(activation).unwrap_or(chrono::Duration::MAX);
        let ready = self.signers.iter().rev().find(|(created_at, _, _)| *created_at <= ready_by);
        // `signers` is never empty: parsing refuses an empty key set.
        ready.unwrap_or(&self.signers[0])
    }

    pub fn signing_kid(&self, activation: std::time::Duration) -> &str {
        &self.signer(activation).1
    }

    pub fn sign(&self, claims: &AccessClaims, activation: std::time::Duration) -> Result<String, jsonwebtoken::errors::Error> {
        let (_, kid, encoding) = self.signer(activation);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        header.typ = Some(TOKEN_TYPE.to_owned());
        jsonwebtoken::encode(&header, claims, encoding)
    }

    /// Whether the token names a key this set does not hold (a newer key than the cached set).
    pub fn is_unknown_key(&self, token: &str) -> bool {
        jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid).is_some_and(|kid| !self.decoding.contains_key(&kid))
    }

    /// Verifies with the algorithm pinned to EdDSA, the key chosen by `kid` among ours only, and
    /// `typ`, `iss`, `aud` and `exp` required.
    pub fn verify(&self, token: &str, issuer: &str, audience: &str) -> Result<AccessClaims, InvalidToken> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| InvalidToken)?;
        if header.alg != Algorithm::EdDSA {
            return Err(InvalidToken);
        }
        let typ_ok =
            header.typ.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(TOKEN_TYPE) || t.eq_ignore_ascii_case("application/at+jwt"));
        if !typ_ok {
            return Err(InvalidToken);
        }
        let key = header.kid.as_deref().and_then(|kid| self.decoding.get(kid)).ok_or(InvalidToken)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, key, &validation).map_err(|_| InvalidToken)?;
        if data.claims.iat > chrono::Utc::now().timestamp() + LEEWAY_SECS as i64 {
            return Err(InvalidToken);
        }
        Ok(data.claims)
    }
}

/// A fresh Ed25519 key entry for the JWT secret (local stack, tests and the rotation script).
pub fn generate_key_entry(kid: &str, created_at: chrono::DateTime<chrono::Utc>) -> serde_json::Value {
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let pem = key.to_pkcs8_pem(LineEnding::LF).map(|p| p.to_string()).unwrap_or_default();
    serde_json::json!({"kid": kid, "private_key_pem": pem, "created_at": created_at.to_rfc3339()})
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, Utc};

    const ISS: &str = "https://issuer.test";
    const AUD: &str = "api";

    fn keyset(entries: &[serde_json::Value]) -> JwtKeys {
        parse_jwt_keys(&serde_json::json!({ "keys": entries }).to_string(), false).unwrap()
    }

    fn claims(exp_in: i64) -> AccessClaims {
        let now = Utc::now().timestamp();
        AccessClaims {
            iss: ISS.into(),
            aud: AUD.into(),
            sub: "user-1".into(),
            exp: now + exp_in,
            iat: now,
            jti: "j".into(),
            sid: None,
            amr: vec!["pwd".into()],
            roles: Vec::new(),
        }
    }

    #[test]
    fn a_signed_token_verifies_and_carries_kid_and_typ() {
        let keys = keyset(&[generate_key_entry("k1", Utc::now())]);
        let token = keys.sign(&claims(900), NOW).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k1"));
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(keys.verify(&token, ISS, AUD).unwrap().sub, "user-1");
    }

    /// No activation delay.
    const NOW: std::time::Duration = std::time::Duration::ZERO;

    #[test]
    fn a_new_key_signs_only_once_every_cache_can_know_it() {
        let delay = activation_delay(std::time::Duration::from_secs(300));
        let old = generate_key_entry("old", Utc::now() - Duration::days(30));
        let fresh = generate_key_entry("fresh", Utc::now());
        assert_eq!(keyset(&[old.clone(), fresh]).signing_kid(delay), "old", "a key added a moment ago does not sign yet");
        let ready = generate_key_entry("ready", Utc::now() - Duration::seconds(601));
        assert_eq!(keyset(&[old.clone(), ready]).signing_kid(delay), "ready");
        // A first key set signs with its oldest key at once.
        let (a, b) = (generate_key_entry("a", Utc::now() - Duration::seconds(5)), generate_key_entry("b", Utc::now()));
        assert_eq!(keyset(&[b, a]).signing_kid(delay), "a");
    }

    #[test]
    fn the_newest_key_signs_and_older_keys_still_verify() {
        let old = generate_key_entry("old", Utc::now() - Duration::days(30));
        let new = generate_key_entry("new", Utc::now());
        let before_rotation = keyset(std::slice::from_ref(&old));
        let after_rotation = keyset(&[old, new]);
        assert_eq!(after_rotation.signing_kid(NOW), "new");
        let issued_before = before_rotation.sign(&claims(900), NOW).unwrap();
        assert!(after_rotation.verify(&issued_before, ISS, AUD).is_ok());
        assert_eq!(after_rotation.jwks()["keys"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn wrong_issuer_audience_expiry_or_unknown_kid_are_refused() {
        let keys = keyset(&[generate_key_entry("k1", Utc::now())]);
        let token = keys.sign(&claims(900), NOW).unwrap();
        assert_eq!(keys.verify(&token, "https://other", AUD), Err(InvalidToken));
        assert_eq!(keys.verify(&token, ISS, "other"), Err(InvalidToken));
        assert_eq!(keys.verify(&keys.sign(&claims(-120), NOW).unwrap(), ISS, AUD), Err(InvalidToken));
        let stranger = keyset(&[generate_key_entry("k1", Utc::now())]);
        assert_eq!(stranger.verify(&token, ISS, AUD), Err(InvalidToken), "same kid, different key");
    }

    #[test]
    fn alg_none_and_hs256_with_the_public_key_are_refused() {
        let keys = keyset(&[generate_key_entry("k1", Utc::now())]);
        let b64 = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let body = b64(serde_json::to_value(claims(900)).unwrap());
        let none = format!("{}.{}.", b64(serde_json::json!({"alg":"none","typ":"at+jwt","kid":"k1"})), body);
        assert_eq!(keys.verify(&none, ISS, AUD), Err(InvalidToken));

        let x = keys.jwks()["keys"][0]["x"].as_str().unwrap();
        let public = URL_SAFE_NO_PAD.decode(x).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        header.typ = Some("at+jwt".into());
        let forged = jsonwebtoken::encode(&header, &claims(900), &EncodingKey::from_secret(&public)).unwrap();
        assert_eq!(keys.verify(&forged, ISS, AUD), Err(InvalidToken));
    }

    #[test]
    fn a_tampered_payload_is_refused() {
        let keys = keyset(&[generate_key_entry("k1", Utc::now())]);
        let token = keys.sign(&claims(900), NOW).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut c = claims(900);
        c.sub = "someone-else".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_string(&c).unwrap());
        assert_eq!(keys.verify(&parts.join("."), ISS, AUD), Err(InvalidToken));
    }

    #[test]
    fn a_token_without_the_at_jwt_type_is_refused() {
        let keys = keyset(&[generate_key_entry("k1", Utc::now())]);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        header.typ = Some("JWT".into());
        let token = jsonwebtoken::encode(&header, &claims(900), &keys.signers[0].2).unwrap();
        assert_eq!(keys.verify(&token, ISS, AUD), Err(InvalidToken));
    }
}

//! Access-token checks shared by every protected route.

use crate::auth::tokens::{AccessClaims, Roles, SignIn};
use crate::error::ApiError;
use crate::http::bearer_token;
use crate::state::{Keys, Table};
use lambda_http::Request;

#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    /// When the token was issued, to the millisecond (from its UUIDv7 `jti`).
    pub issued_at_ms: i64,
    /// The session the token was issued for.
    pub session_id: Option<String>,
    /// How the token's session was signed in.
    pub sign_in: SignIn,
    /// The token's `roles`.
    pub roles: Roles,
}

impl Caller {
    /// The user acting now through something other than an access token: a signal URL's
    /// token, or the bot's own strategy.
    pub fn acting_now(user_id: String) -> Caller {
        Caller {
            user_id,
            issued_at_ms: chrono::Utc::now().timestamp_millis(),
            session_id: None,
            sign_in: SignIn::Password,
            roles: Roles::NONE,
        }
    }

    /// Whether the user's profile says this token is dead: a global logout after it was issued,
    /// or its session revoked (reuse detected, logged out, ended from another device).
    /// With two-factor on, what guards the exchange keys needs a session signed in with it.
    pub fn require_second_factor(&self, profile: &crate::auth::store::Profile) -> Result<(), ApiError> {
        if profile.mfa_enabled && self.sign_in != SignIn::PasswordAndOtp {
            return Err(ApiError::Forbidden {
                code: "mfa_required",
                detail: "two-factor authentication is on: sign in with your second factor to do this",
            });
        }
        Ok(())
    }

    pub fn revoked_by(&self, profile: &crate::auth::store::Profile) -> bool {
        profile.revoked_before_ms.is_some_and(|cutoff| self.issued_at_ms < cutoff)
            || self.session_id.as_ref().is_some_and(|sid| profile.revoked_sessions.contains_key(sid))
    }
}

/// How often a token with an unknown `kid` may make an environment fetch the key set again.
pub const KEY_REFETCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Verifies the bearer token's signature and claims. Revocation is checked by the caller, which
/// reads the user's data anyway (no extra round trip).
pub async fn authenticate(state: &impl Keys, req: &Request) -> Result<Caller, ApiError> {
    verify_token(state, bearer_token(req).ok_or_else(ApiError::invalid_token)?).await
}

/// The caller's profile, when their token is not revoked by it (a global logout, the session
/// ended, the account gone); else 401 `invalid_token`.
pub async fn live_profile(state: &impl Table, caller: &Caller) -> Result<crate::auth::store::Profile, ApiError> {
    let users = crate::auth::store::UserStore { client: state.dynamo(), table: &state.config().table_name };
    let profile = users.profile(&caller.user_id).await?.ok_or_else(ApiError::invalid_token)?;
    if caller.revoked_by(&profile) {
        return Err(ApiError::invalid_token());
    }
    Ok(profile)
}

/// Verifies an access token given some other way than a header (the WebSocket's `?token=`).
pub async fn verify_token(state: &impl Keys, token: &str) -> Result<Caller, ApiError> {
    if token.is_empty() || token.len() > 4096 {
        return Err(ApiError::invalid_token());
    }
    let mut keys = state.jwt_keys().get().await.map_err(|e| ApiError::internal("loading JWT keys", e))?;
    if keys.is_unknown_key(token) {
        // Signed with a key newer than this environment's cached set: fetch the set again, at
        // most once every `KEY_REFETCH_INTERVAL` however many such tokens arrive.
        keys = state.jwt_keys().refetch_at_most_every(KEY_REFETCH_INTERVAL).await.map_err(|e| ApiError::internal("loading JWT keys", e))?;
    }
    let claims: AccessClaims =
        keys.verify(token, &state.config().jwt_issuer, &state.config().jwt_audience).map_err(|_| ApiError::invalid_token())?;
    let issued_at_ms = uuid::Uuid::parse_str(&claims.jti)
        .ok()
        .and_then(|id| id.get_timestamp())
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        })
        .unwrap_or(claims.iat * 1000);
    Ok(Caller {
        user_id: claims.sub,
        issued_at_ms,
        session_id: claims.sid,
        sign_in: SignIn::from_amr(&claims.amr),
        roles: Roles::from_names(&claims.roles),
    })
}

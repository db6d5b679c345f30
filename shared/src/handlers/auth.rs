//! The auth routes. Each is served by its own function crate.

use crate::auth::email::EmailAddress;
use crate::auth::limits::{hash_code, new_code, Abandon, Limits, MailBudget, MailFit, NewCode, Proof, Purpose, RegistrationStart};
use crate::auth::mfa::{self, PendingSignIn};
use crate::auth::password;
use crate::auth::session::{authenticate, Caller};
use crate::auth::store::{Credentials, Device, Profile, RefreshStore, RefreshToken, RotateOutcome, UserStore, UNVERIFIED_LIFETIME_SECS};
use crate::auth::tokens::JwtKeys;
use crate::auth::tokens::{AccessClaims, Roles, SignIn};
use crate::crypto::EncryptionKeys;
use crate::error::ApiError;
use crate::http::{empty_response, json_response, parse_json, secret_json_response, RequestContext};
use crate::mail::Email;
use crate::state::{Cache, Deps, Keys, Mail, Table, Vault};
use http::{header, HeaderValue, StatusCode};
use lambda_http::{Body, Request, Response};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

type HandlerResult = Result<Response<Body>, ApiError>;

fn users(state: &impl Table) -> UserStore<'_> {
    UserStore { client: state.dynamo(), table: &state.config().table_name }
}
fn refresh_store(state: &impl Table) -> RefreshStore<'_> {
    RefreshStore { client: state.dynamo(), table: &state.config().table_name }
}
fn limits(state: &impl Deps) -> Limits {
    Limits { ip_per_minute: state.config().ip_rate_limit_per_minute }
}
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Answers no sooner than the configured floor after the request began, whatever path it took
/// (an account or not, a mail sent or not, an error or not), so the time tells nothing about the
/// address. A path slower than the floor is logged: the floor is then too low.
async fn in_equal_time(state: &impl Deps, route: &'static str, answer: impl std::future::Future<Output = HandlerResult>) -> HandlerResult {
    let floor = state.config().auth_answer_floor;
    let started = tokio::time::Instant::now();
    let result = answer.await;
    let took = started.elapsed();
    if took > floor && !floor.is_zero() {
        tracing::warn!(
            route,
            took_ms = took.as_millis() as u64,
            floor_ms = floor.as_millis() as u64,
            "an answer took longer than AUTH_ANSWER_FLOOR_MS"
        );
    }
    tokio::time::sleep_until(started + floor).await;
    result
}

fn verification_required() -> HandlerResult {
    json_response(StatusCode::ACCEPTED, &serde_json::json!({"status": "verification_required"}))
}

/// Mail failures are logged, never shown: the answer must not depend on whether the address exists.
async fn send_mail(state: &impl Mail, email: Email) {
    if let Err(e) = state.mailer().send(&email).await {
        tracing::error!(error = %e, "sending mail failed");
    }
}

async fn send_notice(state: &impl Mail, email: &EmailAddress, subject: &str, body: &str) {
    send_mail(state, Email { to: email.to_string(), subject: subject.into(), body: body.into(), code: None, token: None }).await;
}

/// A security notice to the owner of `email` about what their own session just did: counted
/// against the address's mail limits, and sent whatever they say. It follows a committed change,
/// so a failure to count it is logged, never the request's answer.
async fn notify(state: &(impl Cache + Mail), email: &EmailAddress, subject: &str, body: &str) {
    if let Err(e) = limits(state).count_mail_regardless(state.redis(), email.as_str()).await {
        tracing::warn!(code = e.code(), "a security notice went uncounted");
    }
    send_notice(state, email, subject, body).await;
}

/// Gives a right password's lockout ticket back after the change it allowed committed: a
/// failure to is logged (the ticket then expires with its hour), never the request's answer.
async fn give_ticket_back(state: &impl Cache, ctx: &RequestContext, email: &EmailAddress) {
    if let Err(e) = limits(state).password_accepted(state.redis(), &ctx.source_ip, email.as_str()).await {
        tracing::warn!(code = e.code(), "a right password's lockout ticket was not given back");
    }
}

/// The link token's hash, kept apart from the codes' by its prefix.
fn token_hash(pepper: &[u8], email: &EmailAddress, token: &str) -> String {
    hash_code(pepper, email.as_str(), &format!("link-token:{token}"))
}

/// A fresh code and link token for an address, and their hashes: what Redis holds instead.
struct IssuedCode {
    code: String,
    token: String,
    code_hash: String,
    token_hash: String,
}

impl IssuedCode {
    async fn new(state: &impl Keys, email: &EmailAddress) -> Result<Self, ApiError> {
        let keys = state.jwt_keys().get().await.map_err(|e| ApiError::internal("loading auth secret", e))?;
        let (code, token) = (new_code(), crate::crypto::random_token());
        let pepper = keys.code_pepper.expose();
        Ok(IssuedCode { code_hash: hash_code(pepper, email.as_str(), &code), token_hash: token_hash(pepper, email, &token), code, token })
    }

    /// As stored: for `purpose`, issued to `user_id`.
    fn stored<'a>(&'a self, purpose: Purpose, user_id: &'a str) -> NewCode<'a> {
        NewCode { purpose, code_hash: &self.code_hash, token_hash: &self.token_hash, user_id }
    }
}

/// Stores a fresh code and link token of `purpose` for `user_id`, and mails them (the caller has
/// reserved the mail against the address's limits).
async fn store_and_send_code(
    state: &(impl Cache + Keys + Mail),
    email: &EmailAddress,
    user_id: &str,
    purpose: Purpose,
) -> Result<(), ApiError> {
    let issued = IssuedCode::new(state, email).await?;
    limits(state).store_code(state.redis(), email.as_str(), &issued.stored(purpose, user_id), false).await?;
    mail_code(state, email, purpose, issued).await;
    Ok(())
}

/// Mails a stored code and its link token.
async fn mail_code(state: &impl Mail, email: &EmailAddress, purpose: Purpose, issued: IssuedCode) {
    let IssuedCode { code, token, .. } = issued;
    let (subject, body) = match purpose {
        Purpose::Verify => ("Your verification code", format!(
            "Your verification code is {code}. Or verify with this link token: {token}. Both expire in 15 minutes. If you did not ask for it, ignore this mail."
        )),
        Purpose::Reset => ("Reset your password", format!(
            "Your password reset code is {code}. Or reset with this link token: {token}. Both expire in 15 minutes. If you did not ask for it, ignore this mail: your password stays as it is."
        )),
    };
    let local = state.config().is_local();
    let email = Email { to: email.to_string(), subject: subject.into(), body, code: local.then_some(code), token: local.then_some(token) };
    send_mail(state, email).await;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    email: String,
    password: String,
    username: Option<String>,
}

fn validate_username(username: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(name) = username.map(|u| u.trim().to_owned()) else {
        return Ok(None);
    };
    let ok = (3..=32).contains(&name.chars().count()) && name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '.');
    if !ok {
        return Err(ApiError::BadRequest {
            code: "invalid_username",
            detail: "a username is 3–32 letters, digits, '.', '_' or '-'".into(),
        });
    }
    Ok(Some(name))
}

pub async fn register(state: &(impl Table + Cache + Keys + Mail), req: Request, ctx: RequestContext) -> HandlerResult {
    // Boxed: the answer future is large, and three of them side by side overflow a test stack.
    in_equal_time(state, "register", Box::pin(register_now(state, req, ctx))).await
}

async fn register_now(state: &(impl Table + Cache + Keys + Mail), req: Request, ctx: RequestContext) -> HandlerResult {
    let body: RegisterRequest = parse_json(&req)?;
    let email = EmailAddress::parse(&body.email)?;
    let username = validate_username(body.username)?;
    password::check_policy(&body.password, email.as_str(), username.as_deref())?;
    // Registrations of one address race (a doubled submit, a burst): the one that holds the
    // address's slot decides, the others answer alike and change nothing, so one account gets
    // one code. Taking the slot also stores this registration's code and counts its mail if it
    // fits the limits, so a new account is two round trips: that step with the source's rate
    // limit (a key of another hash slot: a step of its own, sent together), then the account
    // with the slot given back. Every path that does not mail the code undoes the first step
    // (`Abandon`).
    let user_id = uuid::Uuid::new_v4().to_string();
    let issued = IssuedCode::new(state, &email).await?;
    let code = issued.stored(Purpose::Verify, &user_id);
    let limits = limits(state);
    let (redis, address) = (state.redis(), email.as_str());
    let abandon = |how: Abandon| limits.abandon_registration(redis, address, &code, how);
    // The first step runs even when the source turns out rate-limited: asking first would cost a
    // round trip. Undone at once, it leaves nothing a registration from an unlimited source
    // could not do (that one replaces an unverified account's code for good).
    let (rate, start) = tokio::join!(limits.check_ip(redis, "register", &ctx.source_ip), limits.begin_registration(redis, address, &code));
    let mail = match (rate, start) {
        (rate, Ok(RegistrationStart::Busy)) => return rate.and_then(|()| verification_required()),
        (Err(limited), Ok(RegistrationStart::Started { .. })) => {
            abandon(Abandon::Uncount).await;
            return Err(limited);
        }
        // No answer from the step (redis down, a timeout, a dropped connection): it may have
        // run, and un-counting undoes only what it did.
        (rate, Err(e)) => {
            abandon(Abandon::Uncount).await;
            return Err(rate.err().unwrap_or(e));
        }
        (Ok(()), Ok(RegistrationStart::Started { mail })) => mail,
    };
    let within_limits = mail == MailFit::Within;

    let password = body.password;
    let (creds, profile) = match new_account(&user_id, &email, password.clone(), username).await {
        Ok(account) => account,
        Err(e) => {
            abandon(Abandon::Uncount).await;
            return Err(e);
        }
    };
    let users = users(state);
    // The slot goes back as the account is written: a registration after this one is a later
    // one, and finds the account (or, should it win the race to write one, this one finds its).
    let (created, ()) = tokio::join!(users.create(&email, &creds, &profile), limits.release_registration_slot(redis, address, &user_id));
    match created {
        // A new account's first code is mailed whatever the limits say (counted if within them).
        Ok(true) => {
            mail_code(state, &email, Purpose::Verify, issued).await;
            return verification_required();
        }
        Ok(false) => {}
        Err(e) => {
            abandon(Abandon::Uncount).await;
            return Err(e.into());
        }
    }

    // Taken. The slot is taken again for what follows (a registration that took it meanwhile
    // decides instead, and this one changes nothing), and a mail to the address goes out only
    // within its limits, with the same answer either way. The count stays as a new account's
    // would, so the address's counters do not say which it was.
    let (slot, found) = tokio::join!(limits.take_registration_slot(redis, address, &user_id), users.find(&email));
    match slot {
        Ok(true) => {}
        // The registration holding it decides. The count stays, as it would have had the address
        // been free (this one's account written, the other's finding it).
        Ok(false) => {
            abandon(Abandon::KeepCount).await;
            return verification_required();
        }
        Err(e) => {
            abandon(Abandon::Uncount).await;
            return Err(e);
        }
    }
    let replaced = match found {
        // Never verified (someone may have registered another's address): this registration
        // replaces it whatever the mail limits (a squatter spending them cannot keep their
        // password in place), and only the mailbox's owner can verify it. Past the limits nothing
        // would be mailed for the replacement, so the same registration again (a doubled submit,
        // a retry after a timeout: its password is the account's) leaves it as it is, with the
        // code it was mailed.
        Ok(Some((form, old))) if !old.email_verified => {
            if !within_limits && password::verify(password, Some(old.password_hash.clone())).await.is_ok_and(|v| v.ok) {
                Ok(None)
            } else {
                users.replace_unverified(&form, &old.user_id, &creds, &profile).await.map(Some)
            }
        }
        Ok(Some(_)) => Ok(Some(false)),
        // Gone since the write found it (it expired, or was deleted): nobody to tell.
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    match replaced {
        Ok(Some(true)) => {
            // The code stored in the first step, again (a resend for the replaced account may
            // have replaced it since), with the slot given back in the same step.
            if let Err(e) = limits.store_code(redis, address, &code, true).await {
                abandon(Abandon::Uncount).await;
                return Err(e);
            }
            if within_limits {
                mail_code(state, &email, Purpose::Verify, issued).await;
            }
        }
        // Same answer as a new account; the owner hears about it instead of the caller, and
        // the address's pending code is as it was.
        Ok(Some(false)) => {
            if within_limits {
                let body = "Someone tried to register a new account with this email address. If it was you, sign in or reset your password instead; otherwise no action is needed.";
                send_notice(state, &email, "Registration attempt", body).await;
            }
            abandon(Abandon::KeepCount).await;
        }
        Ok(None) => abandon(Abandon::KeepCount).await,
        Err(e) => {
            abandon(Abandon::Uncount).await;
            return Err(e.into());
        }
    }
    verification_required()
}

/// A new, unverified account's login record and profile, its password hashed.
async fn new_account(
    user_id: &str,
    email: &EmailAddress,
    password: String,
    username: Option<String>,
) -> Result<(Credentials, Profile), ApiError> {
    let password_hash = password::hash(password).await?;
    let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let expires_at = Some(chrono::Utc::now().timestamp() + UNVERIFIED_LIFETIME_SECS);
    let creds = Credentials {
        user_id: user_id.to_owned(),
        password_hash,
        email_verified: false,
        expires_at,
        mfa_enabled: false,
        roles: Vec::new(),
    };
    let profile = Profile {
        id: user_id.to_owned(),
        email: email.to_string(),
        username,
        email_verified: false,
        created_at,
        revoked_before_ms: None,
        expires_at,
        revoked_sessions: Default::default(),
        mfa_enabled: false,
        roles: Vec::new(),
    };
    Ok((creds, profile))
}

/// What a verification or reset presents, hashed: `(true, hash)` for a link token, `(false,
/// hash)` for a 6-digit code. `None`: malformed, so certainly wrong. Both or neither: 400.
fn presented(
    pepper: &[u8],
    email: &EmailAddress,
    code: Option<&str>,
    token: Option<&str>,
    code_field: &str,
) -> Result<Option<(bool, String)>, ApiError> {
    Ok(match (code.map(str::trim), token) {
        (Some(code), None) if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) => {
            Some((false, hash_code(pepper, email.as_str(), code)))
        }
        (None, Some(token)) if crate::crypto::is_random_token(token) => Some((true, token_hash(pepper, email, token))),
        (Some(_), Some(_)) | (None, None) => return Err(ApiError::invalid_request(format!("send either {code_field} or token"))),
        _ => None,
    })
}

/// `verification_code` (the mailed 6 digits) or `token` (the mailed link token), not both.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    email: String,
    verification_code: Option<String>,
    token: Option<String>,
}

pub async fn verify(state: &(impl Table + Cache + Keys), req: Request, ctx: RequestContext) -> HandlerResult {
    let body: VerifyRequest = parse_json(&req)?;
    let email = EmailAddress::parse(&body.email)?;
    let invalid = || ApiError::BadRequest { code: "invalid_code", detail: "the verification code is wrong or has expired".into() };
    let keys = state.jwt_keys().get().await.map_err(|e| ApiError::internal("loading auth secret", e))?;
    let pepper = keys.code_pepper.expose();
    let Some((by_token, hash)) = presented(pepper, &email, body.verification_code.as_deref(), body.token.as_deref(), "verification_code")?
    else {
        limits(state).check_ip(state.redis(), "verify", &ctx.source_ip).await?;
        return Err(invalid());
    };
    let proof = if by_token { Proof::Token(&hash) } else { Proof::Code(&hash) };
    let limits = limits(state);
    let consumed = limits.consume_code(state.redis(), &ctx.source_ip, email.as_str(), Purpose::Verify, proof).await?;
    let users = users(state);
    let verified = match users.stored_form(&email).await {
        Ok(form) => users.mark_verified(&form, &consumed.user_id).await,
        Err(e) => Err(e),
    };
    match verified {
        Ok(true) => {}
        Ok(false) => return Err(invalid()),
        Err(e) => {
            // Nothing was verified: the owner's code must still work on the retry.
            if let Err(restore) = limits.restore_code(state.redis(), &consumed).await {
                tracing::warn!(code = restore.code(), "a consumed verification code could not be put back");
            }
            return Err(e.into());
        }
    }
    json_response(StatusCode::OK, &serde_json::json!({"status": "verified"}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResendRequest {
    email: String,
}

pub async fn resend(state: &(impl Table + Cache + Keys + Mail), req: Request, ctx: RequestContext) -> HandlerResult {
    // Boxed: the answer future is large, and three of them side by side overflow a test stack.
    in_equal_time(state, "resend", Box::pin(resend_now(state, req, ctx))).await
}

async fn resend_now(state: &(impl Table + Cache + Keys + Mail), req: Request, ctx: RequestContext) -> HandlerResult {
    let body: ResendRequest = parse_json(&req)?;
    let email = EmailAddress::parse(&body.email)?;
    // Limits apply whether or not the address has an account, so they reveal nothing.
    limits(state).reserve_send(state.redis(), &ctx.source_ip, "resend", email.as_str()).await?;
    if let Some((_, creds)) = users(state).find_live(&email).await? {
        if !creds.email_verified {
            store_and_send_code(state, &email, &creds.user_id, Purpose::Verify).await?;
        }
    }
    verification_required()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    expires_in: u64,
}

fn invalid_credentials() -> ApiError {
    ApiError::Unauthorized { code: "invalid_credentials", detail: "the email or password is wrong" }
}

/// An access token's claims, stamped now. Taken *before* the write that makes its session live
/// (a login's family, a refresh's rotation): a global logout that lands after that write has a
/// later cutoff than the token's `jti` time, so the token dies with the logout.
fn access_claims(state: &impl Deps, user_id: &str, session_id: &str, sign_in: SignIn, roles: Roles) -> AccessClaims {
    let now = chrono::Utc::now().timestamp();
    AccessClaims {
        iss: state.config().jwt_issuer.clone(),
        aud: state.config().jwt_audience.clone(),
        sub: user_id.to_owned(),
        exp: now + state.config().access_token_ttl.as_secs() as i64,
        iat: now,
        jti: uuid::Uuid::now_v7().to_string(),
        sid: Some(session_id.to_owned()),
        amr: sign_in.amr(),
        roles: roles.names(),
    }
}

/// A new session's first access token and refresh token, the session begun at `created_ms`.
fn new_session(state: &impl Deps, user_id: &str, sign_in: SignIn, roles: Roles, created_ms: i64) -> (AccessClaims, RefreshToken) {
    let session_id = uuid::Uuid::new_v4().to_string();
    (access_claims(state, user_id, &session_id, sign_in, roles), RefreshToken::issue(user_id, &session_id, created_ms, sign_in, roles))
}

/// What the session list shows of the device signing in: its address and its `User-Agent`,
/// cut to 256 characters without control characters.
fn device(req: &Request, ctx: &RequestContext) -> Device {
    let user_agent = crate::http::header_str(req, "user-agent")
        .map(|ua| ua.chars().filter(|c| !c.is_control()).take(256).collect::<String>())
        .filter(|ua| !ua.trim().is_empty());
    Device { user_agent, ip: ctx.source_ip.clone() }
}

async fn token_response(state: &impl Keys, claims: AccessClaims, refresh: &RefreshToken) -> HandlerResult {
    let keys = state.jwt_keys().get().await.map_err(|e| ApiError::internal("loading JWT keys", e))?;
    let ttl = state.config().access_token_ttl.as_secs();
    let activation = crate::auth::tokens::activation_delay(state.config().secrets_ttl);
    let access_token = keys.sign(&claims, activation).map_err(|e| ApiError::internal("signing access token", e))?;
    secret_json_response(
        StatusCode::OK,
        &TokenResponse { access_token, refresh_token: refresh.expose().to_owned(), token_type: "Bearer", expires_in: ttl },
    )
}

pub async fn login(state: &(impl Table + Cache + Keys), req: Request, ctx: RequestContext) -> HandlerResult {
    let body: LoginRequest = parse_json(&req)?;
    let email = EmailAddress::parse(&body.email).map_err(|_| invalid_credentials())?;
    if body.password.chars().count() > password::MAX_LEN {
        return Err(invalid_credentials());
    }
    let limits = limits(state);
    limits.login_attempt(state.redis(), &ctx.source_ip, email.as_str()).await?;
    // Taken before the record is read: a reset or a global logout that lands while the password
    // is being checked is later than this, and the new session's transaction refuses it.
    let password_checked_ms = now_ms();
    let found = users(state).find_live(&email).await?;
    let verification = password::verify(body.password.clone(), found.as_ref().map(|(_, c)| c.password_hash.clone())).await?;
    let Some((form, creds)) = found.filter(|_| verification.ok) else {
        return Err(invalid_credentials());
    };
    if !creds.email_verified {
        limits.login_succeeded(state.redis(), &ctx.source_ip, email.as_str(), 1).await?;
        return Err(ApiError::Forbidden { code: "email_not_verified", detail: "verify your email address before signing in" });
    }
    let rehash = async {
        if verification.needs_rehash {
            let hash = password::hash(body.password).await?;
            users(state).update_password_hash(&form, &creds.user_id, &hash).await?;
        }
        Ok::<_, ApiError>(())
    };
    if creds.mfa_enabled {
        // The password's ticket stays counted until the second factor is right.
        let pending = PendingSignIn {
            user_id: creds.user_id.clone(),
            email: email.as_str().to_owned(),
            password_checked_ms,
            roles: creds.roles.clone(),
        };
        let (token, rehashed) = tokio::join!(mfa::issue_mfa_token(state.redis(), &pending), rehash);
        log_rehash_failure(rehashed);
        return secret_json_response(StatusCode::OK, &serde_json::json!({"mfa_required": true, "mfa_token": token?.expose()}));
    }
    let (claims, refresh) = new_session(state, &creds.user_id, SignIn::Password, Roles::from_names(&creds.roles), now_ms());
    let (store, device) = (refresh_store(state), device(&req, &ctx));
    // The lockout reset, the new session and a rehash are independent: one round trip for all.
    let (reset, started, rehashed) = tokio::join!(
        limits.login_succeeded(state.redis(), &ctx.source_ip, email.as_str(), 1),
        store.start_family(&refresh, &device, password_checked_ms),
        rehash
    );
    reset?;
    log_rehash_failure(rehashed);
    if !started? {
        // Deleted, or logged out everywhere, while the password was being checked.
        return Err(invalid_credentials());
    }
    token_response(state, claims, &refresh).await
}

fn log_rehash_failure(rehashed: Result<(), ApiError>) {
    if let Err(e) = rehashed {
        tracing::warn!(code = e.code(), "password rehash failed; will retry on the next login");
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    refresh_token: String,
}

fn invalid_refresh_token() -> ApiError {
    ApiError::Unauthorized { code: "invalid_refresh_token", detail: "the refresh token is unknown, expired or revoked" }
}
fn refresh_token_reused() -> ApiError {
    ApiError::Unauthorized {
        code: "refresh_token_reused",
        detail: "this refresh token was already used; every session of its login is revoked",
    }
}

/// Why a family is dead, told apart for the client.
async fn revoked_family_error(state: &impl Table, family_id: &str) -> Result<ApiError, ApiError> {
    let family = refresh_store(state).family(family_id).await?;
    Ok(match family.and_then(|f| f.revoked_reason) {
        Some(reason) if reason == "reuse" => refresh_token_reused(),
        _ => invalid_refresh_token(),
    })
}

pub async fn refresh(state: &(impl Table + Cache + Keys), req: Request, ctx: RequestContext) -> HandlerResult {
    let body: RefreshRequest = parse_json(&req)?;
    limits(state).check_ip(state.redis(), "refresh", &ctx.source_ip).await?;
    let old = RefreshToken::parse(&body.refresh_token).ok_or_else(invalid_refresh_token)?;
    let store = refresh_store(state);
    let now = now_ms();
    let keys = state.jwt_keys().get().await.map_err(|e| ApiError::internal("loading auth secret", e))?;
    let new = old.successor(keys.code_pepper.expose());
    let claims = access_claims(state, &old.user_id, &old.family_id, old.sign_in, old.roles);
    match store.rotate(&old, &new, now).await? {
        RotateOutcome::Rotated => token_response(state, claims, &new).await,
        RotateOutcome::FamilyRevoked => Err(revoked_family_error(state, &old.family_id).await?),
        RotateOutcome::TokenSpent => {
            let stored =
                store.token(&old).await?.filter(|t| t.user_id == old.user_id && t.family_id == old.family_id && t.expires_at > now / 1000);
            let Some(stored) = stored else {
                return Err(invalid_refresh_token());
            };
            let used_at = stored.used_at_ms.unwrap_or(now);
            if now - used_at <= state.config().refresh_reuse_grace.as_millis() as i64 {
                // A lost response or two tabs racing: the same successor the first rotation
                // stored (nothing new is written, nothing revoked), while the family lives.
                if store.family_is_live(&old).await? {
                    return token_response(state, claims, &new).await;
                }
                return Err(revoked_family_error(state, &old.family_id).await?);
            }
            tracing::warn!(family_id = %old.family_id, "refresh token reuse detected; revoking the family");
            store.revoke_family(&old.family_id, &old.user_id, "reuse").await?;
            Err(refresh_token_reused())
        }
    }
}

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum LogoutScope {
    #[default]
    Local,
    Global,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogoutRequest {
    refresh_token: String,
    #[serde(default)]
    scope: LogoutScope,
}

pub async fn logout(state: &(impl Table + Cache), req: Request, ctx: RequestContext) -> HandlerResult {
    let body: LogoutRequest = parse_json(&req)?;
    limits(state).check_ip(state.redis(), "logout", &ctx.source_ip).await?;
    let token = RefreshToken::parse(&body.refresh_token).ok_or_else(invalid_refresh_token)?;
    let store = refresh_store(state);
    // Only a token that could still refresh may log out: unspent (or inside its grace window),
    // unexpired, and of a live family. A spent or revoked one (a thief's copy) revokes nothing.
    let now = now_ms();
    let users = users(state);
    let (stored, family, profile) = tokio::join!(store.token(&token), store.family(&token.family_id), users.profile(&token.user_id));
    let grace = state.config().refresh_reuse_grace.as_millis() as i64;
    let usable = stored?.is_some_and(|t| {
        t.user_id == token.user_id
            && t.family_id == token.family_id
            && t.expires_at > now / 1000
            && t.used_at_ms.is_none_or(|used| now - used <= grace)
    });
    let family_live = family?.is_some_and(|f| !f.revoked && f.user_id == token.user_id);
    let not_logged_out_since = profile?.is_some_and(|p| p.revoked_before_ms.is_none_or(|cutoff| cutoff < token.family_created_ms));
    if !(usable && family_live && not_logged_out_since) {
        return Err(invalid_refresh_token());
    }
    if !store.revoke_family(&token.family_id, &token.user_id, "logout").await? {
        return Err(invalid_refresh_token());
    }
    if body.scope == LogoutScope::Global {
        users.revoke_all_sessions(&token.user_id, now_ms()).await?;
    }
    empty_response(StatusCode::NO_CONTENT)
}

pub async fn me(state: &(impl Table + Keys), req: Request, _ctx: RequestContext) -> HandlerResult {
    let (_, profile) = signed_in(state, &req).await?;
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "id": profile.id,
            "email": profile.email,
            "username": profile.username,
            "email_verified": profile.email_verified,
            "mfa_enabled": profile.mfa_enabled,
            "created_at": profile.created_at,
        }),
    )
}

pub async fn jwks(state: &impl Keys, _req: Request, _ctx: RequestContext) -> HandlerResult {
    let keys = state.jwt_keys().get().await.map_err(|e| ApiError::internal("loading JWT keys", e))?;
    let mut response = json_response(StatusCode::OK, keys.jwks())?;
    // Public keys: let verifiers cache them for a while (less than the secret TTL + token life).
    let cache = format!("public, max-age={}", crate::auth::tokens::JWKS_MAX_AGE_SECS);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_str(&cache).map_err(|e| ApiError::internal("jwks cache header", e))?);
    Ok(response)
}

// ---------------------------------------------------------------- password reset

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForgotRequest {
    email: String,
}

/// `POST /api/v1/auth/password/forgot`: the same 202 whether or not the address has an account;
/// a verified one gets a reset code and link token, within the address's mail limits.
pub async fn forgot_password(state: &(impl Table + Cache + Keys + Mail), req: Request, ctx: RequestContext) -> HandlerResult {
    // Boxed: the answer future is large, and three of them side by side overflow a test stack.
    in_equal_time(state, "forgot", Box::pin(forgot_password_now(state, req, ctx))).await
}

async fn forgot_password_now(state: &(impl Table + Cache + Keys + Mail), req: Request, ctx: RequestContext) -> HandlerResult {
    let body: ForgotRequest = parse_json(&req)?;
    let email = EmailAddress::parse(&body.email)?;
    let limits = limits(state);
    limits.check_ip(state.redis(), "forgot", &ctx.source_ip).await?;
    // The mail is counted whether or not the address has an account to mail, as resend's is, so
    // no later answer (a resend's 429, say) tells which it had.
    let users = users(state);
    let (budget, account) = tokio::join!(limits.reserve_mail(state.redis(), email.as_str()), users.find_live(&email));
    let (budget, account) = (budget?, account?);
    if let Some((_, creds)) = account.filter(|(_, creds)| creds.email_verified) {
        if budget == MailBudget::Reserved {
            store_and_send_code(state, &email, &creds.user_id, Purpose::Reset).await?;
        }
    }
    json_response(StatusCode::ACCEPTED, &serde_json::json!({"status": "reset_requested"}))
}

/// `code` (the mailed 6 digits) or `token` (the mailed link token), not both.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    email: String,
    code: Option<String>,
    token: Option<String>,
    new_password: String,
}

/// `POST /api/v1/auth/password/reset`: a new password behind the mailed code or token; every
/// session and access token of the user is revoked (as a global logout), and every lock of the
/// address is cleared.
pub async fn reset_password(state: &(impl Table + Cache + Keys), req: Request, ctx: RequestContext) -> HandlerResult {
    let body: ResetRequest = parse_json(&req)?;
    let email = EmailAddress::parse(&body.email)?;
    let invalid = || ApiError::BadRequest { code: "invalid_code", detail: "the reset code is wrong or has expired".into() };
    password::check_policy(&body.new_password, email.as_str(), None)?;
    let keys = state.jwt_keys().get().await.map_err(|e| ApiError::internal("loading auth secret", e))?;
    let pepper = keys.code_pepper.expose();
    let Some((by_token, hash)) = presented(pepper, &email, body.code.as_deref(), body.token.as_deref(), "code")? else {
        limits(state).check_ip(state.redis(), "reset", &ctx.source_ip).await?;
        return Err(invalid());
    };
    let proof = if by_token { Proof::Token(&hash) } else { Proof::Code(&hash) };
    let limits = limits(state);
    let consumed = limits.consume_code(state.redis(), &ctx.source_ip, email.as_str(), Purpose::Reset, proof).await?;
    let users = users(state);
    let Some((form, creds)) = users.find_live(&email).await?.filter(|(_, c)| c.user_id == consumed.user_id && c.email_verified) else {
        return Err(invalid());
    };
    let new_hash = password::hash(body.new_password).await?;
    if let Err(e) = users.update_password_hash(&form, &creds.user_id, &new_hash).await {
        // Nothing changed: the owner's code must still work on the retry.
        if let Err(restore) = limits.restore_code(state.redis(), &consumed).await {
            tracing::warn!(code = restore.code(), "a consumed reset code could not be put back");
        }
        return Err(e);
    }
    // As a global logout: every session and every access token issued before now dies.
    users.revoke_all_sessions(&creds.user_id, now_ms()).await?;
    limits.clear_lockouts(state.redis(), email.as_str()).await?;
    json_response(StatusCode::OK, &serde_json::json!({"status": "password_reset"}))
}

// ---------------------------------------------------------------- the signed-in account

/// The caller and their profile; 401 `invalid_token` if the token is revoked.
async fn signed_in(state: &(impl Table + Keys), req: &Request) -> Result<(Caller, Profile), ApiError> {
    let caller = authenticate(state, req).await?;
    let profile = crate::auth::session::live_profile(state, &caller).await?;
    Ok((caller, profile))
}

/// The profile's address (canonical, as login keys its lockout), and its login record with the
/// form that record is stored under.
async fn login_record(state: &impl Table, profile: &Profile) -> Result<(EmailAddress, String, Credentials), ApiError> {
    let email = EmailAddress::parse(&profile.email).map_err(|_| ApiError::bug("a stored address does not parse"))?;
    let (form, creds) = users(state).find(&email).await?.filter(|(_, c)| c.user_id == profile.id).ok_or_else(ApiError::invalid_token)?;
    Ok((email, form, creds))
}

/// A signed-in user's password, checked as login checks it: a lockout ticket first, which a
/// wrong password leaves counted (401 `invalid_credentials`), so a stolen access token buys no
/// more guesses than the login form.
async fn check_password(
    state: &impl Cache,
    ctx: &RequestContext,
    email: &EmailAddress,
    creds: &Credentials,
    password: String,
) -> Result<(), ApiError> {
    limits(state).login_attempt(state.redis(), &ctx.source_ip, email.as_str()).await?;
    if password.chars().count() > password::MAX_LEN {
        return Err(invalid_credentials());
    }
    if !password::verify(password, Some(creds.password_hash.clone())).await?.ok {
        return Err(invalid_credentials());
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangePasswordRequest {
    current_password: String,
    new_password: String,
}

/// `POST /api/v1/auth/password/change`: a new password behind the current one. Every session
/// ends (as a global logout), and the caller gets a fresh one, signed in as theirs was.
pub async fn change_password(state: &(impl Table + Cache + Keys), req: Request, ctx: RequestContext) -> HandlerResult {
    let (caller, profile) = signed_in(state, &req).await?;
    let body: ChangePasswordRequest = parse_json(&req)?;
    let (email, form, creds) = login_record(state, &profile).await?;
    password::check_policy(&body.new_password, email.as_str(), profile.username.as_deref())?;
    check_password(state, &ctx, &email, &creds, body.current_password).await?;
    let hash = password::hash(body.new_password).await?;
    let users = users(state);
    users.update_password_hash(&form, &caller.user_id, &hash).await?;
    let cutoff = now_ms();
    users.revoke_all_sessions(&caller.user_id, cutoff).await?;
    give_ticket_back(state, &ctx, &email).await;
    // Begun after the cutoff, so the logout above does not end it.
    let begun = now_ms().max(cutoff + 1);
    let (claims, refresh) = new_session(state, &caller.user_id, caller.sign_in, Roles::from_names(&creds.roles), begun);
    if !refresh_store(state).start_family(&refresh, &device(&req, &ctx), begun).await? {
        // Deleted, or logged out everywhere again, meanwhile.
        return Err(ApiError::invalid_token());
    }
    token_response(state, claims, &refresh).await
}

// ---------------------------------------------------------------- two-factor

/// The keys a second factor is checked with: the encryption key of its secret, and the pepper of
/// its recovery codes.
async fn second_factor_keys(state: &(impl Keys + Vault)) -> Result<(Arc<EncryptionKeys>, Arc<JwtKeys>), ApiError> {
    let (keys, jwt) = tokio::join!(state.encryption_keys().get(), state.jwt_keys().get());
    Ok((
        keys.map_err(|e| ApiError::internal("loading encryption keys", e))?,
        jwt.map_err(|e| ApiError::internal("loading auth secret", e))?,
    ))
}

/// `POST /api/v1/auth/mfa/totp/setup`: a new secret, pending until `enable` confirms it.
pub async fn totp_setup(state: &(impl Table + Keys + Vault), req: Request, _ctx: RequestContext) -> HandlerResult {
    let (caller, profile) = signed_in(state, &req).await?;
    let keys = state.encryption_keys().get().await.map_err(|e| ApiError::internal("loading encryption keys", e))?;
    let setup = mfa::setup(&users(state), &keys, &caller.user_id, &profile.email).await?;
    secret_json_response(
        StatusCode::OK,
        &serde_json::json!({"secret": setup.secret_base32.expose(), "otpauth_uri": setup.otpauth_uri.expose()}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableTotpRequest {
    code: String,
}

/// `POST /api/v1/auth/mfa/totp/enable`: two-factor on, confirmed by a code of the pending secret.
pub async fn totp_enable(state: &(impl Table + Cache + Keys + Vault + Mail), req: Request, _ctx: RequestContext) -> HandlerResult {
    let (caller, profile) = signed_in(state, &req).await?;
    let body: EnableTotpRequest = parse_json(&req)?;
    let (email, form, _) = login_record(state, &profile).await?;
    let (keys, jwt) = second_factor_keys(state).await?;
    let codes = mfa::enable(&users(state), &keys, jwt.code_pepper.expose(), &form, &caller.user_id, &body.code).await?;
    // The owner hears of it: a stolen access token could turn it on with another's authenticator.
    let notice = "Two-factor authentication was turned on for your account: signing in now asks for a code from your authenticator app. If this was not you, reset your password and contact support.";
    notify(state, &email, "Two-factor authentication turned on", notice).await;
    let codes: Vec<&str> = codes.iter().map(|c| c.expose().as_str()).collect();
    secret_json_response(StatusCode::OK, &serde_json::json!({"recovery_codes": codes}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisableTotpRequest {
    password: String,
    code: String,
}

/// `POST /api/v1/auth/mfa/totp/disable`: two-factor off, behind the password and a code (a
/// TOTP or a recovery code), each failure counted as a login's.
pub async fn totp_disable(state: &(impl Table + Cache + Keys + Vault + Mail), req: Request, ctx: RequestContext) -> HandlerResult {
    let (caller, profile) = signed_in(state, &req).await?;
    let body: DisableTotpRequest = parse_json(&req)?;
    if !profile.mfa_enabled {
        return Err(mfa::not_enabled());
    }
    let (email, form, creds) = login_record(state, &profile).await?;
    check_password(state, &ctx, &email, &creds, body.password).await?;
    let (keys, jwt) = second_factor_keys(state).await?;
    let users = users(state);
    if !mfa::accept_second_factor(&users, &keys, jwt.code_pepper.expose(), &caller.user_id, &body.code).await? {
        return Err(mfa::invalid_code());
    }
    mfa::disable(&users, &form, &caller.user_id).await?;
    give_ticket_back(state, &ctx, &email).await;
    let body =
        "Two-factor authentication was turned off for your account. If this was not you, reset your password now and turn it on again.";
    notify(state, &email, "Two-factor authentication turned off", body).await;
    empty_response(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MfaVerifyRequest {
    mfa_token: String,
    code: String,
}

fn invalid_mfa_token() -> ApiError {
    ApiError::Unauthorized { code: "invalid_mfa_token", detail: "the mfa_token is unknown, expired or already used; sign in again" }
}

/// `POST /api/v1/auth/mfa/verify`: the second step of a sign-in with two-factor on. A wrong
/// code counts toward the lockout as a wrong password does; the `mfa_token` is spent by the
/// first right code.
pub async fn mfa_verify(state: &(impl Table + Cache + Keys + Vault), req: Request, ctx: RequestContext) -> HandlerResult {
    let body: MfaVerifyRequest = parse_json(&req)?;
    let pending = mfa::pending_sign_in(state.redis(), &body.mfa_token).await?.ok_or_else(invalid_mfa_token)?;
    let limits = limits(state);
    limits.login_attempt(state.redis(), &ctx.source_ip, &pending.email).await?;
    let (keys, jwt) = second_factor_keys(state).await?;
    if !mfa::accept_second_factor(&users(state), &keys, jwt.code_pepper.expose(), &pending.user_id, &body.code).await? {
        return Err(mfa::invalid_code());
    }
    if !mfa::spend_mfa_token(state.redis(), &body.mfa_token).await? {
        return Err(invalid_mfa_token());
    }
    let (claims, refresh) = new_session(state, &pending.user_id, SignIn::PasswordAndOtp, Roles::from_names(&pending.roles), now_ms());
    let (store, device) = (refresh_store(state), device(&req, &ctx));
    // The password's ticket and this one's both come back: the sign-in succeeded.
    let (reset, started) = tokio::join!(
        limits.login_succeeded(state.redis(), &ctx.source_ip, &pending.email, 2),
        store.start_family(&refresh, &device, pending.password_checked_ms)
    );
    reset?;
    if !started? {
        // A reset, a change or a global logout since the password was checked ends this
        // sign-in too (or the account is gone).
        return Err(invalid_mfa_token());
    }
    token_response(state, claims, &refresh).await
}

// ---------------------------------------------------------------- sessions

fn rfc3339_ms(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// `GET /api/v1/auth/sessions`: one entry per live session, most recently used first.
pub async fn list_sessions(state: &(impl Table + Keys), req: Request, _ctx: RequestContext) -> HandlerResult {
    let (caller, profile) = signed_in(state, &req).await?;
    let now = now_ms();
    let mut sessions: Vec<_> =
        refresh_store(state).sessions(&caller.user_id).await?.into_iter().filter(|s| s.is_live(&profile, now)).collect();
    sessions.sort_by_key(|s| std::cmp::Reverse(s.last_used_ms.unwrap_or(s.created_ms)));
    let sessions: Vec<serde_json::Value> = sessions
        .iter()
        .map(|s| {
            serde_json::json!({
                "session_id": s.family_id,
                "created_at": rfc3339_ms(s.created_ms),
                // Signing in is the first use.
                "last_used_at": rfc3339_ms(s.last_used_ms.unwrap_or(s.created_ms)),
                "user_agent": s.user_agent,
                "ip": s.ip,
                "current": caller.session_id.as_deref() == Some(s.family_id.as_str()),
            })
        })
        .collect();
    json_response(StatusCode::OK, &serde_json::json!({ "sessions": sessions }))
}

fn session_not_found() -> ApiError {
    ApiError::NoSuch { code: "session_not_found", detail: "no session of yours has this id" }
}

/// `DELETE /api/v1/auth/sessions/{session_id}`: that session's refresh family and its access
/// tokens die at once. Ending one already ended answers 204 again.
pub async fn end_session(state: &(impl Table + Keys), req: Request, _ctx: RequestContext) -> HandlerResult {
    let (caller, _) = signed_in(state, &req).await?;
    let session_id = crate::http::path_parameter(&req, "session_id").ok_or_else(session_not_found)?;
    if uuid::Uuid::try_parse(&session_id).is_err() || session_id.len() != 36 {
        return Err(session_not_found());
    }
    if !refresh_store(state).revoke_family(&session_id, &caller.user_id, "ended").await? {
        return Err(session_not_found());
    }
    empty_response(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- deletion

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteAccountRequest {
    password: String,
}

/// `DELETE /api/v1/users/me`: the account and its personal data go, behind the password (and,
/// with two-factor on, a session signed in with it); 409 `bot_running` unless the bot is stopped
/// and flat.
pub async fn delete_me(state: &(impl Table + Cache + Keys), req: Request, ctx: RequestContext) -> HandlerResult {
    let caller = authenticate(state, &req).await?;
    let body: DeleteAccountRequest = parse_json(&req)?;
    let snapshot = crate::trading::service::load_snapshot(state, &caller).await?;
    let profile = snapshot.profile.as_ref().ok_or_else(ApiError::invalid_token)?;
    caller.require_second_factor(profile)?;
    let (email, form, creds) = login_record(state, profile).await?;
    check_password(state, &ctx, &email, &creds, body.password).await?;
    crate::auth::deletion::delete_account(&users(state), &snapshot, &form, &caller.user_id).await?;
    // Its sign-in counters go with it (they would expire anyway).
    if let Err(e) = limits(state).clear_lockouts(state.redis(), email.as_str()).await {
        tracing::warn!(code = e.code(), "a deleted account's sign-in counters were left to expire");
    }
    empty_response(StatusCode::NO_CONTENT)
}

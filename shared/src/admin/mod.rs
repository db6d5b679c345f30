//! The operators' API: every route needs the `admin` role (granted by `make admin`, never through
//! the API) and a session signed in with two-factor, and every call is written to the audit log
//! before it is answered.

pub mod audit;
pub mod bots;
pub mod kill_switch;

use crate::admin::audit::{AuditEntry, AuditStore};
use crate::auth::session::Caller;
use crate::auth::tokens::{SignIn, ADMIN_ROLE};
use crate::error::ApiError;
use crate::http::RequestContext;
use crate::state::{Keys, Table};
use lambda_http::Request;
use std::future::Future;

/// A caller every admin check passed for.
#[derive(Debug, Clone)]
pub struct Admin {
    pub user_id: String,
    pub email: String,
}

fn forbidden() -> ApiError {
    ApiError::Forbidden { code: "forbidden", detail: "this route is for operators with the admin role" }
}

/// The role in the token, then two-factor, then the user item: a role taken away, a global
/// logout or a revoked session ends admin access at once, whatever the token says.
async fn check(state: &impl Table, caller: &Caller) -> Result<Admin, ApiError> {
    if !caller.roles.admin {
        return Err(forbidden());
    }
    if caller.sign_in != SignIn::PasswordAndOtp {
        return Err(ApiError::Forbidden { code: "mfa_required", detail: "admin routes need a session signed in with two-factor" });
    }
    let profile = crate::auth::session::live_profile(state, caller).await?;
    if !profile.roles.iter().any(|r| r == ADMIN_ROLE) {
        return Err(forbidden());
    }
    // A session signed in with two-factor outlives turning it off: admin access does not.
    if !profile.mfa_enabled {
        return Err(ApiError::Forbidden { code: "mfa_required", detail: "admin routes need two-factor on the account" });
    }
    Ok(Admin { user_id: caller.user_id.clone(), email: profile.email })
}

/// What an admin call does to the audit log: a look is written once, with its result; a change
/// is written before it is made (`pending`), and its result after, so no change goes unrecorded
/// even when the function dies halfway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Look,
    Change,
}

/// Runs one admin action for the caller of `req`: the checks, then `run`, with the audit entry
/// written before the answer. A token that does not verify is refused before anything is
/// written (there is nobody to name); a refusal of a verified caller is recorded as its code.
pub async fn act<T, F, Fut>(
    state: &(impl Table + Keys),
    req: &Request,
    ctx: &RequestContext,
    action: &str,
    target: Option<String>,
    effect: Effect,
    run: F,
) -> Result<T, ApiError>
where
    F: FnOnce(Admin) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let caller = crate::auth::session::authenticate(state, req).await?;
    let audit = AuditStore { client: state.dynamo(), table: &state.config().table_name };
    let mut entry = AuditEntry::now(&caller.user_id, action, target, &ctx.request_id);
    let admin = match check(state, &caller).await {
        Ok(admin) => admin,
        Err(refused) => {
            entry.result = refused.code().to_owned();
            audit.record(&entry).await?;
            return Err(refused);
        }
    };
    if effect == Effect::Change {
        entry.result = audit::PENDING.to_owned();
        audit.record(&entry).await?;
    }
    let outcome = run(admin).await;
    entry.result = match &outcome {
        Ok(_) => audit::OK.to_owned(),
        Err(e) => e.code().to_owned(),
    };
    let written = match effect {
        Effect::Look => audit.record(&entry).await,
        Effect::Change => audit.settle(&entry).await,
    };
    match (written, effect) {
        (Ok(()), _) => outcome,
        // The change is made and its pending entry names it: its answer is not held back.
        (Err(e), Effect::Change) => {
            tracing::error!(action, request_id = %entry.request_id, error = %e, "an admin change's result could not be written to the audit log");
            outcome
        }
        (Err(e), Effect::Look) => Err(e.into()),
    }
}

//! Users, credentials and refresh-token families in DynamoDB.

use crate::auth::email::EmailAddress;
use crate::auth::tokens::{Roles, SignIn};
use crate::dynamo::StoreError;
use crate::dynamo::{self, n, s, to_item, Item};
use crate::error::ApiError;
use crate::keys;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem, Update};
use serde::{Deserialize, Serialize};

pub const REFRESH_LIFETIME_SECS: i64 = 30 * 24 * 3600;

/// The login record, keyed by email: what login needs, in one read.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub user_id: String,
    pub password_hash: String,
    pub email_verified: bool,
    /// An unverified account's end (unix seconds, the table's TTL attribute): 24 h after it was
    /// made. Verification removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Two-factor sign-in is on: a right password answers `mfa_required`, never tokens.
    #[serde(default)]
    pub mfa_enabled: bool,
    /// Granted by an operator (`make admin`), never through the API; a sign-in's tokens carry them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

impl Credentials {
    /// Verified, or unverified and not yet past its end (DynamoDB's TTL sweep may lag by days:
    /// an account past it is gone, whether or not the item still is).
    pub fn is_live(&self, now_secs: i64) -> bool {
        self.email_verified || self.expires_at.is_none_or(|end| end > now_secs)
    }
}

/// How long an account may stay unverified before it is gone.
pub const UNVERIFIED_LIFETIME_SECS: i64 = 24 * 3600;

impl std::fmt::Debug for Credentials {
    // A password hash is an offline guessing target: never in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user_id", &self.user_id)
            .field("password_hash", &"[redacted]")
            .field("email_verified", &self.email_verified)
            .field("expires_at", &self.expires_at)
            .field("mfa_enabled", &self.mfa_enabled)
            .field("roles", &self.roles)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    pub id: String,
    pub email: String,
    pub username: Option<String>,
    pub email_verified: bool,
    pub created_at: String,
    /// Global logout: access tokens and refresh families issued before this instant are dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_before_ms: Option<i64>,
    /// As the login record's: an unverified account's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Sessions revoked one by one (session id → when, ms): their access tokens are refused at
    /// once, read with the profile every protected route reads anyway.
    #[serde(default)]
    pub revoked_sessions: std::collections::HashMap<String, i64>,
    /// As the login record's: what guards the exchange keys asks for a second factor.
    #[serde(default)]
    pub mfa_enabled: bool,
    /// As the login record's: what an admin route checks on every call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// How long a revoked session is remembered: longer than any access token lives (at most an
/// hour, plus the clock leeway).
pub const REVOKED_SESSION_KEPT_MS: i64 = (3600 + crate::auth::tokens::LEEWAY_SECS as i64 + 60) * 1000;

pub struct UserStore<'a> {
    pub client: &'a aws_sdk_dynamodb::Client,
    pub table: &'a str,
}

fn put(table: &str, item: Item, condition: &str) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder().table_name(table).set_item(Some(item)).condition_expression(condition).build().map_err(StoreError::from)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

impl UserStore<'_> {
    /// Creates the email record (under the canonical address) and the profile in one
    /// transaction; `Ok(false)` when the address is taken, in any form it may be stored under
    /// (nothing is written then).
    pub async fn create(&self, email: &EmailAddress, creds: &Credentials, profile: &Profile) -> Result<bool, StoreError> {
        let email_item = keys::with_key(to_item(creds)?, keys::email(email.as_str()));
        let profile_item = keys::with_key(to_item(profile)?, keys::profile(&profile.id));
        let mut request = self
            .client
            .transact_write_items()
            .transact_items(put(self.table, email_item, "attribute_not_exists(PK)")?)
            .transact_items(put(self.table, profile_item, "attribute_not_exists(PK)")?);
        for older in email.stored_forms().skip(1) {
            let check = ConditionCheck::builder()
                .table_name(self.table)
                .set_key(Some(keys::email(older)))
                .condition_expression("attribute_not_exists(PK)")
                .build()?;
            request = request.transact_items(TransactWriteItem::builder().condition_check(check).build());
        }
        Ok(dynamo::transact(request).await?.written())
    }

    /// Replaces an account that was never verified (stored under `form`, by `old_user_id`) with
    /// a new registration of the address: new id, password and profile, the old profile gone.
    /// `false` when it was verified or replaced meanwhile (nothing is written then).
    pub async fn replace_unverified(
        &self,
        form: &str,
        old_user_id: &str,
        creds: &Credentials,
        profile: &Profile,
    ) -> Result<bool, StoreError> {
        use aws_sdk_dynamodb::types::Delete;
        let email_item = keys::with_key(to_item(creds)?, keys::email(form));
        let email = Put::builder()
            .table_name(self.table)
            .set_item(Some(email_item))
            .condition_expression("email_verified = :f AND user_id = :old")
            .expression_attribute_values(":f", AttributeValue::Bool(false))
            .expression_attribute_values(":old", s(old_user_id))
            .build()?;
        let old_profile = Delete::builder().table_name(self.table).set_key(Some(keys::profile(old_user_id))).build()?;
        let profile_item = keys::with_key(to_item(profile)?, keys::profile(&profile.id));
        let request = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(email).build())
            .transact_items(TransactWriteItem::builder().delete(old_profile).build())
            .transact_items(put(self.table, profile_item, "attribute_not_exists(PK)")?);
        Ok(dynamo::transact(request).await?.written())
    }

    /// The login record of `email` and the form it is stored under: the canonical address, or
    /// for an account made before addresses were canonical, the form it was made with.
    pub async fn find(&self, email: &EmailAddress) -> Result<Option<(String, Credentials)>, StoreError> {
        for form in email.stored_forms() {
            if let Some(creds) = self.credentials(form).await? {
                return Ok(Some((form.to_owned(), creds)));
            }
        }
        Ok(None)
    }

    /// As `find`, for an account that is live (an unverified one past its end is gone).
    pub async fn find_live(&self, email: &EmailAddress) -> Result<Option<(String, Credentials)>, StoreError> {
        let now = chrono::Utc::now().timestamp();
        Ok(self.find(email).await?.filter(|(_, creds)| creds.is_live(now)))
    }

    /// The form `email`'s record is stored under (the canonical one when there is no older form
    /// to look for, without a read).
    pub async fn stored_form(&self, email: &EmailAddress) -> Result<String, StoreError> {
        if email.stored_forms().count() == 1 {
            return Ok(email.as_str().to_owned());
        }
        Ok(self.find(email).await?.map(|(form, _)| form).unwrap_or_else(|| email.as_str().to_owned()))
    }

    pub async fn credentials(&self, email: &str) -> Result<Option<Credentials>, StoreError> {
        crate::dynamo::get_item(self.client, self.table, keys::email(email)).await
    }

    pub async fn profile(&self, user_id: &str) -> Result<Option<Profile>, StoreError> {
        crate::dynamo::get_item(self.client, self.table, keys::profile(user_id)).await
    }

    /// One update of both records of an account (its login record under `email` and its
    /// profile) in one transaction, only while the login record still belongs to `user_id`.
    /// `update` fills in the expression; `extra_condition` is added to both records' ownership.
    async fn update_both(
        &self,
        email: &str,
        user_id: &str,
        extra_condition: Option<&str>,
        update: impl Fn(aws_sdk_dynamodb::types::builders::UpdateBuilder) -> aws_sdk_dynamodb::types::builders::UpdateBuilder,
    ) -> Result<bool, StoreError> {
        let write = |key, owner: &str| -> Result<TransactWriteItem, StoreError> {
            let condition = match extra_condition {
                Some(extra) => format!("{owner} AND ({extra})"),
                None => owner.to_owned(),
            };
            let builder = Update::builder()
                .table_name(self.table)
                .set_key(Some(key))
                .condition_expression(condition)
                .expression_attribute_values(":uid", s(user_id));
            Ok(TransactWriteItem::builder().update(update(builder).build().map_err(StoreError::from)?).build())
        };
        let request = self
            .client
            .transact_write_items()
            .transact_items(write(keys::email(email), "user_id = :uid")?)
            .transact_items(write(keys::profile(user_id), "id = :uid")?);
        Ok(dynamo::transact(request).await?.written())
    }

    /// Marks both records verified, only if the email record still belongs to `user_id`.
    pub async fn mark_verified(&self, email: &str, user_id: &str) -> Result<bool, StoreError> {
        let now = chrono::Utc::now().timestamp();
        self.update_both(email, user_id, Some("attribute_not_exists(expires_at) OR expires_at > :now"), |u| {
            u.update_expression("SET email_verified = :t REMOVE expires_at")
                .expression_attribute_values(":t", AttributeValue::Bool(true))
                .expression_attribute_values(":now", n(now))
        })
        .await
    }

    /// Sets the account's roles on both records (an operator's `make admin`), only while the
    /// login record under `email` still belongs to `user_id`. Sessions begun before keep their
    /// tokens' roles until they end, but admin routes read the profile's on every call.
    pub async fn set_roles(&self, email: &str, user_id: &str, roles: &[String]) -> Result<bool, StoreError> {
        let value = AttributeValue::L(roles.iter().map(|r| s(r.as_str())).collect());
        self.update_both(email, user_id, None, |u| {
            u.update_expression("SET #roles = :roles")
                .expression_attribute_names("#roles", "roles")
                .expression_attribute_values(":roles", value.clone())
        })
        .await
    }

    pub async fn update_password_hash(&self, email: &str, user_id: &str, hash: &str) -> Result<(), ApiError> {
        self.client
            .update_item()
            .table_name(self.table)
            .set_key(Some(keys::email(email)))
            .update_expression("SET password_hash = :h")
            .condition_expression("user_id = :uid")
            .expression_attribute_values(":h", s(hash))
            .expression_attribute_values(":uid", s(user_id))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| dynamo::write_error(e, ApiError::conflict("conflict", "the account changed")))
    }

    /// A global logout at `now_ms`: access tokens and sessions begun before it die. The cutoff only
    /// ever moves forward, so a function whose clock runs behind cannot bring back what a later
    /// logout ended.
    pub async fn revoke_all_sessions(&self, user_id: &str, now_ms: i64) -> Result<(), ApiError> {
        use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
        let result = self
            .client
            .update_item()
            .table_name(self.table)
            .set_key(Some(keys::profile(user_id)))
            .update_expression("SET revoked_before_ms = :now")
            .condition_expression("attribute_exists(PK) AND (attribute_not_exists(revoked_before_ms) OR revoked_before_ms < :now)")
            .expression_attribute_values(":now", n(now_ms))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if dynamo::is_condition_failure(&e) => {
                // The profile is there with a later cutoff (that logout covers this one), or gone.
                use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
                let exists =
                    matches!(e.as_service_error(), Some(UpdateItemError::ConditionalCheckFailedException(c)) if c.item().is_some());
                if exists {
                    Ok(())
                } else {
                    Err(ApiError::invalid_token())
                }
            }
            Err(e) => Err(dynamo::db_error(e).into()),
        }
    }
}

/// The TOTP second factor of one user. The secrets are AES-GCM envelopes (the exchange keys'
/// encryption key, bound to the user id); recovery codes are kept as peppered hashes only.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct TotpRecord {
    /// Set up and not yet confirmed by a code; replaced by each setup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_secret: Option<String>,
    /// The active secret, once enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default)]
    pub enabled: bool,
    /// The last 30-second step whose code was accepted: no code of it or of an earlier step is
    /// accepted again (RFC 6238 §5.2).
    #[serde(default)]
    pub last_step: i64,
    /// Unused recovery codes, by hash (a used one is removed by the write that accepts it).
    #[serde(default)]
    pub recovery_codes: std::collections::HashMap<String, bool>,
}

impl std::fmt::Debug for TotpRecord {
    // Even encrypted, a second factor's secret and its recovery hashes stay out of log lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpRecord")
            .field("pending_secret", &self.pending_secret.as_ref().map(|_| "[redacted]"))
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("enabled", &self.enabled)
            .field("last_step", &self.last_step)
            .field("recovery_codes_left", &self.recovery_codes.len())
            .finish()
    }
}

/// One conditional update inside a transaction.
fn update(
    table: &str,
    key: keys::Key,
    expression: &str,
    condition: &str,
    values: Vec<(&str, AttributeValue)>,
) -> Result<TransactWriteItem, StoreError> {
    let mut update = Update::builder().table_name(table).set_key(Some(key)).update_expression(expression).condition_expression(condition);
    for (name, value) in values {
        update = update.expression_attribute_values(name, value);
    }
    Ok(TransactWriteItem::builder().update(update.build()?).build())
}

/// What a second factor's write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorWrite {
    Written,
    /// Two-factor is on already (setup) or not on (disable), or the setup changed meanwhile.
    WrongState,
}

impl UserStore<'_> {
    pub async fn totp(&self, user_id: &str) -> Result<Option<TotpRecord>, StoreError> {
        crate::dynamo::get_item(self.client, self.table, keys::totp(user_id)).await
    }

    /// Stores a new pending secret, unless two-factor is on.
    pub async fn set_pending_totp(&self, user_id: &str, ciphertext: &str) -> Result<FactorWrite, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(self.table)
            .set_key(Some(keys::totp(user_id)))
            .update_expression("SET pending_secret = :p, enabled = :f, last_step = if_not_exists(last_step, :zero)")
            .condition_expression("attribute_not_exists(PK) OR enabled = :f")
            .expression_attribute_values(":p", s(ciphertext))
            .expression_attribute_values(":f", AttributeValue::Bool(false))
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        Ok(if dynamo::written(result)? { FactorWrite::Written } else { FactorWrite::WrongState })
    }

    /// Turns two-factor on with the pending secret `pending` (still the one set up), the step
    /// its confirming code used, and the recovery codes' hashes; the login record and the
    /// profile learn it in the same transaction.
    pub async fn enable_totp(
        &self,
        email_form: &str,
        user_id: &str,
        pending: &str,
        step: i64,
        recovery_hashes: &[String],
    ) -> Result<FactorWrite, StoreError> {
        let codes = recovery_hashes.iter().map(|h| (h.clone(), AttributeValue::Bool(true))).collect();
        let t = || AttributeValue::Bool(true);
        let request = self
            .client
            .transact_write_items()
            .transact_items(update(
                self.table,
                keys::totp(user_id),
                "SET secret = :p, enabled = :t, last_step = :step, recovery_codes = :codes REMOVE pending_secret",
                "pending_secret = :p AND enabled = :f",
                vec![
                    (":p", s(pending)),
                    (":t", t()),
                    (":f", AttributeValue::Bool(false)),
                    (":step", n(step)),
                    (":codes", AttributeValue::M(codes)),
                ],
            )?)
            .transact_items(update(
                self.table,
                keys::email(email_form),
                "SET mfa_enabled = :t",
                "user_id = :uid",
                vec![(":t", t()), (":uid", s(user_id))],
            )?)
            .transact_items(update(self.table, keys::profile(user_id), "SET mfa_enabled = :t", "attribute_exists(PK)", vec![(":t", t())])?);
        Ok(if dynamo::transact(request).await?.written() { FactorWrite::Written } else { FactorWrite::WrongState })
    }

    /// Turns two-factor off: the secret and recovery codes go, and the login record and profile
    /// learn it in the same transaction.
    pub async fn disable_totp(&self, email_form: &str, user_id: &str) -> Result<FactorWrite, StoreError> {
        use aws_sdk_dynamodb::types::Delete;
        let delete = Delete::builder()
            .table_name(self.table)
            .set_key(Some(keys::totp(user_id)))
            .condition_expression("enabled = :t")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .build()?;
        let f = || AttributeValue::Bool(false);
        let request = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().delete(delete).build())
            .transact_items(update(
                self.table,
                keys::email(email_form),
                "SET mfa_enabled = :f",
                "user_id = :uid",
                vec![(":f", f()), (":uid", s(user_id))],
            )?)
            .transact_items(update(self.table, keys::profile(user_id), "SET mfa_enabled = :f", "attribute_exists(PK)", vec![(":f", f())])?);
        Ok(if dynamo::transact(request).await?.written() { FactorWrite::Written } else { FactorWrite::WrongState })
    }

    /// Accepts a code of `step`: `false` when a code of this step or a later one was accepted
    /// already (a replay) or two-factor is off. One write decides, however many race.
    pub async fn use_totp_step(&self, user_id: &str, step: i64) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(self.table)
            .set_key(Some(keys::totp(user_id)))
            .update_expression("SET last_step = :s")
            .condition_expression("enabled = :t AND last_step < :s")
            .expression_attribute_values(":s", n(step))
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .send()
            .await;
        dynamo::written(result)
    }

    /// Spends the recovery code whose hash is `hash`: `false` when it is not (or no longer) one.
    pub async fn use_recovery_code(&self, user_id: &str, hash: &str) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(self.table)
            .set_key(Some(keys::totp(user_id)))
            .update_expression("REMOVE recovery_codes.#h")
            .condition_expression("enabled = :t AND attribute_exists(recovery_codes.#h)")
            .expression_attribute_names("#h", hash)
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .send()
            .await;
        dynamo::written(result)
    }
}

/// What deleting an account found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountRemoval {
    Removed,
    /// The bot is running or stopping: nothing was removed.
    BotActive,
    /// The login record is not this user's any more (replaced or removed meanwhile).
    Changed,
}

impl UserStore<'_> {
    /// Removes what signs the account in and what the exchange trusts it with, in one
    /// transaction, while its bot is stopped: the login record (so the address can register
    /// again), the profile (so every access and refresh token of it dies at once), the bot, the
    /// exchange credentials and the second factor.
    pub async fn remove_account(&self, email_form: &str, user_id: &str) -> Result<AccountRemoval, StoreError> {
        use aws_sdk_dynamodb::types::Delete;
        let login = Delete::builder()
            .table_name(self.table)
            .set_key(Some(keys::email(email_form)))
            .condition_expression("user_id = :uid")
            .expression_attribute_values(":uid", s(user_id))
            .build()?;
        let profile = Delete::builder().table_name(self.table).set_key(Some(keys::profile(user_id))).build()?;
        let bot = Delete::builder()
            .table_name(self.table)
            .set_key(Some(keys::bot(user_id)))
            .condition_expression("attribute_not_exists(PK) OR #state = :stopped")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":stopped", s("stopped"))
            .build()?;
        let credentials = Delete::builder().table_name(self.table).set_key(Some(keys::credentials(user_id))).build()?;
        let second_factor = Delete::builder().table_name(self.table).set_key(Some(keys::totp(user_id))).build()?;
        let request = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().delete(login).build())
            .transact_items(TransactWriteItem::builder().delete(profile).build())
            .transact_items(TransactWriteItem::builder().delete(bot).build())
            .transact_items(TransactWriteItem::builder().delete(credentials).build())
            .transact_items(TransactWriteItem::builder().delete(second_factor).build());
        let outcome = dynamo::transact(request).await?;
        Ok(if outcome.written() {
            AccountRemoval::Removed
        } else if outcome.failed(2) {
            AccountRemoval::BotActive
        } else {
            AccountRemoval::Changed
        })
    }

    /// Deletes the rest of a removed account's personal data: its own partition (paper account,
    /// positions, resting orders, the signal token), its sessions and its idempotency records.
    pub async fn erase_personal_data(&self, user_id: &str) -> Result<(), StoreError> {
        for partition in [keys::user_partition(user_id), keys::sessions_partition(user_id), keys::idempotency_partition(user_id)] {
            let items = dynamo::partition(self.client, self.table, partition).await?;
            let mut doomed: Vec<keys::Key> = items.iter().map(dynamo::key_of).collect();
            // The signal token's lookup lives in its own partition, named by the pointer.
            let signal = items.iter().find(|item| keys::sort_key(item) == Some(keys::SIGNAL_POINTER));
            if let Some(hash) = signal.and_then(|item| item.get("hash")).and_then(|h| h.as_s().ok()) {
                doomed.push(keys::signal_token(hash));
            }
            dynamo::delete_all(self.client, self.table, doomed).await?;
        }
        Ok(())
    }

    /// Gives every order of a removed account an end (unix seconds, the table's TTL), unless it
    /// has an earlier one: the history outlives the account only that long, tied to nobody.
    pub async fn expire_order_history(&self, user_id: &str, end: i64) -> Result<(), StoreError> {
        use futures::{StreamExt, TryStreamExt};
        let mut items = dynamo::partition(self.client, self.table, keys::order_partition(user_id)).await?;
        items.extend(dynamo::partition(self.client, self.table, keys::fills_partition(user_id)).await?);
        // One conditional update each, 16 at a time: a long history must not outlast the request.
        futures::stream::iter(items)
            .map(|item| async move {
                let result = self
                    .client
                    .update_item()
                    .table_name(self.table)
                    .set_key(Some(dynamo::key_of(&item)))
                    .update_expression("SET expires_at = :end")
                    .condition_expression("attribute_exists(PK) AND (attribute_not_exists(expires_at) OR expires_at > :end)")
                    .expression_attribute_values(":end", n(end))
                    .send()
                    .await;
                dynamo::written(result)
            })
            .buffer_unordered(16)
            .try_collect::<Vec<bool>>()
            .await?;
        Ok(())
    }
}

/// `rt1.<user id>.<family id>.<family created, ms>.<256 random bits>`: the random part makes it
/// unguessable; the rest lets a refresh be one transaction with no read first. Only the SHA-256 of
/// the whole string is stored, so a changed field simply matches nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub user_id: String,
    pub family_id: String,
    pub family_created_ms: i64,
    /// How the family was signed in, carried by every successor: `rt1.<user>.<family>.<created>.otp.<random>`
    /// after a second factor. The stored hash covers it, so it cannot be added by hand.
    pub sign_in: SignIn,
    /// The session's roles, carried the same way: `….admin.<random>` for an operator.
    pub roles: Roles,
    raw: String,
}

impl std::fmt::Debug for RefreshToken {
    // The raw token is a bearer credential for 30 days.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshToken")
            .field("user_id", &self.user_id)
            .field("family_id", &self.family_id)
            .field("family_created_ms", &self.family_created_ms)
            .field("sign_in", &self.sign_in)
            .field("roles", &self.roles)
            .field("raw", &"[redacted]")
            .finish()
    }
}

impl RefreshToken {
    pub fn issue(user_id: &str, family_id: &str, family_created_ms: i64, sign_in: SignIn, roles: Roles) -> Self {
        Self::with_secret(user_id, family_id, family_created_ms, sign_in, roles, &crate::crypto::random_token())
    }

    fn with_secret(user_id: &str, family_id: &str, family_created_ms: i64, sign_in: SignIn, roles: Roles, secret: &str) -> Self {
        let factor = match sign_in {
            SignIn::Password => "",
            SignIn::PasswordAndOtp => "otp.",
        };
        let role = if roles.admin { "admin." } else { "" };
        RefreshToken {
            user_id: user_id.to_owned(),
            family_id: family_id.to_owned(),
            family_created_ms,
            sign_in,
            roles,
            raw: format!("rt1.{user_id}.{family_id}.{family_created_ms}.{factor}{role}{secret}"),
        }
    }

    /// The one token that succeeds this one, derived from it and a server key: a replay of this
    /// token inside the grace window gets the very successor the first rotation stored, so a
    /// family never branches into parallel lines that reuse detection could not see.
    pub fn successor(&self, server_key: &[u8]) -> RefreshToken {
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(server_key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(b"refresh-successor:");
        mac.update(self.hash().as_bytes());
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        Self::with_secret(&self.user_id, &self.family_id, self.family_created_ms, self.sign_in, self.roles, &secret)
    }

    pub fn parse(raw: &str) -> Option<Self> {
        let parts: Vec<&str> = raw.split('.').collect();
        let admin = Roles { admin: true };
        let (user_id, family_id, created, sign_in, roles, secret) = match parts.as_slice() {
            ["rt1", user, family, created, secret] => (*user, *family, *created, SignIn::Password, Roles::NONE, *secret),
            ["rt1", user, family, created, "otp", secret] => (*user, *family, *created, SignIn::PasswordAndOtp, Roles::NONE, *secret),
            ["rt1", user, family, created, "admin", secret] => (*user, *family, *created, SignIn::Password, admin, *secret),
            ["rt1", user, family, created, "otp", "admin", secret] => (*user, *family, *created, SignIn::PasswordAndOtp, admin, *secret),
            _ => return None,
        };
        // Only ids this service issues (hyphenated UUIDs) ever reach a key: anything else would
        // make DynamoDB refuse the key (a 2 KB id) and the route answer 5xx.
        let uuid = |id: &str| id.len() == 36 && uuid::Uuid::try_parse(id).is_ok();
        let created_ok = !created.is_empty() && created.len() <= 15 && created.bytes().all(|b| b.is_ascii_digit());
        if !uuid(user_id) || !uuid(family_id) || !crate::crypto::is_random_token(secret) || !created_ok {
            return None;
        }
        Some(RefreshToken {
            user_id: user_id.to_owned(),
            family_id: family_id.to_owned(),
            family_created_ms: created.parse().ok()?,
            sign_in,
            roles,
            raw: raw.to_owned(),
        })
    }

    pub fn expose(&self) -> &str {
        &self.raw
    }

    pub fn hash(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(self.raw.as_bytes()))
    }

    pub fn expires_at(&self) -> i64 {
        self.family_created_ms / 1000 + REFRESH_LIFETIME_SECS
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredRefreshToken {
    pub user_id: String,
    pub family_id: String,
    pub expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Family {
    pub user_id: String,
    pub created_ms: i64,
    pub expires_at: i64,
    pub revoked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_reason: Option<String>,
}

/// What a sign-in tells about its device, shown in the session list.
#[derive(Debug, Clone, Default)]
pub struct Device {
    pub user_agent: Option<String>,
    pub ip: String,
}

/// One session (refresh family) in the user's own partition, for the session list. Revoking the
/// family deletes it in the same transaction; a global logout leaves it, and the list drops
/// sessions begun before the profile's cutoff.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user_id: String,
    pub family_id: String,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub expires_at: i64,
}

impl SessionRecord {
    /// Unexpired, and begun after the user's last global logout.
    pub fn is_live(&self, profile: &Profile, now_ms: i64) -> bool {
        self.expires_at > now_ms / 1000
            && profile.revoked_before_ms.is_none_or(|cutoff| cutoff < self.created_ms)
            && !profile.revoked_sessions.contains_key(&self.family_id)
    }
}

pub enum RotateOutcome {
    Rotated,
    /// The presented token was already used (or is unknown); look closer.
    TokenSpent,
    /// The family or every session of the user was revoked.
    FamilyRevoked,
}

pub struct RefreshStore<'a> {
    pub client: &'a aws_sdk_dynamodb::Client,
    pub table: &'a str,
}

impl RefreshStore<'_> {
    fn token_item(token: &RefreshToken) -> Item {
        let stored = StoredRefreshToken {
            user_id: token.user_id.clone(),
            family_id: token.family_id.clone(),
            expires_at: token.expires_at(),
            used_at_ms: None,
        };
        keys::with_key(serde_dynamo::to_item(&stored).unwrap_or_default(), keys::refresh_token(&token.hash()))
    }

    /// The family must be live and the user must not have logged out everywhere since it began.
    fn live_family_checks(&self, token: &RefreshToken) -> Result<[TransactWriteItem; 2], StoreError> {
        let family = ConditionCheck::builder()
            .table_name(self.table)
            .set_key(Some(keys::refresh_family(&token.family_id)))
            .condition_expression("revoked = :f AND user_id = :uid")
            .expression_attribute_values(":f", AttributeValue::Bool(false))
            .expression_attribute_values(":uid", s(&token.user_id))
            .build()
            .map_err(StoreError::from)?;
        let profile = ConditionCheck::builder()
            .table_name(self.table)
            .set_key(Some(keys::profile(&token.user_id)))
            .condition_expression("attribute_exists(PK) AND (attribute_not_exists(revoked_before_ms) OR revoked_before_ms < :created)")
            .expression_attribute_values(":created", n(token.family_created_ms))
            .build()
            .map_err(StoreError::from)?;
        Ok([TransactWriteItem::builder().condition_check(family).build(), TransactWriteItem::builder().condition_check(profile).build()])
    }

    /// A new family with its first token and its session record, in one transaction, for a
    /// password checked at `password_checked_ms`. `false` (nothing written): the account is gone,
    /// or its user logged out everywhere (a reset, a change, a global logout) since that check.
    pub async fn start_family(&self, token: &RefreshToken, device: &Device, password_checked_ms: i64) -> Result<bool, StoreError> {
        let family = Family {
            user_id: token.user_id.clone(),
            created_ms: token.family_created_ms,
            expires_at: token.expires_at(),
            revoked: false,
            revoked_reason: None,
        };
        let family_item = keys::with_key(to_item(&family)?, keys::refresh_family(&token.family_id));
        let session = SessionRecord {
            user_id: token.user_id.clone(),
            family_id: token.family_id.clone(),
            created_ms: token.family_created_ms,
            last_used_ms: None,
            user_agent: device.user_agent.clone(),
            ip: Some(device.ip.clone()),
            expires_at: token.expires_at(),
        };
        let session_item = keys::with_key(to_item(&session)?, keys::session(&token.user_id, &token.family_id));
        let account = ConditionCheck::builder()
            .table_name(self.table)
            .set_key(Some(keys::profile(&token.user_id)))
            .condition_expression("attribute_exists(PK) AND (attribute_not_exists(revoked_before_ms) OR revoked_before_ms < :checked)")
            .expression_attribute_values(":checked", n(password_checked_ms))
            .build()?;
        let request = self
            .client
            .transact_write_items()
            .transact_items(put(self.table, family_item, "attribute_not_exists(PK)")?)
            .transact_items(put(self.table, Self::token_item(token), "attribute_not_exists(PK)")?)
            .transact_items(put(self.table, session_item, "attribute_not_exists(PK)")?)
            .transact_items(TransactWriteItem::builder().condition_check(account).build());
        match dynamo::transact(request).await? {
            dynamo::Transacted::Written => Ok(true),
            outcome if outcome.failed(3) => Ok(false),
            // A fresh random family id and token: taken only if something is badly wrong.
            dynamo::Transacted::ConditionFailed(_) => Err(StoreError::Missing("a fresh session id was already taken")),
        }
    }

    /// The user's sessions as stored, live or not (the caller judges them against the profile).
    pub async fn sessions(&self, user_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let items = dynamo::partition(self.client, self.table, keys::sessions_partition(user_id)).await?;
        items.into_iter().map(dynamo::from_item).collect()
    }

    /// Marks `old` used and stores `new` in the same family, in one transaction.
    pub async fn rotate(&self, old: &RefreshToken, new: &RefreshToken, now_ms: i64) -> Result<RotateOutcome, StoreError> {
        let spend = Update::builder()
            .table_name(self.table)
            .set_key(Some(keys::refresh_token(&old.hash())))
            .update_expression("SET used_at_ms = :now")
            .condition_expression("attribute_exists(PK) AND attribute_not_exists(used_at_ms) AND expires_at > :now_s")
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":now_s", n(now_ms / 1000))
            .build()
            .map_err(StoreError::from)?;
        let [family_check, profile_check] = self.live_family_checks(old)?;
        // The session's last use; a family begun before sessions were listed gets its record.
        let touch = Update::builder()
            .table_name(self.table)
            .set_key(Some(keys::session(&old.user_id, &old.family_id)))
            .update_expression(
                "SET last_used_ms = :now, user_id = :uid, family_id = :fid, created_ms = if_not_exists(created_ms, :created), expires_at = if_not_exists(expires_at, :exp)",
            )
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":uid", s(&old.user_id))
            .expression_attribute_values(":fid", s(&old.family_id))
            .expression_attribute_values(":created", n(old.family_created_ms))
            .expression_attribute_values(":exp", n(old.expires_at()))
            .build()
            .map_err(StoreError::from)?;
        let request = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(spend).build())
            .transact_items(put(self.table, Self::token_item(new), "attribute_not_exists(PK)")?)
            .transact_items(family_check)
            .transact_items(profile_check)
            .transact_items(TransactWriteItem::builder().update(touch).build());
        let outcome = dynamo::transact(request).await?;
        Ok(if outcome.written() {
            RotateOutcome::Rotated
        } else if outcome.failed(2) || outcome.failed(3) {
            RotateOutcome::FamilyRevoked
        } else {
            RotateOutcome::TokenSpent
        })
    }

    /// Whether `token`'s family is still live (not revoked, and the user has not logged out
    /// everywhere since it began), checked as one consistent transaction of two conditions.
    pub async fn family_is_live(&self, token: &RefreshToken) -> Result<bool, StoreError> {
        let [family_check, profile_check] = self.live_family_checks(token)?;
        let request = self.client.transact_write_items().transact_items(family_check).transact_items(profile_check);
        Ok(dynamo::transact(request).await?.written())
    }

    pub async fn token(&self, token: &RefreshToken) -> Result<Option<StoredRefreshToken>, StoreError> {
        crate::dynamo::get_item(self.client, self.table, keys::refresh_token(&token.hash())).await
    }

    pub async fn family(&self, family_id: &str) -> Result<Option<Family>, StoreError> {
        crate::dynamo::get_item(self.client, self.table, keys::refresh_family(family_id)).await
    }

    /// Revokes a session: its refresh family and its session record in one transaction, then
    /// (in the profile) its access tokens. `false`: no such session of this user.
    pub async fn revoke_family(&self, family_id: &str, user_id: &str, reason: &str) -> Result<bool, ApiError> {
        use aws_sdk_dynamodb::types::Delete;
        let family = Update::builder()
            .table_name(self.table)
            .set_key(Some(keys::refresh_family(family_id)))
            .update_expression("SET revoked = :t, revoked_reason = if_not_exists(revoked_reason, :r)")
            .condition_expression("user_id = :uid")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":r", s(reason))
            .expression_attribute_values(":uid", s(user_id))
            .build()
            .map_err(StoreError::from)?;
        let session =
            Delete::builder().table_name(self.table).set_key(Some(keys::session(user_id, family_id))).build().map_err(StoreError::from)?;
        let request = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(family).build())
            .transact_items(TransactWriteItem::builder().delete(session).build());
        if !dynamo::transact(request).await?.written() {
            return Ok(false);
        }
        self.revoke_session_tokens(family_id, user_id).await?;
        Ok(true)
    }

    /// Adds the session to the profile's revoked sessions, so its access tokens die now rather
    /// than at expiry, and drops entries older than any access token can live (the map stays as
    /// small as the sessions revoked within the last hour).
    async fn revoke_session_tokens(&self, family_id: &str, user_id: &str) -> Result<(), ApiError> {
        let forget_before = chrono::Utc::now().timestamp_millis() - REVOKED_SESSION_KEPT_MS;
        for _ in 0..3 {
            let now = chrono::Utc::now().timestamp_millis();
            let item = self
                .client
                .get_item()
                .table_name(self.table)
                .set_key(Some(keys::profile(user_id)))
                .consistent_read(true)
                .send()
                .await
                .map_err(dynamo::db_error)?
                .item;
            let Some(item) = item else { return Err(ApiError::invalid_token()) };
            let has_map = item.contains_key("revoked_sessions");
            let profile: Profile = dynamo::from_item(item)?;
            let update = self.client.update_item().table_name(self.table).set_key(Some(keys::profile(user_id)));
            // Profiles made before sessions were revoked one by one have no map yet: make it.
            let update = if has_map {
                let stale: Vec<&String> = profile
                    .revoked_sessions
                    .iter()
                    .filter(|(sid, at)| **at < forget_before && *sid != family_id)
                    .map(|(sid, _)| sid)
                    .collect();
                let mut expression = "SET revoked_sessions.#sid = :now".to_owned();
                let mut update = update.expression_attribute_names("#sid", family_id).expression_attribute_values(":now", n(now));
                if !stale.is_empty() {
                    let names: Vec<String> = (0..stale.len()).map(|i| format!("#old{i}")).collect();
                    expression.push_str(&format!(
                        " REMOVE {}",
                        names.iter().map(|n| format!("revoked_sessions.{n}")).collect::<Vec<_>>().join(", ")
                    ));
                    for (name, sid) in names.iter().zip(stale) {
                        update = update.expression_attribute_names(name, sid);
                    }
                }
                update.update_expression(expression).condition_expression("attribute_exists(revoked_sessions)")
            } else {
                update
                    .update_expression("SET revoked_sessions = :map")
                    .condition_expression("attribute_exists(PK) AND attribute_not_exists(revoked_sessions)")
                    .expression_attribute_values(
                        ":map",
                        AttributeValue::M(std::collections::HashMap::from([(family_id.to_owned(), n(now))])),
                    )
            };
            match update.send().await {
                Ok(_) => return Ok(()),
                // Made or changed meanwhile by another revocation: read it again.
                Err(e) if dynamo::is_condition_failure(&e) => continue,
                Err(e) => return Err(dynamo::db_error(e).into()),
            }
        }
        Err(ApiError::conflict("conflict", "the sessions changed concurrently; try again"))
    }
}

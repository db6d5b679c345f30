//! Every counter of the auth routes, each decided in one atomic Redis script: the per-address
//! rate limit runs first inside each script, so a route pays one round trip for both.

use crate::error::ApiError;
use redis::aio::ConnectionManager;
use redis::Script;
use std::sync::LazyLock;

pub const CODE_TTL_SECS: u64 = 15 * 60;
pub const CODE_MAX_ATTEMPTS: u32 = 5;
pub const RESEND_COOLDOWN_SECS: u64 = 60;
pub const RESEND_MAX_PER_HOUR: u32 = 5;
pub const LOCKOUT_THRESHOLD: u32 = 5;
pub const LOCKOUT_BASE_SECS: u64 = 60;
pub const LOCKOUT_MAX_SECS: u64 = 15 * 60;

/// KEYS[1] = the address's counter for this route and minute, ARGV[1] = its limit.
const IP_PRELUDE: &str = r#"
local hits = redis.call('INCR', KEYS[1])
if hits == 1 then redis.call('EXPIRE', KEYS[1], 60) end
if hits > tonumber(ARGV[1]) then return {'ip_limited', redis.call('TTL', KEYS[1])} end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{IP_PRELUDE}\n{body}"))
}

static IP_ONLY: LazyLock<Script> = LazyLock::new(|| script("return {'ok', 0}"));

/// KEYS[2] = the account's lockout hash, ARGV[2] = now (unix seconds), ARGV[3..5] = threshold,
/// base and cap. Each attempt takes a ticket *before* the password is checked, so parallel
/// guesses cannot all slip in under the limit; the ticket that reaches the threshold sets the lock
/// at once, and a success deletes the hash.
static LOGIN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = tonumber(ARGV[2])
local lock_until = tonumber(redis.call('HGET', KEYS[2], 'lock_until') or '0')
if lock_until > now then return {'locked', lock_until - now} end
local fails = redis.call('HINCRBY', KEYS[2], 'fails', 1)
local threshold = tonumber(ARGV[3])
if fails >= threshold then
  local secs = math.min(tonumber(ARGV[4]) * (2 ^ (fails - threshold)), tonumber(ARGV[5]))
  redis.call('HSET', KEYS[2], 'lock_until', now + secs)
end
redis.call('EXPIRE', KEYS[2], 86400)
return {'ok', fails}
"#,
    )
});

/// KEYS[2] = the pending code hash, ARGV[2] = the presented code's hash, ARGV[3] = attempt cap.
/// The code is consumed by the same step that compares it: one success however many race.
static VERIFY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local stored = redis.call('HGET', KEYS[2], 'hash')
if not stored then return {'no_code', 0} end
if stored == ARGV[2] then
  local user_id = redis.call('HGET', KEYS[2], 'user_id')
  redis.call('DEL', KEYS[2])
  return {'ok', user_id}
end
local attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
if attempts >= tonumber(ARGV[3]) then redis.call('DEL', KEYS[2]) end
return {'invalid', attempts}
"#,
    )
});

/// KEYS[2] = the email's cooldown key, KEYS[3] = its hourly counter. Reserves one send.
static SEND_RESERVATION: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local cooldown = redis.call('TTL', KEYS[2])
if cooldown > 0 then return {'cooldown', cooldown} end
local sent = tonumber(redis.call('GET', KEYS[3]) or '0')
if sent >= tonumber(ARGV[2]) then return {'hourly', redis.call('TTL', KEYS[3])} end
redis.call('SET', KEYS[2], '1', 'EX', tonumber(ARGV[3]))
if redis.call('INCR', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], 3600) end
return {'ok', 0}
"#,
    )
});

/// Replaces the pending code (attempts reset): KEYS[1] = code key, KEYS[2..3] = the email's send
/// counters, ARGV = hash, user id, ttl, whether to count this send (registration's first mail)
/// and the cooldown.
static STORE_CODE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'hash', ARGV[1], 'user_id', ARGV[2], 'attempts', 0)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
if ARGV[4] == '1' then
  redis.call('SET', KEYS[2], '1', 'EX', tonumber(ARGV[5]))
  if redis.call('INCR', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], 3600) end
end
return 1
"#,
    )
});

fn ip_key(route: &str, ip: &str) -> String {
    let minute = chrono::Utc::now().timestamp() / 60;
    format!("rl:{route}:{ip}:{minute}")
}
fn lockout_key(email: &str) -> String {
    format!("lockout:{email}")
}
fn code_key(email: &str) -> String {
    format!("vcode:{email}")
}
fn cooldown_key(email: &str) -> String {
    format!("resend:cooldown:{email}")
}
fn hourly_key(email: &str) -> String {
    format!("resend:hour:{email}")
}

type Outcome = (String, redis::Value);

fn ip_limited(retry: &redis::Value) -> ApiError {
    ApiError::too_many_requests(as_u64(retry).max(1))
}

fn as_u64(v: &redis::Value) -> u64 {
    match v {
        redis::Value::Int(i) => (*i).max(0) as u64,
        _ => 1,
    }
}

pub struct Limits {
    pub ip_per_minute: u32,
}

impl Limits {
    /// Only the per-address limit, for routes with no counter of their own.
    pub async fn check_ip(&self, redis: &ConnectionManager, route: &str, ip: &str) -> Result<(), ApiError> {
        let mut conn = redis.clone();
        let (tag, value): Outcome = IP_ONLY.key(ip_key(route, ip)).arg(self.ip_per_minute).invoke_async(&mut conn).await?;
        match tag.as_str() {
            "ok" => Ok(()),
            _ => Err(ip_limited(&value)),
        }
    }

    /// Takes a login ticket for `email`: refused with 429 while the account is locked.
    pub async fn login_attempt(&self, redis: &ConnectionManager, ip: &str, email: &str) -> Result<(), ApiError> {
        let mut conn = redis.clone();
        let (tag, value): Outcome = LOGIN
            .key(ip_key("login", ip))
            .key(lockout_key(email))
            .arg(self.ip_per_minute)
            .arg(chrono::Utc::now().timestamp())
            .arg(LOCKOUT_THRESHOLD)
            .arg(LOCKOUT_BASE_SECS)
            .arg(LOCKOUT_MAX_SECS)
            .invoke_async(&mut conn)
            .await?;
        match tag.as_str() {
            "ok" => Ok(()),
            "locked" => Err(ApiError::TooManyRequests {
                code: "account_locked",
                detail: "too many failed sign-in attempts; try again later",
                retry_after_secs: as_u64(&value),
            }),
            _ => Err(ip_limited(&value)),
        }
    }

    pub async fn login_succeeded(&self, redis: &ConnectionManager, email: &str) -> Result<(), ApiError> {
        let mut conn = redis.clone();
        redis::cmd("DEL").arg(lockout_key(email)).query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Consumes the pending code if `code_hash` matches; the user id it was issued for.
    pub async fn consume_code(&self, redis: &ConnectionManager, ip: &str, email: &str, code_hash: &str) -> Result<String, ApiError> {
        let mut conn = redis.clone();
        let (tag, value): Outcome = VERIFY
            .key(ip_key("verify", ip))
            .key(code_key(email))
            .arg(self.ip_per_minute)
            .arg(code_hash)
            .arg(CODE_MAX_ATTEMPTS)
            .invoke_async(&mut conn)
            .await?;
        match (tag.as_str(), value) {
            ("ok", redis::Value::BulkString(user_id)) => String::from_utf8(user_id).map_err(|e| ApiError::internal("code owner", e)),
            ("ip_limited", v) => Err(ip_limited(&v)),
            _ => Err(ApiError::BadRequest { code: "invalid_code", detail: "the verification code is wrong or has expired".into() }),
        }
    }

    /// Reserves one verification mail for `email` (60 s apart, 5 an hour).
    pub async fn reserve_send(&self, redis: &ConnectionManager, ip: &str, route: &str, email: &str) -> Result<(), ApiError> {
        let mut conn = redis.clone();
        let (tag, value): Outcome = SEND_RESERVATION
            .key(ip_key(route, ip))
            .key(cooldown_key(email))
            .key(hourly_key(email))
            .arg(self.ip_per_minute)
            .arg(RESEND_MAX_PER_HOUR)
            .arg(RESEND_COOLDOWN_SECS)
            .invoke_async(&mut conn)
            .await?;
        match tag.as_str() {
            "ok" => Ok(()),
            _ => Err(ip_limited(&value)),
        }
    }

    /// Stores the pending code; `count_send` also starts the resend limits (a registration's
    /// first mail), in the same step.
    pub async fn store_code(
        &self,
        redis: &ConnectionManager,
        email: &str,
        code_hash: &str,
        user_id: &str,
        count_send: bool,
    ) -> Result<(), ApiError> {
        let mut conn = redis.clone();
        STORE_CODE
            .key(code_key(email))
            .key(cooldown_key(email))
            .key(hourly_key(email))
            .arg(code_hash)
            .arg(user_id)
            .arg(CODE_TTL_SECS)
            .arg(if count_send { "1" } else { "0" })
            .arg(RESEND_COOLDOWN_SECS)
            .invoke_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }
}

/// A 6-digit code from the OS CSPRNG, uniform over 000000–999999.
pub fn new_code() -> String {
    use rand::Rng;
    format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000u32))
}

/// HMAC-SHA256(pepper, email ":" code), hex: what Redis holds instead of the code.
pub fn hash_code(pepper: &[u8], email: &str, code: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(pepper).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(email.as_bytes());
    mac.update(b":");
    mac.update(code.trim().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

//! Every counter of the auth routes. Redis runs in cluster mode (as ElastiCache Serverless
//! presents itself), so every script touches keys of one hash slot only: the per-address rate
//! limit is its own step, and everything about one email address shares the hash tag
//! `{<digest of the address>}`. Each decision (a login ticket, a code check, a send reservation)
//! is still one atomic script.

use crate::error::ApiError;
use redis::aio::ConnectionManager;
use redis::Script;
use sha2::Digest;
use std::sync::LazyLock;

pub const CODE_TTL_SECS: u64 = 15 * 60;
pub const CODE_MAX_ATTEMPTS: u32 = 5;
/// Wrong codes for one address, whatever resends came between, before every code of it is
/// refused until the window has passed (the mailed link token still works).
pub const CODE_FAILURES_PER_WINDOW: u32 = 10;
pub const CODE_FAILURE_WINDOW_SECS: u64 = 24 * 3600;
pub const RESEND_COOLDOWN_SECS: u64 = 60;
pub const RESEND_MAX_PER_HOUR: u32 = 5;
pub const LOCKOUT_THRESHOLD: u32 = 5;
pub const LOCKOUT_BASE_SECS: u64 = 60;
pub const LOCKOUT_MAX_SECS: u64 = 15 * 60;
/// Failures for one address from every source in an hour before it is locked for every source.
pub const EMAIL_FAILURES_PER_HOUR: u32 = 50;
pub const EMAIL_LOCK_SECS: u64 = 15 * 60;

/// KEYS[1] = the address's counter for this route and minute, ARGV[1] = its limit.
static IP_LIMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local hits = redis.call('INCR', KEYS[1])
if hits == 1 then redis.call('EXPIRE', KEYS[1], 60) end
if hits > tonumber(ARGV[1]) then return {'ip_limited', redis.call('TTL', KEYS[1])} end
return {'ok', 0}
"#,
    )
});

/// KEYS[1] = the (address, source) pair's lockout hash, KEYS[2] = the address's hourly count,
/// KEYS[3] = the address's lock (its own key: a lock never stretches the count's hour), KEYS[4] =
/// when a password reset last cleared every lock of the address (pairs older are dropped);
/// ARGV[1] = now (unix seconds), ARGV[2..4] = the pair's threshold, base and cap, ARGV[5..6] = the
/// address's hourly limit and lock. Each attempt takes a ticket *before* the password is checked,
/// so parallel guesses cannot all slip in under a limit: the pair's 5th ticket locks that pair
/// (1 minute, doubling to 15), the address's 50th in an hour locks the address for every source.
/// One source's guesses never lock the owner out from another; a success clears the pair.
static LOGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local now = tonumber(ARGV[1])
local cleared = tonumber(redis.call('GET', KEYS[4]) or '0')
if cleared > 0 and tonumber(redis.call('HGET', KEYS[1], 'at') or '0') <= cleared then redis.call('DEL', KEYS[1]) end
local all_locked = redis.call('TTL', KEYS[3])
if all_locked > 0 then return {'locked', all_locked} end
local lock_until = tonumber(redis.call('HGET', KEYS[1], 'lock_until') or '0')
if lock_until > now then return {'locked', lock_until - now} end
local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
redis.call('HSET', KEYS[1], 'at', now)
local threshold = tonumber(ARGV[2])
if fails >= threshold then
  local secs = math.min(tonumber(ARGV[3]) * (2 ^ (fails - threshold)), tonumber(ARGV[4]))
  redis.call('HSET', KEYS[1], 'lock_until', now + secs)
end
redis.call('EXPIRE', KEYS[1], 86400)
local all = redis.call('HINCRBY', KEYS[2], 'fails', 1)
if all == 1 then redis.call('EXPIRE', KEYS[2], 3600) end
if all >= tonumber(ARGV[5]) then
  redis.call('SET', KEYS[3], '1', 'EX', tonumber(ARGV[6]))
  redis.call('DEL', KEYS[2])
end
return {'ok', fails}
"#,
    )
});

/// A password reset: KEYS[1..2] = the address's count and lock (gone), KEYS[3] = when (pairs that
/// failed before it are dropped when next met); ARGV[1] = now.
static CLEAR_LOCKOUTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], ARGV[1], 'EX', 86400)
return 1
"#,
    )
});

/// A sign-in completed: KEYS[1] = the pair's lockout (cleared), KEYS[2] = the address's hourly
/// hash, whose ARGV[1] tickets the sign-in took are given back (a success is not a failure: the
/// password's, and with two-factor the second factor's).
static LOGIN_SUCCEEDED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('DEL', KEYS[1])
local fails = tonumber(redis.call('HGET', KEYS[2], 'fails') or '0')
local back = math.min(fails, tonumber(ARGV[1]))
if back > 0 then redis.call('HINCRBY', KEYS[2], 'fails', -back) end
return 1
"#,
    )
});

/// A right password outside a sign-in (a password change, two-factor off, account deletion):
/// KEYS[1] = the pair's lockout, KEYS[2] = the address's hourly hash; the one ticket it took is
/// given back to each, with the lock it set, and nothing else is cleared (earlier failures, a
/// second factor's included, stay counted).
static PASSWORD_ACCEPTED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('HGET', key, 'fails') or '0') > 0 then redis.call('HINCRBY', key, 'fails', -1) end
end
-- A ticket is granted only while the pair is not locked, so a lock now is the one this ticket
-- set: it goes with the ticket (the failures before it stay counted).
redis.call('HDEL', KEYS[1], 'lock_until')
return 1
"#,
    )
});

/// KEYS[1] = the pending code hash, KEYS[2] = the address's failure count, KEYS[3] = the
/// presented link token's key (each mailed token has its own, so a later mail never kills an
/// earlier one); ARGV[1] = the presented code, hashed; ARGV[2] = `code` or `token`; ARGV[3] = the per-code cap, ARGV[4..5] = the
/// address's failure budget and its window. The code (or token) is consumed by the same step that
/// compares it: one success however many race. Wrong codes count against the code (5 burn it)
/// and against the address (10 in 24 h refuse every code of it, resends notwithstanding). The link
/// token is never burned by wrong codes, so the owner of the mailbox can always finish.
static VERIFY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if ARGV[2] == 'token' then
  local user_id = redis.call('GET', KEYS[3])
  if not user_id then return {'invalid', 0} end
  local ttl = redis.call('PTTL', KEYS[3])
  redis.call('DEL', KEYS[3])
  return {'ok', user_id, '0', ttl, ''}
end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[4]) then return {'burned', 0} end
local stored = redis.call('HGET', KEYS[1], 'hash')
if stored and stored == ARGV[1] then
  local fields = redis.call('HMGET', KEYS[1], 'user_id', 'attempts')
  local ttl = redis.call('PTTL', KEYS[1])
  redis.call('DEL', KEYS[1])
  return {'ok', fields[1], fields[2] or '0', ttl, ARGV[1]}
end
local fails = redis.call('INCR', KEYS[2])
if fails == 1 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5])) end
if stored then
  local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  if attempts >= tonumber(ARGV[3]) then redis.call('HDEL', KEYS[1], 'hash') end
end
return {'invalid', fails}
"#,
    )
});

/// Puts a consumed code back (the write it was consumed for did not happen), unless a newer
/// code has replaced it meanwhile: KEYS[1] = the code key, ARGV = user id, attempts, ttl (ms),
/// code hash.
static RESTORE_CODE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 or tonumber(ARGV[3]) <= 0 then return 0 end
redis.call('HSET', KEYS[1], 'user_id', ARGV[1], 'attempts', ARGV[2], 'hash', ARGV[4])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"#,
    )
});

/// Lua shared by the scripts that count mail: `send_limited` is what keeps one more mail to an
/// address from being sent (`{'cooldown' | 'hourly', seconds to wait}`), or false; `count_send`
/// counts one against the address's cooldown (held by `sender`, for a registration to know its
/// own) and hourly count. The cooldown is read in milliseconds: `TTL` rounds under half a second
/// down to none.
const SEND_COUNTERS: &str = r#"
local function send_limited(cooldown, hourly, per_hour)
  local cooling = redis.call('PTTL', cooldown)
  if cooling > 0 then return {'cooldown', math.ceil(cooling / 1000)} end
  if tonumber(redis.call('GET', hourly) or '0') >= per_hour then return {'hourly', redis.call('TTL', hourly)} end
  return false
end
local function count_send(cooldown, hourly, cooldown_secs, sender)
  redis.call('SET', cooldown, sender, 'EX', cooldown_secs)
  if redis.call('INCR', hourly) == 1 then redis.call('EXPIRE', hourly, 3600) end
end
"#;

/// Lua shared by the scripts that store a code: the pending code at `code` replaced by `hash` for
/// `user_id` (its attempts reset; the address's failure budget is not), and a link token of its
/// own at `token` (earlier ones stay valid until their own expiry), both for `ttl` seconds.
const PUT_CODE: &str = r#"
local function put_code(code, token, hash, user_id, ttl)
  redis.call('DEL', code)
  redis.call('HSET', code, 'hash', hash, 'user_id', user_id, 'attempts', 0)
  redis.call('EXPIRE', code, ttl)
  redis.call('SET', token, user_id, 'EX', ttl)
end
"#;

/// KEYS[1] = the email's cooldown key, KEYS[2] = its hourly counter. Reserves one send; with
/// ARGV[3] = '1' the send is counted whatever the limits say (an owner's own security notice).
static SEND_RESERVATION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{SEND_COUNTERS}
if ARGV[3] ~= '1' then
  local limited = send_limited(KEYS[1], KEYS[2], tonumber(ARGV[1]))
  if limited then return limited end
end
count_send(KEYS[1], KEYS[2], tonumber(ARGV[2]), '1')
return {{'ok', 0}}
"#
    ))
});

/// Lua shared by the scripts that give a registration slot back: only the registration holding
/// it (`owner`, its account's user id) can, so one that outlived its slot cannot free another's.
const RELEASE_SLOT: &str = r#"
local function release_slot(slot, owner)
  if redis.call('GET', slot) == owner then redis.call('DEL', slot) end
end
"#;

/// Replaces the pending code and adds its link token: KEYS[1] = code key, KEYS[2] = the new
/// token's key, KEYS[3] (optional) = the registration slot this code's registration gives back;
/// ARGV = code hash, user id (the slot's owner), ttl.
static STORE_CODE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{PUT_CODE}{RELEASE_SLOT}
put_code(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]))
if KEYS[3] then release_slot(KEYS[3], ARGV[2]) end
return 1
"#
    ))
});

/// Gives a registration slot back: KEYS[1] = the slot, ARGV[1] = its owner.
static GIVE_SLOT_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{RELEASE_SLOT}
release_slot(KEYS[1], ARGV[1])
return 1
"#
    ))
});

/// The first step of a registration: takes the address's slot (KEYS[1], for ARGV[1] ms, held by
/// ARGV[3]) or answers `busy`; then stores the registration's code for its new account, before
/// the account exists, keeping the code it replaces (KEYS[2] → KEYS[3]) for
/// `ABANDON_REGISTRATION` to put back; and counts one mail to the address (KEYS[5..6]) if it fits
/// the limits, its cooldown held by the registration. Past them nothing is counted, whether the
/// address is free (its first code is sent uncounted) or taken (nobody is mailed), so the
/// counters do not tell the two apart, and registering a taken address again and again spends
/// none of its owner's mail. KEYS[4] = the new link token's key; ARGV[2..6] = code hash, user
/// id, ttl, sends per hour, cooldown. `{'started', 'within' | 'cooldown' | 'hourly'}`: whether the
/// mail fitted the limits, or which held it back.
static BEGIN_REGISTRATION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{PUT_CODE}{SEND_COUNTERS}
if not redis.call('SET', KEYS[1], ARGV[3], 'NX', 'PX', tonumber(ARGV[1])) then return {{'busy', ''}} end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[3]) else redis.call('DEL', KEYS[3]) end
put_code(KEYS[2], KEYS[4], ARGV[2], ARGV[3], tonumber(ARGV[4]))
local limited = send_limited(KEYS[5], KEYS[6], tonumber(ARGV[5]))
if limited then return {{'started', limited[1]}} end
count_send(KEYS[5], KEYS[6], tonumber(ARGV[6]), ARGV[3])
return {{'started', 'within'}}
"#
    ))
});

/// Undoes what `BEGIN_REGISTRATION` stored for a registration that mails no code: the code it
/// replaced comes back, unless a newer one has replaced this registration's meanwhile (KEYS[1] =
/// the code, compared with ARGV[1]; KEYS[2] = the kept one), its link token goes (KEYS[3]), with
/// ARGV[2] = '1' the mail it counted is un-counted (KEYS[4..5]) if the cooldown is still the one
/// it started, and the slot (KEYS[6]) is given back if this registration (ARGV[3]) holds it. So a
/// cooldown it did not start is never touched, and every part is safe whether or not the first
/// step ran (a cooldown it started that ran out meanwhile leaves its count: one too many, never
/// one too few).
static ABANDON_REGISTRATION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{RELEASE_SLOT}
if redis.call('HGET', KEYS[1], 'hash') == ARGV[1] then
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[1]) else redis.call('DEL', KEYS[1]) end
end
redis.call('DEL', KEYS[3])
if ARGV[2] == '1' and redis.call('GET', KEYS[4]) == ARGV[3] then
  redis.call('DEL', KEYS[4])
  if tonumber(redis.call('GET', KEYS[5]) or '0') > 0 then redis.call('DECR', KEYS[5]) end
end
release_slot(KEYS[6], ARGV[3])
return 1
"#
    ))
});

/// The per-address counter of one route for the current minute (one key, no tag needed).
fn ip_key(route: &str, ip: &str) -> String {
    let minute = chrono::Utc::now().timestamp() / 60;
    format!("rl:{route}:{ip}:{minute}")
}

/// The keys about one email address. They share one hash tag, a digest of the address, so they
/// sit in one slot whatever characters the address holds (`{` and `}` are legal in a local
/// part), and no address appears in a Redis key.
/// How long one registration of an address keeps others of it out: longer than one takes.
pub const REGISTRATION_SLOT_MS: u64 = 5_000;

pub struct EmailKeys {
    /// Failures from every source in the hour.
    pub login_failures: String,
    /// The address locked for every source (set by the hour's 50th failure, 15 minutes).
    pub login_lock: String,
    /// When a password reset last cleared the address's locks, every source's included.
    pub login_cleared: String,
    /// Prefix of the per-(address, source) lockouts: `pair_lockout(ip)`.
    pair_prefix: String,
    /// Prefix of the link tokens' keys: `link_token(hash)`.
    token_prefix: String,
    pub code: String,
    /// The code a registration's replaced, kept until the registration is known to mail its own.
    code_replaced: String,
    pub cooldown: String,
    pub hourly: String,
    /// Wrong codes for the address in the failure window, across resends.
    pub code_failures: String,
    /// Held for a moment by the registration being processed for the address.
    pub registering: String,
}

impl EmailKeys {
    pub fn new(email: &str) -> Self {
        let digest = hex::encode(&sha2::Sha256::digest(email.as_bytes())[..16]);
        let tagged = |what: &str| format!("auth:{{{digest}}}:{what}");
        EmailKeys {
            login_failures: tagged("login:all"),
            login_lock: tagged("login:all:lock"),
            login_cleared: tagged("login:cleared"),
            pair_prefix: tagged("login:pair:"),
            token_prefix: tagged("vtoken:"),
            code: tagged("vcode"),
            code_replaced: tagged("vcode:replaced"),
            cooldown: tagged("resend:cooldown"),
            hourly: tagged("resend:hour"),
            code_failures: tagged("vcode:fails"),
            registering: tagged("register:lock"),
        }
    }

    /// The lockout of this address from one source (a digest of the address, not the address).
    pub fn pair_lockout(&self, ip: &str) -> String {
        format!("{}{}", self.pair_prefix, hex::encode(&sha2::Sha256::digest(ip.as_bytes())[..8]))
    }

    /// The key of the link token whose hash is `token_hash`.
    pub fn link_token(&self, token_hash: &str) -> String {
        format!("{}{}", self.token_prefix, token_hash.get(..32).unwrap_or(token_hash))
    }

    /// The keys a registration's first step and its undoing are given: slot, code, the code it
    /// replaced, the link token of `token_hash`, cooldown, hourly count.
    fn registration_keys(&self, token_hash: &str) -> [String; 6] {
        [
            self.registering.clone(),
            self.code.clone(),
            self.code_replaced.clone(),
            self.link_token(token_hash),
            self.cooldown.clone(),
            self.hourly.clone(),
        ]
    }

    /// The code key, failure count and link-token key of `purpose`.
    fn of(&self, purpose: Purpose, token_hash: &str) -> (String, String, String) {
        let token = self.link_token(token_hash);
        match purpose {
            Purpose::Verify => (self.code.clone(), self.code_failures.clone(), token),
            Purpose::Reset => (format!("{}:reset", self.code), format!("{}:reset", self.code_failures), format!("{token}:reset")),
        }
    }

    /// The keys each script is given, in order: what the one-slot test checks.
    pub fn script_keys(&self) -> [(&'static str, Vec<String>); 11] {
        let owned = |keys: &[&String]| keys.iter().map(|k| (*k).clone()).collect::<Vec<_>>();
        [
            (
                "login",
                vec![self.pair_lockout("203.0.113.9"), self.login_failures.clone(), self.login_lock.clone(), self.login_cleared.clone()],
            ),
            ("clear_lockouts", vec![self.login_failures.clone(), self.login_lock.clone(), self.login_cleared.clone()]),
            ("login_succeeded", vec![self.pair_lockout("203.0.113.9"), self.login_failures.clone()]),
            ("password_accepted", vec![self.pair_lockout("203.0.113.9"), self.login_failures.clone()]),
            ("verify", vec![self.code.clone(), self.code_failures.clone(), self.link_token("00ff")]),
            ("send_reservation", owned(&[&self.cooldown, &self.hourly])),
            ("store_code", vec![self.code.clone(), self.link_token("00ff"), self.registering.clone()]),
            ("restore_code", owned(&[&self.code])),
            ("give_slot_back", owned(&[&self.registering])),
            ("begin_registration", self.registration_keys("00ff")[..].to_vec()),
            ("abandon_registration", self.registration_keys("00ff")[..].to_vec()),
        ]
    }
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

/// Whether one more mail to an address fits its send limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailBudget {
    Reserved,
    Limited { retry_after_secs: u64 },
}

/// What a mailed code (and its link token) is for: each has its own codes, tokens and failure
/// budget, so a reset never spends a verification's tries or the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Verify,
    Reset,
}

/// A code (and link token) about to be mailed, hashed, for the user it was issued to.
#[derive(Clone, Copy)]
pub struct NewCode<'a> {
    pub purpose: Purpose,
    pub code_hash: &'a str,
    pub token_hash: &'a str,
    pub user_id: &'a str,
}

/// How a registration's first step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationStart {
    /// Another registration of the address holds its slot: this one changes nothing.
    Busy,
    /// The slot is this registration's and its code is stored, and its mail is as `mail` says.
    Started { mail: MailFit },
}

/// How a registration's mail fits the address's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailFit {
    /// It fits, and was counted: a taken address may be mailed about it.
    Within,
    /// A mail went to the address under a minute ago (a doubled submit's first, say).
    CoolingDown,
    /// The address's hour of mails is spent.
    HourSpent,
}

/// What undoing a registration's first step does with the mail it counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandon {
    /// Un-count it: nothing was sent. Safe whether or not the step ran, or counted anything (its
    /// answer may have been lost): only a cooldown the step started is undone.
    Uncount,
    /// Keep it counted: a mail went out, or the address's counters must read as if one had.
    KeepCount,
}

/// A code that matched and was consumed.
pub struct ConsumedCode {
    pub user_id: String,
    attempts: String,
    ttl_ms: i64,
    code_hash: String,
    code_key: String,
    /// The consumed link token's key, when it was a token.
    token_key: Option<String>,
}

/// What a verification presents: the mailed 6-digit code or the mailed link token (hashed; no
/// `Debug`, as a code's hash is as good as the code to whoever has the pepper).
#[derive(Clone, Copy)]
pub enum Proof<'a> {
    Code(&'a str),
    Token(&'a str),
}

impl std::fmt::Debug for ConsumedCode {
    // The hash of a 6-digit code is as good as the code to whoever has the pepper.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumedCode").field("user_id", &self.user_id).finish_non_exhaustive()
    }
}

pub struct Limits {
    pub ip_per_minute: u32,
}

impl Limits {
    /// The per-address limit of `route`. Every route takes it first, as its own step: it cannot
    /// share a script with the per-email keys, which live in another slot.
    pub async fn check_ip(&self, redis: &ConnectionManager, route: &str, ip: &str) -> Result<(), ApiError> {
        let mut conn = redis.clone();
        let (tag, value): Outcome = IP_LIMIT.key(ip_key(route, ip)).arg(self.ip_per_minute).invoke_async(&mut conn).await?;
        match tag.as_str() {
            "ok" => Ok(()),
            _ => Err(ip_limited(&value)),
        }
    }

    /// Takes a login ticket for `email`: refused with 429 while the account is locked, or while
    /// the source is over its rate limit. The two are keys of different hash slots, so two
    /// scripts, sent together (one round trip); a ticket taken by a request the rate limit then
    /// refuses is given back, so a refused request counts as no guess.
    pub async fn login_attempt(&self, redis: &ConnectionManager, ip: &str, email: &str) -> Result<(), ApiError> {
        let (rate, ticket) = tokio::join!(self.check_ip(redis, "login", ip), self.login_ticket(redis, ip, email));
        if let Err(limited) = rate {
            if ticket.is_ok() {
                if let Err(e) = self.password_accepted(redis, ip, email).await {
                    tracing::warn!(code = e.code(), "a rate-limited login's ticket was not given back");
                }
            }
            return Err(limited);
        }
        ticket
    }

    async fn login_ticket(&self, redis: &ConnectionManager, ip: &str, email: &str) -> Result<(), ApiError> {
        let mut conn = redis.clone();
        let keys = EmailKeys::new(email);
        let (tag, value): Outcome = LOGIN
            .key(keys.pair_lockout(ip))
            .key(&keys.login_failures)
            .key(&keys.login_lock)
            .key(&keys.login_cleared)
            .arg(chrono::Utc::now().timestamp())
            .arg(LOCKOUT_THRESHOLD)
            .arg(LOCKOUT_BASE_SECS)
            .arg(LOCKOUT_MAX_SECS)
            .arg(EMAIL_FAILURES_PER_HOUR)
            .arg(EMAIL_LOCK_SECS)
            .invoke_async(&mut conn)
            .await?;
        match tag.as_str() {
            "ok" => Ok(()),
            _ => Err(ApiError::TooManyRequests {
                code: "account_locked",
                detail: "too many failed sign-in attempts; try again later",
                retry_after_secs: as_u64(&value),
            }),
        }
    }

    /// A password reset: every lock of the address goes, the per-address one and every source's
    /// (pairs are dropped as they are next met: their keys cannot be listed in a cluster).
    pub async fn clear_lockouts(&self, redis: &ConnectionManager, email: &str) -> Result<(), ApiError> {
        let keys = EmailKeys::new(email);
        let mut conn = redis.clone();
        CLEAR_LOCKOUTS
            .key(&keys.login_failures)
            .key(&keys.login_lock)
            .key(&keys.login_cleared)
            .arg(chrono::Utc::now().timestamp())
            .invoke_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    /// A sign-in from `ip` completed: that pair's failures are cleared and the `tickets` it took of
    /// the address's hourly count are given back (what other sources tried stays counted). With
    /// two-factor on, a right password alone clears nothing: its ticket stays a failure until the
    /// second factor is right, so a stolen password buys no fresh guesses at the code.
    pub async fn login_succeeded(&self, redis: &ConnectionManager, ip: &str, email: &str, tickets: u32) -> Result<(), ApiError> {
        let mut conn = redis.clone();
        let keys = EmailKeys::new(email);
        LOGIN_SUCCEEDED.key(keys.pair_lockout(ip)).key(&keys.login_failures).arg(tickets).invoke_async::<i64>(&mut conn).await?;
        Ok(())
    }

    /// A right password outside a sign-in: its own ticket comes back, and nothing else is cleared,
    /// so someone holding the password cannot wipe the failures of guesses at the second factor.
    pub async fn password_accepted(&self, redis: &ConnectionManager, ip: &str, email: &str) -> Result<(), ApiError> {
        let mut conn = redis.clone();
        let keys = EmailKeys::new(email);
        PASSWORD_ACCEPTED.key(keys.pair_lockout(ip)).key(&keys.login_failures).invoke_async::<i64>(&mut conn).await?;
        Ok(())
    }

    /// Consumes the pending code (or, with `Proof::Token`, the link token) if it matches: the
    /// user id it was issued for, and what `restore_code` needs to put it back should the write
    /// it was consumed for not happen.
    pub async fn consume_code(
        &self,
        redis: &ConnectionManager,
        ip: &str,
        email: &str,
        purpose: Purpose,
        proof: Proof<'_>,
    ) -> Result<ConsumedCode, ApiError> {
        // The source's rate limit and the address's code are keys of different hash slots: two
        // scripts, sent together (one round trip). A code a rate-limited request got right is
        // put back, so the answer is the 429 alone; a wrong one stays counted against the code,
        // which only makes a flood burn it sooner.
        let route = if purpose == Purpose::Verify { "verify" } else { "reset" };
        let (rate, consumed) = tokio::join!(self.check_ip(redis, route, ip), self.compare_code(redis, email, purpose, proof));
        if let Err(limited) = rate {
            if let Ok(consumed) = &consumed {
                if let Err(e) = self.restore_code(redis, consumed).await {
                    tracing::warn!(code = e.code(), "a rate-limited request's code could not be put back");
                }
            }
            return Err(limited);
        }
        consumed
    }

    async fn compare_code(
        &self,
        redis: &ConnectionManager,
        email: &str,
        purpose: Purpose,
        proof: Proof<'_>,
    ) -> Result<ConsumedCode, ApiError> {
        let keys = EmailKeys::new(email);
        let (mode, presented, token_hash) = match proof {
            Proof::Code(hash) => ("code", hash, "-"),
            Proof::Token(hash) => ("token", "", hash),
        };
        let (code_key, failures_key, token_key) = keys.of(purpose, token_hash);
        let mut conn = redis.clone();
        let reply: Vec<redis::Value> = VERIFY
            .key(&code_key)
            .key(&failures_key)
            .key(&token_key)
            .arg(presented)
            .arg(mode)
            .arg(CODE_MAX_ATTEMPTS)
            .arg(CODE_FAILURES_PER_WINDOW)
            .arg(CODE_FAILURE_WINDOW_SECS)
            .invoke_async(&mut conn)
            .await?;
        let text = |i: usize| match reply.get(i) {
            Some(redis::Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
            Some(redis::Value::SimpleString(s)) => Some(s.clone()),
            Some(redis::Value::Int(i)) => Some(i.to_string()),
            _ => None,
        };
        match (text(0).as_deref(), text(1)) {
            (Some("ok"), Some(user_id)) => Ok(ConsumedCode {
                user_id,
                attempts: text(2).unwrap_or_else(|| "0".into()),
                ttl_ms: text(3).and_then(|t| t.parse().ok()).unwrap_or(0),
                code_hash: text(4).unwrap_or_default(),
                code_key,
                token_key: (mode == "token").then_some(token_key),
            }),
            _ => Err(ApiError::BadRequest { code: "invalid_code", detail: "the verification code is wrong or has expired".into() }),
        }
    }

    /// Puts a consumed code back as it was (same expiry, same attempts), unless a newer one exists.
    pub async fn restore_code(&self, redis: &ConnectionManager, consumed: &ConsumedCode) -> Result<(), ApiError> {
        let mut conn = redis.clone();
        if let Some(token_key) = &consumed.token_key {
            if consumed.ttl_ms > 0 {
                let _: Option<String> = redis::cmd("SET")
                    .arg(token_key)
                    .arg(&consumed.user_id)
                    .arg("PX")
                    .arg(consumed.ttl_ms)
                    .arg("NX")
                    .query_async(&mut conn)
                    .await?;
            }
            return Ok(());
        }
        RESTORE_CODE
            .key(&consumed.code_key)
            .arg(&consumed.user_id)
            .arg(&consumed.attempts)
            .arg(consumed.ttl_ms)
            .arg(&consumed.code_hash)
            .invoke_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    /// Reserves one verification mail for `email` (60 s apart, 5 an hour).
    pub async fn reserve_send(&self, redis: &ConnectionManager, ip: &str, route: &str, email: &str) -> Result<(), ApiError> {
        self.check_ip(redis, route, ip).await?;
        match self.reserve_mail(redis, email).await? {
            MailBudget::Reserved => Ok(()),
            MailBudget::Limited { retry_after_secs } => Err(ApiError::too_many_requests(retry_after_secs)),
        }
    }

    /// The first step of a registration, one script: takes the address's slot for
    /// `REGISTRATION_SLOT_MS`, held by the new account's user id (`Busy` while another
    /// registration of the address holds it: a doubled submit, a parallel burst, which then
    /// changes nothing and mails nothing), stores the registration's verification code `new`
    /// before its account is written, and counts its mail if it fits the limits. A registration
    /// that then mails no code undoes it with `abandon_registration`.
    pub async fn begin_registration(
        &self,
        redis: &ConnectionManager,
        email: &str,
        new: &NewCode<'_>,
    ) -> Result<RegistrationStart, ApiError> {
        let keys = EmailKeys::new(email).registration_keys(new.token_hash);
        let mut conn = redis.clone();
        let mut script = BEGIN_REGISTRATION.prepare_invoke();
        for key in &keys {
            script.key(key);
        }
        let (tag, fit): (String, String) = script
            .arg(REGISTRATION_SLOT_MS)
            .arg(new.code_hash)
            .arg(new.user_id)
            .arg(CODE_TTL_SECS)
            .arg(RESEND_MAX_PER_HOUR)
            .arg(RESEND_COOLDOWN_SECS)
            .invoke_async(&mut conn)
            .await?;
        match tag.as_str() {
            "started" => {
                let mail = match fit.as_str() {
                    "within" => MailFit::Within,
                    "cooldown" => MailFit::CoolingDown,
                    "hourly" => MailFit::HourSpent,
                    other => return Err(ApiError::internal("registration's first step", format!("an unknown limit {other:?}"))),
                };
                Ok(RegistrationStart::Started { mail })
            }
            "busy" => Ok(RegistrationStart::Busy),
            other => Err(ApiError::internal("registration's first step", format!("an unknown reply {other:?}"))),
        }
    }

    /// Undoes `begin_registration` for a registration that mails no code (refused, failed, or the
    /// address taken): the code it replaced is back unless a newer one came meanwhile, the slot
    /// is given back if this registration still holds it, and as `abandon` says, the mail it
    /// counted is un-counted. Best effort, logged: the code, the slot and the cooldown expire by
    /// themselves.
    pub async fn abandon_registration(&self, redis: &ConnectionManager, email: &str, new: &NewCode<'_>, abandon: Abandon) {
        let [slot, rest @ ..] = EmailKeys::new(email).registration_keys(new.token_hash);
        let mut conn = redis.clone();
        let mut script = ABANDON_REGISTRATION.prepare_invoke();
        for key in rest.iter().chain([&slot]) {
            script.key(key);
        }
        let uncount = if abandon == Abandon::Uncount { "1" } else { "0" };
        let undone = script.arg(new.code_hash).arg(uncount).arg(new.user_id).invoke_async::<i64>(&mut conn).await;
        if let Err(e) = undone {
            tracing::warn!(error = %e, "a registration's first step was not undone; its code and slot expire by themselves");
        }
    }

    /// Takes the address's registration slot for `REGISTRATION_SLOT_MS`, for `owner` (the
    /// registration's new user id): false while another registration of the address holds it.
    pub async fn take_registration_slot(&self, redis: &ConnectionManager, email: &str, owner: &str) -> Result<bool, ApiError> {
        let mut conn = redis.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(EmailKeys::new(email).registering)
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(REGISTRATION_SLOT_MS)
            .query_async(&mut conn)
            .await?;
        Ok(taken.is_some())
    }

    /// Gives `owner`'s slot back once the registration is done, so a later one (not a racing
    /// one) goes ahead at once; a slot another registration took since stays its. Best effort:
    /// the slot expires by itself.
    pub async fn release_registration_slot(&self, redis: &ConnectionManager, email: &str, owner: &str) {
        let mut conn = redis.clone();
        let released = GIVE_SLOT_BACK.key(EmailKeys::new(email).registering).arg(owner).invoke_async::<i64>(&mut conn).await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "a registration slot was not released; it expires by itself");
        }
    }

    /// Reserves one mail of any kind to `email` against its send limits (60 s apart, 5 an hour):
    /// codes, reset mails and notices alike, so no address can be mail-bombed through any route.
    pub async fn reserve_mail(&self, redis: &ConnectionManager, email: &str) -> Result<MailBudget, ApiError> {
        self.reserve(redis, email, false).await
    }

    /// Counts a mail that is sent whatever the address's limits say: a security notice the
    /// owner's own act sends (two-factor on or off; a notice that someone could suppress by
    /// spending the limits first, a forgot request say, would warn nobody, and only a signed-in
    /// user can cause one).
    pub async fn count_mail_regardless(&self, redis: &ConnectionManager, email: &str) -> Result<(), ApiError> {
        self.reserve(redis, email, true).await.map(|_| ())
    }

    async fn reserve(&self, redis: &ConnectionManager, email: &str, always: bool) -> Result<MailBudget, ApiError> {
        let keys = EmailKeys::new(email);
        let mut conn = redis.clone();
        let (tag, retry): Outcome = SEND_RESERVATION
            .key(&keys.cooldown)
            .key(&keys.hourly)
            .arg(RESEND_MAX_PER_HOUR)
            .arg(RESEND_COOLDOWN_SECS)
            .arg(if always { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        Ok(match tag.as_str() {
            "ok" => MailBudget::Reserved,
            _ => MailBudget::Limited { retry_after_secs: as_u64(&retry).max(1) },
        })
    }

    /// Stores a pending code and its link token; `release_registration` also gives the
    /// address's registration slot back (a replacing registration's code, stored once its account
    /// is written), in the same step, so no later registration can slip in between the two.
    pub async fn store_code(
        &self,
        redis: &ConnectionManager,
        email: &str,
        new: &NewCode<'_>,
        release_registration: bool,
    ) -> Result<(), ApiError> {
        let NewCode { purpose, code_hash, token_hash, user_id } = *new;
        let keys = EmailKeys::new(email);
        let (code_key, _, token_key) = keys.of(purpose, token_hash);
        let mut conn = redis.clone();
        let mut script = STORE_CODE.key(&code_key);
        script.key(&token_key);
        if release_registration {
            script.key(&keys.registering);
        }
        script.arg(code_hash).arg(user_id).arg(CODE_TTL_SECS).invoke_async::<i64>(&mut conn).await?;
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

//! Every DynamoDB key of the single table, built here and nowhere else.
//!
//! | item                | PK                      | SK                 | GSI1 (active bots)        |
//! |---------------------|-------------------------|--------------------|---------------------------|
//! | login by email      | `EMAIL#<email>`         | `EMAIL`            |                           |
//! | user profile        | `USER#<id>`             | `PROFILE`          |                           |
//! | bot                 | `USER#<id>`             | `BOT`              | `ACTIVE_BOTS#<shard>` / `<id>` while running or stopping |
//! | paper account       | `USER#<id>`             | `PAPER`            |                           |
//! | paper position      | `USER#<id>`             | `POS#<symbol>`     | `ACTIVE_BOTS#<shard>` / `<id>#POS#<symbol>` |
//! | paper resting order| `USER#<id>`             | `RESTING#<client oid>` | `ACTIVE_BOTS#<shard>` / `<id>#RESTING#<client oid>` |
//! | live position mirror| `USER#<id>`             | `LIVEPOS#<symbol>#<side>` | `ACTIVE_BOTS#<shard>` / `<id>#LIVEPOS#<symbol>#<side>` |
//! | exchange credential | `USER#<id>`             | `CREDENTIALS`      |                           |
//! | TOTP second factor  | `USER#<id>`             | `MFA#TOTP`         |                           |
//! | signal token (the user's current one) | `USER#<id>` | `SIGNAL_TOKEN` |                     |
//! | signal token lookup | `SIGNAL#<sha256>`       | `SIGNAL`           |                           |
//! | session (one per refresh family) | `SESSIONS#<id>` | `<family id>`   |                           |
//! | order               | `ORDERS#<id>`           | `ORDER#<client oid>` | GSI2 (open orders) `OPEN#<id>` / `<created ms>#<client oid>` until it is final |
//! | order, newest first | `ORDERS#<id>`           | `HIST#<created ms>#<client oid>` |             |
//! | order by symbol     | `ORDERS#<id>`           | `HISTSYM#<symbol>#<created ms>#<client oid>` |  |
//! | live order by its Bitget id | `ORDERS#<id>`   | `ORDERID#<order id>` |                         |
//! | fill, newest first  | `FILLS#<id>`            | `FILL#<filled ms>#<fill id>` |                 |
//! | fill by symbol      | `FILLS#<id>`            | `SYMFILL#<symbol>#<filled ms>#<fill id>` |     |
//! | Bitget fills synced up to | `FILLS#<id>`      | `SYNC`             |                           |
//! | idempotency record  | `IDEMPOTENCY#<id>`      | `<key>`            |                           |
//! | refresh token       | `REFRESH#<sha256>`      | `REFRESH`          |                           |
//! | refresh family      | `FAMILY#<family id>`    | `FAMILY`           |                           |
//! | mark price (local)  | `MARKS`                 | `<symbol>`         |                           |
//! | operator flags      | `CONFIG`                | `KILL_SWITCH`      |                           |
//! | guardian cursor     | `CONFIG`                | `SWEEP_CURSOR#<shard>` |                       |
//!
//! Everything a trading request needs about one user lives in the `USER#<id>` partition, so one
//! strongly consistent Query reads it in a single round trip.
//!
//! The guardian's index is split into `GUARDIAN_SHARDS` partitions by a hash of the user id: one
//! scheduled invocation per shard, so no run holds more than 1/N of the bots, and no index
//! partition takes more than 1/N of the writes.

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

pub const PK: &str = "PK";
pub const SK: &str = "SK";
pub const GSI1_NAME: &str = "ActiveBots";
pub const GSI1_PK: &str = "GSI1PK";
pub const GSI1_SK: &str = "GSI1SK";
pub const TTL_ATTRIBUTE: &str = "expires_at";
pub const ACTIVE_BOTS: &str = "ACTIVE_BOTS";
/// Shards of the guardian's index; `template.yaml` schedules one invocation per shard (a test
/// checks). Never change it without re-indexing: the shard is the user id's hash modulo this
/// number, so a new count would put a user's next position in another partition than their bot.
pub const GUARDIAN_SHARDS: u16 = 8;

/// The shard of a user's bot and positions: FNV-1a of the user id, stable across releases.
pub fn guardian_shard(user_id: &str) -> u16 {
    let hash = user_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (hash % u64::from(GUARDIAN_SHARDS)) as u16
}

/// The index partition of one guardian shard.
pub fn active_bots_partition(shard: u16) -> String {
    format!("{ACTIVE_BOTS}#{shard:02}")
}

/// The index partitions one guardian shard sweeps, each with its cursor item. Items written
/// before the index was sharded (`ACTIVE_BOTS`, cursor `SWEEP_CURSOR`) are swept with shard 0
/// until none is left: the next write of a bot or position moves it into its shard.
pub fn guardian_partitions(shard: u16) -> Vec<(String, Key)> {
    let mut partitions = vec![(active_bots_partition(shard), sweep_cursor(shard))];
    if shard == 0 {
        partitions.push((ACTIVE_BOTS.to_owned(), key("CONFIG".to_owned(), "SWEEP_CURSOR")));
    }
    partitions
}

fn active_index(user_id: &str, sort_key: String) -> [(String, AttributeValue); 2] {
    [
        (GSI1_PK.to_owned(), AttributeValue::S(active_bots_partition(guardian_shard(user_id)))),
        (GSI1_SK.to_owned(), AttributeValue::S(sort_key)),
    ]
}

pub type Key = HashMap<String, AttributeValue>;

fn key(pk: String, sk: impl Into<String>) -> Key {
    HashMap::from([(PK.to_owned(), AttributeValue::S(pk)), (SK.to_owned(), AttributeValue::S(sk.into()))])
}

pub fn user_partition(user_id: &str) -> String {
    format!("USER#{user_id}")
}
pub fn email(email: &str) -> Key {
    key(format!("EMAIL#{email}"), "EMAIL")
}
pub fn profile(user_id: &str) -> Key {
    key(user_partition(user_id), "PROFILE")
}
pub fn bot(user_id: &str) -> Key {
    key(user_partition(user_id), "BOT")
}
pub fn paper_account(user_id: &str) -> Key {
    key(user_partition(user_id), "PAPER")
}
pub const POSITION_PREFIX: &str = "POS#";
pub fn paper_position(user_id: &str, symbol: &str) -> Key {
    key(user_partition(user_id), format!("{POSITION_PREFIX}{symbol}"))
}
pub const RESTING_PREFIX: &str = "RESTING#";
/// A paper limit order resting on the simulated book, until it fills or is canceled.
pub fn resting_order(user_id: &str, client_oid: &str) -> Key {
    key(user_partition(user_id), format!("{RESTING_PREFIX}{client_oid}"))
}
/// Resting paper orders sit in the guardian's index with their bot, which fills them.
pub fn active_resting_index(user_id: &str, client_oid: &str) -> [(String, AttributeValue); 2] {
    active_index(user_id, format!("{user_id}#RESTING#{client_oid}"))
}
pub const LIVE_POSITION_PREFIX: &str = "LIVEPOS#";
pub fn live_position(user_id: &str, symbol: &str, side: &str) -> Key {
    key(user_partition(user_id), format!("{LIVE_POSITION_PREFIX}{symbol}#{side}"))
}
pub fn active_live_position_index(user_id: &str, symbol: &str, side: &str) -> [(String, AttributeValue); 2] {
    active_index(user_id, format!("{user_id}#LIVEPOS#{symbol}#{side}"))
}
pub fn sweep_cursor(shard: u16) -> Key {
    key("CONFIG".to_owned(), format!("SWEEP_CURSOR#{shard:02}"))
}
pub fn credentials(user_id: &str) -> Key {
    key(user_partition(user_id), "CREDENTIALS")
}
/// Which signal token is a user's (its hash): the one to delete when it rotates.
pub fn signal_pointer(user_id: &str) -> Key {
    key(user_partition(user_id), SIGNAL_POINTER)
}
pub const SIGNAL_POINTER: &str = "SIGNAL_TOKEN";
/// Whose a signal token is, by its hash: what `POST /api/v1/signals/{token}` reads.
pub fn signal_token(token_hash_hex: &str) -> Key {
    key(format!("SIGNAL#{token_hash_hex}"), "SIGNAL")
}
/// A user's TOTP secret (pending or active), its last accepted step and its recovery codes.
pub fn totp(user_id: &str) -> Key {
    key(user_partition(user_id), "MFA#TOTP")
}
/// The partition of a user's sessions: listed by one Query, apart from the partition every
/// trading request reads.
pub fn sessions_partition(user_id: &str) -> String {
    format!("SESSIONS#{user_id}")
}
pub fn session(user_id: &str, family_id: &str) -> Key {
    key(sessions_partition(user_id), family_id)
}
pub fn idempotency_partition(user_id: &str) -> String {
    format!("IDEMPOTENCY#{user_id}")
}
/// The partition of a user's order history.
pub fn order_partition(user_id: &str) -> String {
    format!("ORDERS#{user_id}")
}
pub fn order(user_id: &str, client_oid: &str) -> Key {
    key(order_partition(user_id), format!("ORDER#{client_oid}"))
}
/// Which client order id a live order's exchange id (Bitget's `orderId`) is, for the user.
/// In the order history's partition, so it ends with the history (deletion's expiry included).
pub fn order_id_pointer(user_id: &str, exchange_order_id: &str) -> Key {
    key(order_partition(user_id), format!("ORDERID#{exchange_order_id}"))
}
/// Times in history sort keys: unix ms, zero-padded so that text order is time order.
fn ms_key(ms: i64) -> String {
    format!("{:013}", ms.max(0))
}
/// The history pointers of an order (`HIST#…` newest first, `HISTSYM#<symbol>#…` per symbol):
/// written with it, never changed, so a page of history is one Query on them.
pub fn order_history(user_id: &str, symbol: Option<&str>, created_ms: i64, client_oid: &str) -> Key {
    key(order_partition(user_id), format!("{}{}#{client_oid}", order_history_prefix(symbol), ms_key(created_ms)))
}
/// The sort-key prefix of a user's order history, of every symbol or of one.
pub fn order_history_prefix(symbol: Option<&str>) -> String {
    match symbol {
        None => "HIST#".to_owned(),
        Some(symbol) => format!("HISTSYM#{symbol}#"),
    }
}
pub const OPEN_ORDERS_INDEX: &str = "OpenOrders";
pub const GSI2_PK: &str = "GSI2PK";
pub const GSI2_SK: &str = "GSI2SK";
pub fn open_orders_partition(user_id: &str) -> String {
    format!("OPEN#{user_id}")
}
/// The attributes that list an order among the user's open ones (newest first), while it is
/// not final: a final transition removes them.
pub fn open_order_index(user_id: &str, created_ms: i64, client_oid: &str) -> [(String, AttributeValue); 2] {
    [
        (GSI2_PK.to_owned(), AttributeValue::S(open_orders_partition(user_id))),
        (GSI2_SK.to_owned(), AttributeValue::S(format!("{}#{client_oid}", ms_key(created_ms)))),
    ]
}
/// The partition of a user's fills: immutable items, each written once.
pub fn fills_partition(user_id: &str) -> String {
    format!("FILLS#{user_id}")
}
/// A fill, under the user's fills (`FILL#…`) or their fills of one symbol (`SYMFILL#<symbol>#…`).
pub fn fill(user_id: &str, symbol: Option<&str>, filled_ms: i64, fill_id: &str) -> Key {
    key(fills_partition(user_id), format!("{}{}#{fill_id}", fill_prefix(symbol), ms_key(filled_ms)))
}
pub fn fill_prefix(symbol: Option<&str>) -> String {
    match symbol {
        None => "FILL#".to_owned(),
        Some(symbol) => format!("SYMFILL#{symbol}#"),
    }
}
/// The sort-key bounds of a time range of history under `prefix`, both ends included.
pub fn history_range(prefix: &str, from_ms: i64, to_ms: i64) -> (String, String) {
    (format!("{prefix}{}", ms_key(from_ms)), format!("{prefix}{}#~", ms_key(to_ms)))
}
/// Up to when the user's Bitget fills were copied into their fills.
pub fn fill_sync(user_id: &str) -> Key {
    key(fills_partition(user_id), "SYNC")
}
pub fn idempotency(user_id: &str, idempotency_key: &str) -> Key {
    key(idempotency_partition(user_id), idempotency_key)
}
pub fn refresh_token(token_hash_hex: &str) -> Key {
    key(format!("REFRESH#{token_hash_hex}"), "REFRESH")
}
pub fn refresh_family(family_id: &str) -> Key {
    key(format!("FAMILY#{family_id}"), "FAMILY")
}
/// The stored marks (the local stack's market data) share one small partition, so one Query
/// reads them all at once, before a request knows which symbols it needs.
pub const MARKS_PARTITION: &str = "MARKS";
pub fn mark_price(symbol: &str) -> Key {
    key(MARKS_PARTITION.to_owned(), symbol)
}
pub fn kill_switch() -> Key {
    key("CONFIG".to_owned(), "KILL_SWITCH")
}
/// The admin audit log: one partition, newest last (`<ms>#<request id>`). Operators act a few
/// times a day; one partition's thousand writes a second is far beyond that.
pub const AUDIT_PARTITION: &str = "AUDIT";
pub fn audit_entry(at_ms: i64, request_id: &str) -> Key {
    key(AUDIT_PARTITION.to_owned(), format!("{at_ms:013}#{request_id}"))
}

/// Every partition of the active-bots index, in the order the admin list walks them.
pub fn every_active_partition() -> Vec<String> {
    (0..GUARDIAN_SHARDS).flat_map(guardian_partitions).map(|(partition, _)| partition).collect()
}

/// A user's WebSocket connections (`CONNS#<user>`, `CONN#<id>`), apart from their `USER#`
/// partition so trading reads never page through them; and the id's pointer to its user.
pub fn connections_partition(user_id: &str) -> String {
    format!("CONNS#{user_id}")
}
pub fn connection(user_id: &str, connection_id: &str) -> Key {
    key(connections_partition(user_id), format!("CONN#{connection_id}"))
}
pub fn connection_pointer(connection_id: &str) -> Key {
    key(format!("WSCONN#{connection_id}"), "WSCONN")
}
/// A user's notification settings and linked Telegram chat.
pub fn notifications(user_id: &str) -> Key {
    key(user_partition(user_id), "NOTIFICATIONS")
}

/// What a stream record changed, as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangedItem {
    Profile,
    Bot,
    PaperPosition,
    LivePosition,
    Order,
}

/// The user and kind of a changed item, from its key; `None` for what no user sees.
pub fn changed_item(key: &HashMap<String, AttributeValue>) -> Option<(&str, ChangedItem)> {
    let pk = key.get(PK).and_then(|v| v.as_s().ok())?;
    if let Some(user_id) = pk.strip_prefix("USER#") {
        let kind = match user_item(key) {
            UserItem::Profile => ChangedItem::Profile,
            UserItem::Bot => ChangedItem::Bot,
            UserItem::PaperPosition => ChangedItem::PaperPosition,
            UserItem::LivePosition => ChangedItem::LivePosition,
            _ => return None,
        };
        return Some((user_id, kind));
    }
    let user_id = pk.strip_prefix("ORDERS#")?;
    sort_key(key).filter(|sk| sk.starts_with("ORDER#")).map(|_| (user_id, ChangedItem::Order))
}

pub fn health_probe() -> Key {
    key("HEALTH".to_owned(), "PROBE")
}

/// The sort-key kind of an item read from a user's partition.
pub fn sort_key(item: &HashMap<String, AttributeValue>) -> Option<&str> {
    item.get(SK).and_then(|v| v.as_s().ok()).map(String::as_str)
}

/// What an item of a user's partition is, from its sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserItem {
    Profile,
    Bot,
    Paper,
    Credentials,
    PaperPosition,
    LivePosition,
    RestingOrder,
    Other,
}

pub fn user_item(item: &HashMap<String, AttributeValue>) -> UserItem {
    match sort_key(item).unwrap_or("") {
        "PROFILE" => UserItem::Profile,
        "BOT" => UserItem::Bot,
        "PAPER" => UserItem::Paper,
        "CREDENTIALS" => UserItem::Credentials,
        sk if sk.starts_with(POSITION_PREFIX) => UserItem::PaperPosition,
        sk if sk.starts_with(LIVE_POSITION_PREFIX) => UserItem::LivePosition,
        sk if sk.starts_with(RESTING_PREFIX) => UserItem::RestingOrder,
        _ => UserItem::Other,
    }
}

/// The user an active-bots index item belongs to (its index sort key starts with the user id).
pub fn index_owner(item: &HashMap<String, AttributeValue>) -> Option<&str> {
    item.get(GSI1_SK).and_then(|v| v.as_s().ok()).and_then(|sk| sk.split('#').next())
}

/// The key attributes of an index item: where a sweep that stopped at it goes on.
pub fn index_position(item: &HashMap<String, AttributeValue>) -> HashMap<String, AttributeValue> {
    [PK, SK, GSI1_PK, GSI1_SK].iter().filter_map(|k| item.get(*k).map(|v| ((*k).to_owned(), v.clone()))).collect()
}

/// The GSI attributes that put a bot into the active-bots index.
pub fn active_bot_index(user_id: &str) -> [(String, AttributeValue); 2] {
    active_index(user_id, user_id.to_owned())
}

/// Open positions sit in the same index right after their bot (`<user>` < `<user>#POS#…`), so a
/// guardian page holds bots with their positions and costs no query per bot.
pub fn active_position_index(user_id: &str, symbol: &str) -> [(String, AttributeValue); 2] {
    active_index(user_id, format!("{user_id}#POS#{symbol}"))
}

/// Merges a key into an item about to be written.
pub fn with_key(mut item: HashMap<String, AttributeValue>, key: Key) -> HashMap<String, AttributeValue> {
    item.extend(key);
    item
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_spread_over_every_guardian_shard_and_keep_theirs() {
        let mut counts = [0u32; GUARDIAN_SHARDS as usize];
        for i in 0..8000 {
            counts[guardian_shard(&format!("user-{i}")) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
        // Stable across releases: a bot must stay in the shard its index items were written to.
        assert_eq!(guardian_shard("5d3c1a2e-0000-4000-8000-000000000000"), 1);
        assert_eq!(active_bots_partition(3), "ACTIVE_BOTS#03");
    }

    #[test]
    fn a_bot_and_its_positions_share_one_shard() {
        let user = "a1b2c3";
        let pk = |item: [(String, AttributeValue); 2]| item[0].1.clone();
        assert_eq!(pk(active_bot_index(user)), pk(active_position_index(user, "BTCUSDT")));
        assert_eq!(pk(active_bot_index(user)), pk(active_live_position_index(user, "BTCUSDT", "long")));
    }
}

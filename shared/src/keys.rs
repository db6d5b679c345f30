//! Every DynamoDB key of the single table, built here and nowhere else.
//!
//! | item                | PK                      | SK                 | GSI1 (active bots)        |
//! |---------------------|-------------------------|--------------------|---------------------------|
//! | login by email      | `EMAIL#<email>`         | `EMAIL`            |                           |
//! | user profile        | `USER#<id>`             | `PROFILE`          |                           |
//! | bot                 | `USER#<id>`             | `BOT`              | `ACTIVE_BOTS` / `<id>` while running or stopping |
//! | paper account       | `USER#<id>`             | `PAPER`            |                           |
//! | paper position      | `USER#<id>`             | `POS#<symbol>`     | `ACTIVE_BOTS` / `<id>#POS#<symbol>` |
//! | live position mirror| `USER#<id>`             | `LIVEPOS#<symbol>#<side>` | `ACTIVE_BOTS` / `<id>#LIVEPOS#<symbol>#<side>` |
//! | exchange credential | `USER#<id>`             | `CREDENTIALS`      |                           |
//! | order               | `ORDERS#<id>`           | `ORDER#<client oid>` |                         |
//! | idempotency record  | `IDEMPOTENCY#<id>`      | `<key>`            |                           |
//! | refresh token       | `REFRESH#<sha256>`      | `REFRESH`          |                           |
//! | refresh family      | `FAMILY#<family id>`    | `FAMILY`           |                           |
//! | mark price          | `MARK#<symbol>`         | `MARK`             |                           |
//! | operator flags      | `CONFIG`                | `KILL_SWITCH`      |                           |
//!
//! Everything a trading request needs about one user lives in the `USER#<id>` partition, so one
//! strongly consistent Query reads it in a single round trip.

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

pub const PK: &str = "PK";
pub const SK: &str = "SK";
pub const GSI1_NAME: &str = "ActiveBots";
pub const GSI1_PK: &str = "GSI1PK";
pub const GSI1_SK: &str = "GSI1SK";
pub const TTL_ATTRIBUTE: &str = "expires_at";
pub const ACTIVE_BOTS: &str = "ACTIVE_BOTS";

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
pub const LIVE_POSITION_PREFIX: &str = "LIVEPOS#";
pub fn live_position(user_id: &str, symbol: &str, side: &str) -> Key {
    key(user_partition(user_id), format!("{LIVE_POSITION_PREFIX}{symbol}#{side}"))
}
pub fn active_live_position_index(user_id: &str, symbol: &str, side: &str) -> [(String, AttributeValue); 2] {
    [
        (GSI1_PK.to_owned(), AttributeValue::S(ACTIVE_BOTS.to_owned())),
        (GSI1_SK.to_owned(), AttributeValue::S(format!("{user_id}#LIVEPOS#{symbol}#{side}"))),
    ]
}
pub fn sweep_cursor() -> Key {
    key("CONFIG".to_owned(), "SWEEP_CURSOR")
}
pub fn credentials(user_id: &str) -> Key {
    key(user_partition(user_id), "CREDENTIALS")
}
pub fn order(user_id: &str, client_oid: &str) -> Key {
    key(format!("ORDERS#{user_id}"), format!("ORDER#{client_oid}"))
}
pub fn idempotency(user_id: &str, idempotency_key: &str) -> Key {
    key(format!("IDEMPOTENCY#{user_id}"), idempotency_key)
}
pub fn refresh_token(token_hash_hex: &str) -> Key {
    key(format!("REFRESH#{token_hash_hex}"), "REFRESH")
}
pub fn refresh_family(family_id: &str) -> Key {
    key(format!("FAMILY#{family_id}"), "FAMILY")
}
pub fn mark_price(symbol: &str) -> Key {
    key(format!("MARK#{symbol}"), "MARK")
}
pub fn kill_switch() -> Key {
    key("CONFIG".to_owned(), "KILL_SWITCH")
}
pub fn health_probe() -> Key {
    key("HEALTH".to_owned(), "PROBE")
}

/// The sort-key kind of an item read from a user's partition.
pub fn sort_key(item: &HashMap<String, AttributeValue>) -> Option<&str> {
    item.get(SK).and_then(|v| v.as_s().ok()).map(String::as_str)
}

/// The GSI attributes that put a bot into the active-bots index.
pub fn active_bot_index(user_id: &str) -> [(String, AttributeValue); 2] {
    [(GSI1_PK.to_owned(), AttributeValue::S(ACTIVE_BOTS.to_owned())), (GSI1_SK.to_owned(), AttributeValue::S(user_id.to_owned()))]
}

/// Open positions sit in the same index right after their bot (`<user>` < `<user>#POS#…`), so a
/// guardian page holds bots with their positions and costs no query per bot.
pub fn active_position_index(user_id: &str, symbol: &str) -> [(String, AttributeValue); 2] {
    [
        (GSI1_PK.to_owned(), AttributeValue::S(ACTIVE_BOTS.to_owned())),
        (GSI1_SK.to_owned(), AttributeValue::S(format!("{user_id}#POS#{symbol}"))),
    ]
}

/// Merges a key into an item about to be written.
pub fn with_key(mut item: HashMap<String, AttributeValue>, key: Key) -> HashMap<String, AttributeValue> {
    item.extend(key);
    item
}

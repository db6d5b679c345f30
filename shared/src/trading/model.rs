//! Trading types shared by the routes, the exchanges and the guardian. Every amount is a
//! `rust_decimal::Decimal` and travels as a JSON string.

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};

/// Accepts a decimal as a JSON string or number, exactly: a number is read from its literal text
/// in the request body (a raw JSON value), never through a binary float.
pub fn decimal_input<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
    parse_decimal_raw(raw.get()).ok_or_else(|| serde::de::Error::custom("expected a decimal number or a string holding one"))
}

pub fn optional_decimal_input<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
    if raw.get().trim() == "null" {
        return Ok(None);
    }
    parse_decimal_raw(raw.get()).map(Some).ok_or_else(|| serde::de::Error::custom("expected a decimal number or a string holding one"))
}

/// A decimal from the literal JSON text of a value: a string holding one, or a number as written.
pub fn parse_decimal_raw(json: &str) -> Option<Decimal> {
    let json = json.trim();
    let text = if json.starts_with('"') { serde_json::from_str::<String>(json).ok()?.trim().to_owned() } else { json.to_owned() };
    if text.is_empty() || text.len() > 40 || !text.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) {
        return None;
    }
    match text.split_once(['e', 'E']) {
        None => Decimal::from_str_exact(&text).ok(),
        Some((mantissa, exponent)) => scaled_exactly(Decimal::from_str_exact(mantissa).ok()?, exponent.parse().ok()?),
    }
}

/// `mantissa × 10^exponent`, or None when a decimal cannot hold it exactly (never rounded).
fn scaled_exactly(mantissa: Decimal, exponent: i32) -> Option<Decimal> {
    if exponent >= 0 {
        // 10^29 and up fit an i128 but no decimal: refused, never a panic.
        let factor = Decimal::try_from_i128_with_scale(10i128.checked_pow(u32::try_from(exponent).ok()?)?, 0).ok()?;
        mantissa.checked_mul(factor)
    } else {
        let scale = mantissa.scale().checked_add(exponent.unsigned_abs())?;
        (scale <= 28).then(|| {
            let mut scaled = mantissa;
            scaled.set_scale(scale).ok();
            scaled
        })
    }
}

/// How a position's margin is held on the exchange. Isolated by default: a position can lose at
/// most its own margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MarginMode {
    #[default]
    Isolated,
    Crossed,
}

impl MarginMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MarginMode::Isolated => "isolated",
            MarginMode::Crossed => "crossed",
        }
    }
}

/// A whole number as JSON Schema sees one: `5` or `5.0` (a number whose fraction is zero).
/// Read from the number's literal text, exactly: `5.0000000000000001` is not 5.
pub fn whole_number_input<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
    whole_from_raw(raw.get()).ok_or_else(|| serde::de::Error::custom("expected a whole number"))
}

fn whole_from_raw(json: &str) -> Option<u32> {
    let number = Some(json.trim()).filter(|t| !t.starts_with('"')).and_then(parse_decimal_raw);
    number.filter(|n| n.fract().is_zero() && !n.is_sign_negative()).and_then(|n| u32::try_from(n).ok())
}

pub fn optional_whole_number_input<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
    if raw.get().trim() == "null" {
        return Ok(None);
    }
    whole_from_raw(raw.get()).map(Some).ok_or_else(|| serde::de::Error::custom("expected a whole number"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderType {
    Market,
    Limit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum PositionSide {
    Long,
    Short,
}

impl PositionSide {
    /// +1 for long, -1 for short: PnL = (exit - entry) × size × direction.
    pub fn direction(self) -> Decimal {
        match self {
            PositionSide::Long => Decimal::ONE,
            PositionSide::Short => Decimal::NEGATIVE_ONE,
        }
    }
    /// The order side that closes this position.
    pub fn closing_side(self) -> Side {
        match self {
            PositionSide::Long => Side::Sell,
            PositionSide::Short => Side::Buy,
        }
    }
}

impl Side {
    pub fn opens(self) -> PositionSide {
        match self {
            Side::Buy => PositionSide::Long,
            Side::Sell => PositionSide::Short,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Recorded, not yet confirmed by the exchange.
    Pending,
    /// Resting on the book.
    Open,
    Filled,
    Canceled,
    Rejected,
}

/// What we ask an exchange to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrderIntent {
    pub symbol: String,
    pub side: Side,
    #[serde(rename = "type")]
    pub order_type: OrderType,
    pub size: Decimal,
    pub price: Option<Decimal>,
    pub reduce_only: bool,
    pub client_order_id: String,
    /// Leverage the position is opened with (the bot's setting).
    pub leverage: u32,
    /// Why it is sent: `manual`, `signal`, `strategy`, or a close's reason (`stop_loss`,
    /// `bot_stop`, …). It travels with the order into its record and its fills.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What an exchange says happened to an order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrderFill {
    pub order_id: String,
    pub status: OrderStatus,
    pub filled_size: Decimal,
    pub avg_price: Option<Decimal>,
    #[serde(default)]
    pub fee: Decimal,
    #[serde(default)]
    pub realized_pnl: Decimal,
}

impl OrderFill {
    /// What an order the exchange refused, or that was never sent, ends as.
    /// Settled as rejected before it ever reached the exchange (no exchange order id).
    pub fn never_placed(&self) -> bool {
        self.status == OrderStatus::Rejected && self.order_id.is_empty()
    }

    pub fn rejected() -> OrderFill {
        OrderFill {
            order_id: String::new(),
            status: OrderStatus::Rejected,
            filled_size: Decimal::ZERO,
            avg_price: None,
            fee: Decimal::ZERO,
            realized_pnl: Decimal::ZERO,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Position {
    pub symbol: String,
    pub side: PositionSide,
    pub size: Decimal,
    pub entry_price: Decimal,
    pub mark_price: Decimal,
    pub unrealized_pnl: Decimal,
    /// Names this position from the moment it opened from flat until it is flat again: a later
    /// position of the same symbol and side is another instance, so its closes get other client
    /// order ids. Paper: the opening order's client id. Bitget: the position's creation time.
    #[serde(skip)]
    pub instance: String,
    /// What can be closed now: the size less what resting close orders lock (Bitget refuses a
    /// reduce-only order for more).
    #[serde(skip)]
    pub available: Decimal,
}

impl Position {
    pub fn notional(&self) -> Decimal {
        self.size * self.mark_price
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccountView {
    pub exchange: ExchangeKind,
    pub equity: Decimal,
    pub available: Decimal,
    pub unrealized_pnl: Decimal,
    pub positions: Vec<Position>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    Paper,
    Bitget,
}

/// An order resting on the exchange (not filled, not canceled).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenOrder {
    pub order_id: String,
    pub client_order_id: String,
    pub symbol: String,
    /// A close (reduce-only, or a hedge-mode close): it locks position size while it rests.
    pub reduce_only: bool,
    /// The side it trades in the market (a hedge-mode close of a long sells).
    pub side: Side,
    pub size: Decimal,
    pub price: Option<Decimal>,
}

/// What a cancel request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    Canceled,
    /// It had filled or been canceled already: nothing is resting any more.
    NotOpen,
}

/// A deterministic client order id: the same inputs always give the same id, so a retried request
/// can never become a second order.
pub fn client_order_id(parts: &[&str]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    format!("tb{}", &hex::encode(hasher.finalize())[..30])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Probe {
        #[serde(deserialize_with = "decimal_input")]
        v: Decimal,
    }

    #[test]
    fn a_whole_number_may_carry_a_zero_fraction_but_nothing_else() {
        #[derive(Deserialize)]
        struct W {
            #[serde(deserialize_with = "super::whole_number_input")]
            n: u32,
        }
        let n = |json: &str| serde_json::from_str::<W>(json).map(|w| w.n).ok();
        assert_eq!(n(r#"{"n": 67}"#), Some(67));
        assert_eq!(n(r#"{"n": 67.0}"#), Some(67));
        assert_eq!(n(r#"{"n": 67.5}"#), None);
        assert_eq!(n(r#"{"n": -1}"#), None);
        assert_eq!(n(r#"{"n": 1e20}"#), None);
        assert_eq!(n(r#"{"n": "67"}"#), None);
        assert_eq!(n(r#"{"n": 5.0000000000000001}"#), None, "no binary float rounds a fraction away");
        assert_eq!(n(r#"{"n": 5e0}"#), Some(5));
    }

    #[test]
    fn scientific_notation_is_read_exactly_or_refused_never_rounded() {
        let from = |json: &str| serde_json::from_str::<Probe>(json).map(|p| p.v).ok();
        assert_eq!(from(r#"{"v":1.5e-3}"#).map(|d| d.to_string()), Some("0.0015".into()));
        assert_eq!(from(r#"{"v":"2E2"}"#).map(|d| d.normalize().to_string()), Some("200".into()));
        assert_eq!(from(r#"{"v":1.000000000000000000000000000001e0}"#), None, "more digits than a decimal holds");
        assert_eq!(from(r#"{"v":1e-29}"#), None);
        assert_eq!(from(r#"{"v":1e40}"#), None);
        assert_eq!(from(r#"{"v":3.402823466e+38}"#), None, "beyond a decimal yet within an i128: refused, not a panic");
        assert_eq!(from(r#"{"v":1e29}"#), None);
    }

    #[test]
    fn decimals_are_read_exactly_from_strings_and_numbers() {
        let from = |json: &str| serde_json::from_str::<Probe>(json).map(|p| p.v);
        assert_eq!(from(r#"{"v":"0.1"}"#).unwrap().to_string(), "0.1");
        assert_eq!(from(r#"{"v":0.1}"#).unwrap().to_string(), "0.1");
        assert_eq!(from(r#"{"v":65000.5}"#).unwrap().to_string(), "65000.5");
        assert_eq!(from(r#"{"v":"1e-3"}"#).unwrap().to_string(), "0.001");
        assert!(from(r#"{"v":"abc"}"#).is_err());
        assert!(from(r#"{"v":true}"#).is_err());
        assert!(from(r#"{"v":"NaN"}"#).is_err());
    }

    #[test]
    fn client_order_ids_are_deterministic_and_distinct() {
        let a = client_order_id(&["u1", "key-1"]);
        assert_eq!(a, client_order_id(&["u1", "key-1"]));
        assert_ne!(a, client_order_id(&["u1", "key-2"]));
        assert_ne!(client_order_id(&["u1k", "ey"]), client_order_id(&["u1", "key"]));
        assert!(a.len() <= 50);
    }
}

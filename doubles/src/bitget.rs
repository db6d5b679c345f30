//! A double of Bitget's v2 USDT-M futures API that enforces what the real one enforces, for every
//! endpoint the project calls:
//!
//! - every private call's HMAC signature, its 30 s timestamp window, the passphrase and the demo
//!   header (`paptrading: 1` for demo keys, never for live ones);
//! - rate limits per key and endpoint (5/s for all-position and the set-* calls, 10/s for the
//!   others) and 20/s for the public market endpoints, answered 429 with code `429`;
//! - `posMode` only on the single-account endpoint (`GET /api/v2/mix/account/account`), never on
//!   the account list;
//! - leverage and margin mode per symbol (`set-leverage`, `set-margin-mode`), the position mode
//!   per account (`set-position-mode`), each refused while it would change an open position;
//! - size and price precision, the minimum size and the minimum notional of each contract (reduce
//!   and close orders are exempt from the notional), a symbol that is not `normal`, the one-sided
//!   price band of limit orders, all with Bitget's error codes;
//! - a duplicate `clientOid` refused with code `40786`;
//! - limit orders that rest (state `live`) until the mark crosses them and fill at their price with
//!   the maker fee; `cancel-order` cancels them; `orders-pending` lists them;
//! - every fill in the fill history (`order/fills`): 100 a page at most, newest first, paged by
//!   `idLessThan`, within a `startTime`..`endTime` span of at most a week; ended orders in the
//!   order history (`orders-history`), paged the same way;
//! - candles (`market/candles`, up to 1,000 a call, and `market/history-candles`, up to 200) from
//!   a series loaded per symbol (`load_candles`, or `POST /double/candles?symbol=…` with the CSV
//!   `make candles` sends) and extended by ticks (`tick`, `POST /double/tick`, what `make price`
//!   sends), bucketed into the asked granularity, the newest last and the forming one included;
//! - scripted faults: a timeout, an accept-then-timeout, 429, 5xx, or any business code.
//!
//! `make test` runs ccxt's own bitget client against this double, so its shapes are vouched for by
//! a client nobody here wrote.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub enum Fault {
    /// Answers only after the client gave up, having done nothing.
    Timeout,
    /// Does the work (records the order), then answers after the client gave up.
    AcceptThenTimeout,
    TooManyRequests,
    ServerError,
    /// A business error code, e.g. "40774" or "43012".
    Code(&'static str),
    /// A business error code with its message.
    Refuse(&'static str, &'static str),
    /// A marketable order fills only this much (a thin book); the rest is canceled, as Bitget
    /// reports a market order it could not fill whole.
    FillPart(&'static str),
    /// Holds the request until the test releases it (`Notify::notify_one`), then answers it as
    /// usual: a slow exchange, for interleaving a second request in between.
    Hold(Arc<tokio::sync::Notify>),
}

#[derive(Debug, Clone)]
pub struct Key {
    pub secret: String,
    pub passphrase: String,
    pub demo: bool,
}

/// One contract of `GET /api/v2/mix/market/contracts`, parsed for the rules it sets.
#[derive(Debug, Clone)]
pub struct Contract {
    pub raw: Value,
    pub status: String,
    pub min_size: Decimal,
    pub size_step: Decimal,
    pub price_tick: Decimal,
    pub min_notional: Decimal,
    pub min_lever: u32,
    pub max_lever: u32,
    pub maker_fee: Decimal,
    pub taker_fee: Decimal,
    pub buy_limit_ratio: Decimal,
    pub sell_limit_ratio: Decimal,
}

impl Contract {
    fn parse(raw: Value) -> Contract {
        let d = |k: &str| raw[k].as_str().and_then(|s| Decimal::from_str(s).ok()).unwrap_or_default();
        let places = raw["pricePlace"].as_str().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
        Contract {
            status: raw["symbolStatus"].as_str().unwrap_or("normal").to_owned(),
            min_size: d("minTradeNum"),
            size_step: d("sizeMultiplier"),
            price_tick: d("priceEndStep") * Decimal::new(1, places),
            min_notional: d("minTradeUSDT"),
            min_lever: d("minLever").try_into().unwrap_or(1),
            max_lever: d("maxLever").try_into().unwrap_or(125),
            maker_fee: d("makerFeeRate"),
            taker_fee: d("takerFeeRate"),
            buy_limit_ratio: d("buyLimitPriceRatio"),
            sell_limit_ratio: d("sellLimitPriceRatio"),
            raw,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Position {
    pub size: Decimal,
    pub entry: Decimal,
    pub realized: Decimal,
    pub fees: Decimal,
    /// When it opened from flat (`cTime`); a position that went flat and reopened is a new one.
    pub opened_ms: i64,
}

impl Position {
    fn opened_at(price: Decimal) -> Position {
        Position { size: Decimal::ZERO, entry: price, realized: Decimal::ZERO, fees: Decimal::ZERO, opened_ms: next_creation_ms() }
    }
}

/// Creation times strictly increase, as two positions opened within one millisecond still differ.
fn next_creation_ms() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = now_ms();
    let previous = LAST.fetch_max(now, Ordering::SeqCst);
    if previous >= now {
        LAST.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        now
    }
}

#[derive(Debug, Clone)]
pub struct Order {
    pub order_id: String,
    pub client_oid: String,
    pub symbol: String,
    pub side: String,
    /// Hedge mode only: `open` or `close`.
    pub trade_side: Option<String>,
    pub reduce_only: bool,
    /// Whether it reduces a position (a hedge close, or a one-way order against the position).
    pub closing: bool,
    pub order_type: String,
    pub price: Option<Decimal>,
    pub size: Decimal,
    pub filled: Decimal,
    pub price_avg: Option<Decimal>,
    pub fee: Decimal,
    pub profits: Decimal,
    /// `live`, `filled` or `canceled`.
    pub state: String,
    pub margin_mode: String,
    pub leverage: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl Order {
    fn view(&self, pos_mode: &str) -> Value {
        let opt = |d: Option<Decimal>| d.map(|d| d.normalize().to_string()).unwrap_or_default();
        json!({
            "symbol": self.symbol,
            "size": self.size.normalize().to_string(),
            "orderId": self.order_id,
            "clientOid": self.client_oid,
            "baseVolume": self.filled.normalize().to_string(),
            "fee": (-self.fee).normalize().to_string(),
            "price": opt(self.price),
            "priceAvg": opt(self.price_avg),
            "state": self.state,
            "side": self.side,
            "force": "gtc",
            "totalProfits": self.profits.normalize().to_string(),
            "posSide": self.hold_side(),
            "marginCoin": "USDT",
            "quoteVolume": (self.filled * self.price_avg.unwrap_or_default()).normalize().to_string(),
            "leverage": self.leverage.to_string(),
            "marginMode": self.margin_mode,
            "reduceOnly": if self.reduce_only || self.trade_side.as_deref() == Some("close") { "YES" } else { "NO" },
            "enterPointSource": "API",
            "tradeSide": self.trade_side.clone().unwrap_or_else(|| if self.reduce_only { "close".into() } else { "open".into() }),
            "posMode": pos_mode,
            "orderType": self.order_type,
            "orderSource": format!("{}_order", self.order_type),
            "presetStopSurplusPrice": "",
            "presetStopLossPrice": "",
            "cTime": self.created_ms.to_string(),
            "uTime": self.updated_ms.to_string(),
        })
    }

    /// The position the order moves: in hedge mode the side names it whether the order opens or
    /// closes (closing a long is `side=buy, tradeSide=close`); one-way orders move the net one.
    fn hold_side(&self) -> &'static str {
        match (self.trade_side.as_deref(), self.side.as_str()) {
            (Some(_), "buy") => "long",
            (Some(_), _) => "short",
            (None, _) => "net",
        }
    }

    /// Whether the order buys or sells in the market: a hedge-mode close trades against its side.
    fn economic_side(&self) -> &'static str {
        match (self.trade_side.as_deref(), self.side.as_str()) {
            (Some("close"), "buy") => "sell",
            (Some("close"), _) => "buy",
            (_, "buy") => "buy",
            _ => "sell",
        }
    }
}

pub struct FakeState {
    pub keys: HashMap<String, Key>,
    pub pos_mode: String,
    pub marks: HashMap<String, Decimal>,
    pub contracts: BTreeMap<String, Contract>,
    /// (symbol, "long" | "short") → the position.
    pub positions: HashMap<(String, String), Position>,
    /// By client order id.
    pub orders: HashMap<String, Order>,
    pub leverage: HashMap<String, u32>,
    pub margin_mode: HashMap<String, String>,
    /// Wallet balance: deposits + realized profit − fees.
    pub balance: Decimal,
    pub faults: VecDeque<(String, Fault)>,
    pub calls: HashMap<String, u32>,
    pub rejected_signatures: u32,
    rate_windows: HashMap<(String, String), VecDeque<Instant>>,
    next_order_id: u64,
    /// Set by `Fault::FillPart` for the one request it scripts.
    fill_limit: Option<Decimal>,
    /// Per symbol, the loaded candle series (open time in ms → candle), at its own spacing.
    pub candles: HashMap<String, BTreeMap<i64, Candle>>,
    /// Every fill, oldest first (`GET /api/v2/mix/order/fills`).
    pub trades: Vec<Trade>,
}

/// One fill of an order, as the fill history reports it.
#[derive(Debug, Clone)]
pub struct Trade {
    pub trade_id: u64,
    pub order_id: String,
    pub symbol: String,
    pub side: String,
    /// `open`/`close` in hedge mode, `buy_single`/`sell_single` in one-way mode.
    pub trade_side: String,
    pub pos_mode: String,
    pub price: Decimal,
    pub size: Decimal,
    pub fee: Decimal,
    pub profit: Decimal,
    pub maker: bool,
    pub created_ms: i64,
}

impl Trade {
    fn view(&self) -> Value {
        json!({
            "tradeId": self.trade_id.to_string(),
            "symbol": self.symbol,
            "orderId": self.order_id,
            "price": self.price.normalize().to_string(),
            "baseVolume": self.size.normalize().to_string(),
            "feeDetail": [{"deduction": "no", "feeCoin": "USDT", "totalDeductionFee": null, "totalFee": (-self.fee).normalize().to_string()}],
            "side": self.side,
            "quoteVolume": (self.size * self.price).normalize().to_string(),
            "profit": self.profit.normalize().to_string(),
            "enterPointSource": "API",
            "tradeSide": self.trade_side,
            "posMode": self.pos_mode,
            "tradeScope": if self.maker { "maker" } else { "taker" },
            "cTime": self.created_ms.to_string(),
        })
    }
}

/// The longest span one fills request may ask for.
pub const FILLS_SPAN_MS: i64 = 7 * 86_400_000;

/// One candle of a loaded series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candle {
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
}

/// Bitget's USDT-M candle granularities and their length in ms (the UTC-aligned ones).
pub fn granularity_ms(granularity: &str) -> Option<i64> {
    const MINUTE: i64 = 60_000;
    Some(match granularity {
        "1m" => MINUTE,
        "3m" => 3 * MINUTE,
        "5m" => 5 * MINUTE,
        "15m" => 15 * MINUTE,
        "30m" => 30 * MINUTE,
        "1H" => 60 * MINUTE,
        "2H" => 120 * MINUTE,
        "4H" => 240 * MINUTE,
        "6Hutc" => 360 * MINUTE,
        "12Hutc" => 720 * MINUTE,
        "1Dutc" => 1440 * MINUTE,
        _ => return None,
    })
}

/// Parses a candle CSV: `time,open,high,low,close,volume` per line, time in ms or RFC 3339, an
/// optional header line. The error names the first bad line.
pub fn parse_candle_csv(text: &str) -> Result<Vec<(i64, Candle)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (n == 0 && line.chars().next().is_some_and(|c| c.is_ascii_alphabetic())) {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = || format!("line {}: expected time,open,high,low,close,volume", n + 1);
        let [time, open, high, low, close, volume] = fields.as_slice() else { return Err(bad()) };
        let time = time
            .parse::<i64>()
            .ok()
            .or_else(|| chrono::DateTime::parse_from_rfc3339(time).ok().map(|t| t.timestamp_millis()))
            .ok_or_else(bad)?;
        let d = |v: &str| Decimal::from_str(v).map_err(|_| bad());
        let candle = Candle { open: d(open)?, high: d(high)?, low: d(low)?, close: d(close)?, volume: d(volume)? };
        let ordered = candle.low <= candle.open.min(candle.close) && candle.high >= candle.open.max(candle.close);
        if !ordered || candle.low <= Decimal::ZERO || candle.volume < Decimal::ZERO {
            return Err(format!("line {}: low ≤ open, close ≤ high, prices above 0 and a volume of 0 or more", n + 1));
        }
        out.push((time, candle));
    }
    Ok(out)
}

#[derive(Clone)]
pub struct FakeBitget {
    pub url: String,
    pub state: Arc<Mutex<FakeState>>,
}

pub const KEY: &str = "bg_test_key";
pub const SECRET: &str = "bg_test_secret";
pub const PASSPHRASE: &str = "bg test passphrase";
pub const DEMO_KEY: &str = "bg_demo_key";
/// Bitget refuses a request whose ACCESS-TIMESTAMP is further than this from its clock.
pub const TIMESTAMP_WINDOW_MS: i64 = 30_000;
pub const START_BALANCE: i64 = 10_000;
/// The product types `GET /api/v2/mix/market/contracts` knows; only USDT-M has contracts here.
pub const PRODUCT_TYPES: [&str; 6] = ["USDT-FUTURES", "COIN-FUTURES", "USDC-FUTURES", "SUSDT-FUTURES", "SCOIN-FUTURES", "SUSDC-FUTURES"];

/// Bitget's error codes, as documented for the v2 API.
pub mod codes {
    pub const PARAMETER_VERIFICATION: &str = "40017";
    pub const INVALID_KEY: &str = "40006";
    pub const TIMESTAMP_EXPIRED: &str = "40008";
    pub const SIGN_ERROR: &str = "40009";
    pub const PASSPHRASE_ERROR: &str = "40012";
    pub const SYMBOL_NOT_FOUND: &str = "40034";
    pub const ORDER_NOT_FOUND: &str = "40109";
    pub const DUPLICATE_CLIENT_OID: &str = "40786";
    pub const INSUFFICIENT_BALANCE: &str = "40762";
    pub const POSITION_MODE_MISMATCH: &str = "40774";
    pub const SIZE_PRECISION: &str = "40808";
    pub const PRICE_PRECISION: &str = "45115";
    pub const PRICE_OUT_OF_BAND: &str = "22047";
    pub const BELOW_MIN_NOTIONAL: &str = "45110";
    pub const BELOW_MIN_SIZE: &str = "45111";
    pub const SYMBOL_NOT_TRADABLE: &str = "40308";
    pub const URL_NOT_FOUND: &str = "40404";
    pub const NO_POSITION_TO_CLOSE: &str = "22002";
    pub const LEVERAGE_OUT_OF_RANGE: &str = "40797";
    pub const MARGIN_MODE_LOCKED: &str = "45117";
    pub const POSITION_MODE_LOCKED: &str = "40920";
    pub const CANCEL_NOT_FOUND: &str = "40768";
    pub const ORDER_NOT_CANCELABLE: &str = "22001";
}

/// Requests per second per key, by endpoint (Bitget's documented frequency limits).
fn rate_limit(path: &str) -> usize {
    match path {
        p if p.starts_with("/api/v2/mix/market/") => 20,
        "/api/v2/mix/account/set-leverage"
        | "/api/v2/mix/account/set-margin-mode"
        | "/api/v2/mix/account/set-position-mode"
        | "/api/v2/mix/position/all-position" => 5,
        _ => 10,
    }
}

impl FakeBitget {
    /// A double on a free loopback port.
    pub async fn start() -> FakeBitget {
        FakeBitget::serve(0).await
    }

    /// A double on `port` (0: any free one), with the test keys, marks for every contract and
    /// a 10,000 USDT one-way account.
    pub async fn serve(port: u16) -> FakeBitget {
        let mut keys = HashMap::new();
        keys.insert(KEY.into(), Key { secret: SECRET.into(), passphrase: PASSPHRASE.into(), demo: false });
        keys.insert(DEMO_KEY.into(), Key { secret: SECRET.into(), passphrase: PASSPHRASE.into(), demo: true });
        let raw: Value = serde_json::from_str(include_str!("../data/contracts.json")).unwrap_or(Value::Null);
        let contracts: BTreeMap<String, Contract> = raw["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| (c["symbol"].as_str().unwrap_or_default().to_owned(), Contract::parse(c.clone())))
            .collect();
        let marks = [("BTCUSDT", "65000"), ("ETHUSDT", "3200"), ("SOLUSDT", "150"), ("DOGEUSDT", "0.15")]
            .into_iter()
            .map(|(s, p)| (s.to_owned(), Decimal::from_str(p).unwrap_or_default()))
            .collect();
        let state = FakeState {
            keys,
            pos_mode: "one_way_mode".into(),
            marks,
            contracts,
            positions: HashMap::new(),
            orders: HashMap::new(),
            leverage: HashMap::new(),
            margin_mode: HashMap::new(),
            balance: Decimal::from(START_BALANCE),
            faults: VecDeque::new(),
            calls: HashMap::new(),
            rejected_signatures: 0,
            rate_windows: HashMap::new(),
            next_order_id: 1_000_000,
            fill_limit: None,
            candles: HashMap::new(),
            trades: Vec::new(),
        };
        let state = Arc::new(Mutex::new(state));
        let app = axum::Router::new().fallback(handle).with_state(state.clone());
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => l,
            Err(e) => panic!("the Bitget double cannot listen on 127.0.0.1:{port}: {e}"),
        };
        let url = match listener.local_addr() {
            Ok(a) => format!("http://{a}"),
            Err(e) => panic!("no local address: {e}"),
        };
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        FakeBitget { url, state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn fault(&self, path: &str, fault: Fault) {
        self.lock().faults.push_back((path.to_owned(), fault));
    }
    pub fn calls(&self, path: &str) -> u32 {
        self.lock().calls.get(path).copied().unwrap_or(0)
    }
    /// Every call so far, whatever its path.
    pub fn total_calls(&self) -> u32 {
        self.lock().calls.values().sum()
    }
    pub fn order_count(&self) -> usize {
        self.lock().orders.len()
    }
    pub fn order(&self, client_oid: &str) -> Option<Order> {
        self.lock().orders.get(client_oid).cloned()
    }
    pub fn rejected_signatures(&self) -> u32 {
        self.lock().rejected_signatures
    }
    /// Moves the mark; resting limit orders it crosses fill at their price.
    pub fn set_mark(&self, symbol: &str, price: &str) {
        let mut state = self.lock();
        state.marks.insert(symbol.into(), price.parse().unwrap_or_default());
        fill_crossed(&mut state);
    }
    pub fn set_position(&self, symbol: &str, side: &str, size: &str, entry: &str) {
        let position = Position { size: size.parse().unwrap_or_default(), ..Position::opened_at(entry.parse().unwrap_or_default()) };
        self.lock().positions.insert((symbol.into(), side.into()), position);
    }
    pub fn position(&self, symbol: &str, side: &str) -> Decimal {
        self.lock().positions.get(&(symbol.to_owned(), side.to_owned())).map(|p| p.size).unwrap_or_default()
    }
    /// Replaces `symbol`'s candle series.
    pub fn load_candles(&self, symbol: &str, candles: Vec<(i64, Candle)>) {
        self.lock().candles.insert(symbol.to_owned(), candles.into_iter().collect());
    }

    /// A trade at `price` at `time_ms`: the 1-minute candle it falls in moves (or starts), and
    /// the mark follows.
    pub fn tick(&self, symbol: &str, time_ms: i64, price: Decimal) {
        tick(&mut self.lock(), symbol, time_ms, price);
    }

    pub fn set_pos_mode(&self, mode: &str) {
        self.lock().pos_mode = mode.into();
    }
    pub fn leverage(&self, symbol: &str) -> u32 {
        self.lock().leverage_of(symbol)
    }
    pub fn margin_mode(&self, symbol: &str) -> String {
        self.lock().margin_mode_of(symbol)
    }

    /// Places a market order as its owner would by hand on Bitget's site, not through this
    /// service (a client id of Bitget's own making).
    pub fn place_by_hand(&self, symbol: &str, side: &str, size: &str) {
        let mut state = self.lock();
        let client_oid = format!("web-{}", state.next_order_id);
        let body = json!({"symbol": symbol, "productType": "USDT-FUTURES", "marginMode": "isolated", "marginCoin": "USDT",
            "size": size, "side": side, "orderType": "market", "clientOid": client_oid});
        place(&mut state, &body);
    }

    /// Every fill so far, oldest first.
    pub fn trades(&self) -> Vec<Trade> {
        self.lock().trades.clone()
    }

    /// Puts a contract into another status (`maintain`, `limit_open`, `off`, …).
    pub fn set_symbol_status(&self, symbol: &str, status: &str) {
        if let Some(c) = self.lock().contracts.get_mut(symbol) {
            c.status = status.to_owned();
            c.raw["symbolStatus"] = status.into();
        }
    }
}

impl FakeState {
    fn leverage_of(&self, symbol: &str) -> u32 {
        self.leverage.get(symbol).copied().unwrap_or(20)
    }
    fn margin_mode_of(&self, symbol: &str) -> String {
        self.margin_mode.get(symbol).cloned().unwrap_or_else(|| "crossed".into())
    }
    fn unrealized(&self, symbol: &str, hold: &str, p: &Position) -> Decimal {
        let mark = self.marks.get(symbol).copied().unwrap_or(p.entry);
        (mark - p.entry) * p.size * if hold == "long" { Decimal::ONE } else { Decimal::NEGATIVE_ONE }
    }
    fn total_unrealized(&self) -> Decimal {
        self.positions.iter().map(|((s, h), p)| self.unrealized(s, h, p)).sum()
    }
    /// Initial margin held by positions and by resting opening orders.
    fn margin_in_use(&self) -> Decimal {
        let positions: Decimal =
            self.positions.iter().map(|((s, _), p)| p.size * p.entry / Decimal::from(self.leverage_of(s).max(1))).sum();
        let orders: Decimal = self
            .orders
            .values()
            .filter(|o| o.state == "live" && !o.closing)
            .map(|o| (o.size - o.filled) * o.price.unwrap_or_default() / Decimal::from(o.leverage.max(1)))
            .sum();
        positions + orders
    }
    fn equity(&self) -> Decimal {
        self.balance + self.total_unrealized()
    }
    fn max_available(&self) -> Decimal {
        (self.equity() - self.margin_in_use()).max(Decimal::ZERO)
    }
    fn has_exposure(&self, symbol: Option<&str>) -> bool {
        let matches = |s: &str| symbol.is_none_or(|want| want == s);
        self.positions.iter().any(|((s, _), p)| matches(s) && !p.size.is_zero())
            || self.orders.values().any(|o| o.state == "live" && matches(&o.symbol))
    }
    /// Size held by resting close orders of a position: not available to close again.
    fn locked(&self, symbol: &str, hold: &str) -> Decimal {
        self.orders
            .values()
            .filter(|o| o.state == "live" && o.symbol == symbol && closes(o, hold, &self.pos_mode))
            .map(|o| o.size - o.filled)
            .sum()
    }
}

fn closes(order: &Order, hold: &str, pos_mode: &str) -> bool {
    if pos_mode == "hedge_mode" {
        order.trade_side.as_deref() == Some("close") && order.hold_side() == hold
    } else {
        order.closing && ((hold == "long" && order.economic_side() == "sell") || (hold == "short" && order.economic_side() == "buy"))
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn ok(data: Value) -> Response {
    (StatusCode::OK, axum::Json(json!({"code": "00000", "msg": "success", "requestTime": now_ms(), "data": data}))).into_response()
}

fn err(status: StatusCode, code: &str, msg: &str) -> Response {
    (status, axum::Json(json!({"code": code, "msg": msg, "requestTime": now_ms(), "data": null}))).into_response()
}

fn bad(code: &str, msg: &str) -> Response {
    err(StatusCode::BAD_REQUEST, code, msg)
}

fn verify(state: &mut FakeState, method: &Method, uri: &Uri, headers: &HeaderMap, body: &str) -> Result<String, Box<Response>> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (key, sig, ts, pass) = (h("ACCESS-KEY"), h("ACCESS-SIGN"), h("ACCESS-TIMESTAMP"), h("ACCESS-PASSPHRASE"));
    let Some(k) = state.keys.get(&key).cloned() else {
        state.rejected_signatures += 1;
        return Err(Box::new(bad(codes::INVALID_KEY, "Invalid ACCESS_KEY")));
    };
    if ts.parse::<i64>().map(|t| (now_ms() - t).abs() > TIMESTAMP_WINDOW_MS).unwrap_or(true) {
        state.rejected_signatures += 1;
        return Err(Box::new(bad(codes::TIMESTAMP_EXPIRED, "Request timestamp expired")));
    }
    if pass != k.passphrase {
        state.rejected_signatures += 1;
        return Err(Box::new(bad(codes::PASSPHRASE_ERROR, "apikey/password is incorrect")));
    }
    let path_and_query = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let Ok(mut mac) = <Hmac<sha2::Sha256> as Mac>::new_from_slice(k.secret.as_bytes()) else {
        return Err(Box::new(bad(codes::SIGN_ERROR, "sign signature error")));
    };
    mac.update(format!("{ts}{}{path_and_query}{body}", method.as_str()).as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if sig != expected {
        state.rejected_signatures += 1;
        return Err(Box::new(bad(codes::SIGN_ERROR, "sign signature error")));
    }
    let paptrading = h("paptrading") == "1";
    if paptrading != k.demo {
        state.rejected_signatures += 1;
        return Err(Box::new(bad("40099", "demo keys need paptrading: 1 and live keys must not send it")));
    }
    Ok(key)
}

async fn handle(State(shared): State<Arc<Mutex<FakeState>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let body = String::from_utf8_lossy(&body).into_owned();
    let fault = {
        let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
        *state.calls.entry(path.clone()).or_default() += 1;
        let index = state.faults.iter().position(|(p, _)| *p == path);
        index.and_then(|i| state.faults.remove(i)).map(|(_, f)| f)
    };
    match fault {
        Some(Fault::Timeout) => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            return err(StatusCode::GATEWAY_TIMEOUT, "50000", "too late");
        }
        Some(Fault::TooManyRequests) => return err(StatusCode::TOO_MANY_REQUESTS, "429", "Too Many Requests"),
        Some(Fault::ServerError) => return err(StatusCode::INTERNAL_SERVER_ERROR, "50000", "internal error"),
        Some(Fault::Code(code)) => return bad(code, "scripted error"),
        Some(Fault::Refuse(code, message)) => return bad(code, message),
        Some(Fault::Hold(ref release)) => release.notified().await,
        _ => {}
    }
    let accept_then_timeout = matches!(fault, Some(Fault::AcceptThenTimeout));
    let response = {
        let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(Fault::FillPart(size)) = fault {
            state.fill_limit = Decimal::from_str(size).ok();
        }
        let response = route(&mut state, &method, &uri, &headers, &path, &body);
        state.fill_limit = None;
        response
    };
    if accept_then_timeout {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    response
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query().unwrap_or("").split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn product_type_ok(value: Option<&str>) -> bool {
    value.is_some_and(|p| p.eq_ignore_ascii_case("USDT-FUTURES"))
}

fn route(state: &mut FakeState, method: &Method, uri: &Uri, headers: &HeaderMap, path: &str, body: &str) -> Response {
    let q = query(uri);
    let public = matches!(path, "/api/v2/public/time") || path.starts_with("/api/v2/mix/market/");
    if public && !within_rate_limit(state, "public", path) {
        return err(StatusCode::TOO_MANY_REQUESTS, "429", "Too Many Requests");
    }
    match (method.as_str(), path) {
        ("GET", "/api/v2/public/time") => ok(json!({"serverTime": now_ms().to_string()})),
        ("GET", "/api/v2/mix/market/tickers") => {
            if !product_type_ok(q.get("productType").map(String::as_str)) {
                return bad(codes::PARAMETER_VERIFICATION, "productType is required");
            }
            ok(Value::Array(state.marks.iter().map(|(s, p)| ticker(s, *p)).collect()))
        }
        ("GET", "/api/v2/mix/market/ticker") => match q.get("symbol").and_then(|s| state.marks.get(s).map(|p| (s, p))) {
            Some((s, p)) => ok(json!([ticker(s, *p)])),
            None => bad(codes::SYMBOL_NOT_FOUND, "Parameter symbol does not exist"),
        },
        ("GET", "/api/v2/mix/market/symbol-price") => match q.get("symbol").and_then(|s| state.marks.get(s).map(|p| (s, p))) {
            Some((s, p)) => ok(
                json!([{"symbol": s, "price": p.to_string(), "indexPrice": p.to_string(), "markPrice": p.to_string(), "ts": now_ms().to_string()}]),
            ),
            None => bad(codes::SYMBOL_NOT_FOUND, "Parameter symbol does not exist"),
        },
        ("GET", "/api/v2/mix/market/candles") => candles(state, &q, 1000),
        ("GET", "/api/v2/mix/market/history-candles") => candles(state, &q, 200),
        // The double's own operator routes (no such path exists on Bitget).
        ("POST", "/double/candles") => match (q.get("symbol"), parse_candle_csv(body)) {
            (Some(symbol), Ok(series)) if state.contracts.contains_key(symbol) => {
                let loaded = series.len();
                state.candles.insert(symbol.clone(), series.into_iter().collect());
                ok(json!({"symbol": symbol, "candles": loaded}))
            }
            (_, Err(why)) => bad(codes::PARAMETER_VERIFICATION, &why),
            _ => bad(codes::SYMBOL_NOT_FOUND, "Parameter symbol does not exist"),
        },
        ("POST", "/double/tick") => {
            let tick_body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            let symbol = tick_body["symbol"].as_str().unwrap_or_default().to_owned();
            let price = tick_body["price"].as_str().and_then(|p| Decimal::from_str(p).ok()).filter(|p| *p > Decimal::ZERO);
            match price {
                Some(price) if state.contracts.contains_key(&symbol) => {
                    let time = tick_body["time_ms"].as_i64().unwrap_or_else(now_ms);
                    tick(state, &symbol, time, price);
                    ok(json!({"symbol": symbol, "price": price.to_string(), "time_ms": time}))
                }
                _ => bad(codes::PARAMETER_VERIFICATION, "expected {\"symbol\", \"price\": \"65000\", \"time_ms\"?}"),
            }
        }
        ("GET", "/api/v2/mix/market/contracts") => {
            // Only USDT-M is served; the other product types exist and are empty here.
            if !q.get("productType").is_some_and(|p| PRODUCT_TYPES.iter().any(|t| t.eq_ignore_ascii_case(p))) {
                return bad(codes::PARAMETER_VERIFICATION, "productType is required");
            }
            if !product_type_ok(q.get("productType").map(String::as_str)) {
                return ok(json!([]));
            }
            let symbol = q.get("symbol");
            ok(Value::Array(
                state.contracts.values().filter(|c| symbol.is_none_or(|s| c.raw["symbol"] == s.as_str())).map(|c| c.raw.clone()).collect(),
            ))
        }
        _ => {
            let key = match verify(state, method, uri, headers, body) {
                Ok(k) => k,
                Err(r) => return *r,
            };
            if !within_rate_limit(state, &key, path) {
                return err(StatusCode::TOO_MANY_REQUESTS, "429", "Too Many Requests");
            }
            private(state, method.as_str(), path, &q, body)
        }
    }
}

fn tick(state: &mut FakeState, symbol: &str, time_ms: i64, price: Decimal) {
    let series = state.candles.entry(symbol.to_owned()).or_default();
    // The series' own spacing (a minute when it has fewer than two candles).
    let spacing = {
        let mut times = series.keys().rev();
        match (times.next(), times.next()) {
            (Some(a), Some(b)) => a - b,
            _ => 60_000,
        }
    };
    // A tick inside a candle moves it; one past every candle starts the minute it falls in.
    let within = series.range(..=time_ms).next_back().map(|(t, _)| *t).filter(|t| time_ms < t + spacing);
    match within.and_then(|t| series.get_mut(&t)) {
        Some(c) => {
            c.high = c.high.max(price);
            c.low = c.low.min(price);
            c.close = price;
        }
        None => {
            let minute = time_ms.div_euclid(60_000) * 60_000;
            series.insert(minute, Candle { open: price, high: price, low: price, close: price, volume: Decimal::ZERO });
        }
    }
    state.marks.insert(symbol.to_owned(), price);
}

/// `GET market/candles` and `market/history-candles`: the series bucketed into `granularity`
/// (UTC-aligned), those whose open time is within [startTime, endTime], the newest `limit` of them,
/// oldest first; each `[ts, open, high, low, close, baseVolume, quoteVolume]`, strings.
fn candles(state: &FakeState, q: &HashMap<String, String>, max_limit: u32) -> Response {
    if !product_type_ok(q.get("productType").map(String::as_str)) {
        return bad(codes::PARAMETER_VERIFICATION, "productType is required");
    }
    let Some(symbol) = q.get("symbol").filter(|s| state.contracts.contains_key(*s)) else {
        return bad(codes::SYMBOL_NOT_FOUND, "Parameter symbol does not exist");
    };
    let Some(step) = q.get("granularity").and_then(|g| granularity_ms(g)) else {
        return bad(codes::PARAMETER_VERIFICATION, "Parameter granularity error");
    };
    let limit = match q.get("limit").map(|l| l.parse::<u32>()) {
        None => 100,
        Some(Ok(l)) if (1..=max_limit).contains(&l) => l,
        Some(_) => return bad(codes::PARAMETER_VERIFICATION, "Parameter limit error"),
    };
    let time = |k: &str| q.get(k).map(|v| v.parse::<i64>());
    let (start, end) = match (time("startTime"), time("endTime")) {
        (Some(Err(_)), _) | (_, Some(Err(_))) => return bad(codes::PARAMETER_VERIFICATION, "Parameter time error"),
        (s, e) => (s.and_then(Result::ok).unwrap_or(i64::MIN), e.and_then(Result::ok).unwrap_or(i64::MAX)),
    };
    if start > end {
        return bad(codes::PARAMETER_VERIFICATION, "startTime must not be after endTime");
    }
    let mut buckets: BTreeMap<i64, Candle> = BTreeMap::new();
    for (t, c) in state.candles.get(symbol).into_iter().flatten() {
        let bucket = t.div_euclid(step) * step;
        buckets
            .entry(bucket)
            .and_modify(|b| {
                b.high = b.high.max(c.high);
                b.low = b.low.min(c.low);
                b.close = c.close;
                b.volume += c.volume;
            })
            .or_insert(*c);
    }
    let chosen: Vec<(&i64, &Candle)> = buckets.range(start..=end).collect();
    let newest = &chosen[chosen.len().saturating_sub(limit as usize)..];
    ok(Value::Array(
        newest
            .iter()
            .map(|(t, c)| {
                json!([
                    t.to_string(),
                    c.open.to_string(),
                    c.high.to_string(),
                    c.low.to_string(),
                    c.close.to_string(),
                    c.volume.to_string(),
                    (c.volume * c.close).round_dp(8).to_string()
                ])
            })
            .collect(),
    ))
}

fn ticker(symbol: &str, price: Decimal) -> Value {
    let p = price.to_string();
    json!({"symbol": symbol, "lastPr": p, "askPr": p, "bidPr": p, "bidSz": "1", "askSz": "1", "high24h": p, "low24h": p,
           "ts": now_ms().to_string(), "change24h": "0", "baseVolume": "0", "quoteVolume": "0", "usdtVolume": "0",
           "openUtc": p, "changeUtc24h": "0", "indexPrice": p, "fundingRate": "0.0001", "holdingAmount": "0",
           "deliveryStartTime": null, "deliveryTime": null, "deliveryStatus": "", "open24h": p, "markPrice": p})
}

fn within_rate_limit(state: &mut FakeState, key: &str, path: &str) -> bool {
    let now = Instant::now();
    let window = state.rate_windows.entry((key.to_owned(), path.to_owned())).or_default();
    while window.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(1)) {
        window.pop_front();
    }
    if window.len() >= rate_limit(path) {
        return false;
    }
    window.push_back(now);
    true
}

fn private(state: &mut FakeState, method: &str, path: &str, q: &HashMap<String, String>, body: &str) -> Response {
    let body: Value = if method == "POST" {
        match serde_json::from_str(body) {
            Ok(v) => v,
            Err(_) => return bad(codes::PARAMETER_VERIFICATION, "Parameter verification failed"),
        }
    } else {
        Value::Null
    };
    match (method, path) {
        ("GET", "/api/v2/mix/account/accounts") => {
            if !product_type_ok(q.get("productType").map(String::as_str)) {
                return bad(codes::PARAMETER_VERIFICATION, "productType is required");
            }
            // The list carries no position mode and no per-symbol leverage: only the single
            // account endpoint does.
            ok(json!([account_fields(state)]))
        }
        ("GET", "/api/v2/mix/account/account") => {
            let Some(symbol) = q.get("symbol").filter(|s| state.contracts.contains_key(*s)) else {
                return bad(codes::SYMBOL_NOT_FOUND, "Parameter symbol does not exist");
            };
            if !product_type_ok(q.get("productType").map(String::as_str))
                || !q.get("marginCoin").is_some_and(|c| c.eq_ignore_ascii_case("usdt"))
            {
                return bad(codes::PARAMETER_VERIFICATION, "productType and marginCoin are required");
            }
            let mut account = account_fields(state);
            let leverage = state.leverage_of(symbol).to_string();
            account["crossedMarginLeverage"] = leverage.clone().into();
            account["isolatedLongLever"] = leverage.clone().into();
            account["isolatedShortLever"] = leverage.into();
            account["marginMode"] = state.margin_mode_of(symbol).into();
            account["posMode"] = state.pos_mode.clone().into();
            ok(account)
        }
        ("GET", "/api/v2/mix/position/all-position") => {
            if !product_type_ok(q.get("productType").map(String::as_str)) {
                return bad(codes::PARAMETER_VERIFICATION, "productType is required");
            }
            ok(Value::Array(position_views(state, None)))
        }
        ("GET", "/api/v2/mix/position/single-position") => match q.get("symbol") {
            _ if !product_type_ok(q.get("productType").map(String::as_str)) => {
                bad(codes::PARAMETER_VERIFICATION, "productType is required")
            }
            Some(symbol) if state.contracts.contains_key(symbol) => ok(Value::Array(position_views(state, Some(symbol)))),
            _ => bad(codes::SYMBOL_NOT_FOUND, "Parameter symbol does not exist"),
        },
        ("GET", "/api/v2/mix/order/detail") => {
            if !product_type_ok(q.get("productType").map(String::as_str)) || q.get("symbol").is_none() {
                return bad(codes::PARAMETER_VERIFICATION, "symbol and productType are required");
            }
            let found = match (q.get("clientOid"), q.get("orderId")) {
                (Some(c), _) => state.orders.get(c),
                (None, Some(id)) => state.orders.values().find(|o| &o.order_id == id),
                (None, None) => return bad(codes::PARAMETER_VERIFICATION, "orderId or clientOid is required"),
            };
            match found.filter(|o| q.get("symbol").is_some_and(|s| *s == o.symbol)) {
                Some(order) => ok(order.view(&state.pos_mode)),
                None => bad(codes::ORDER_NOT_FOUND, "The data of the order cannot be found"),
            }
        }
        ("GET", "/api/v2/mix/order/fills") => fills(state, q),
        ("GET", "/api/v2/mix/order/orders-history") => orders_history(state, q),
        ("GET", "/api/v2/mix/order/orders-pending") => {
            if !product_type_ok(q.get("productType").map(String::as_str)) {
                return bad(codes::PARAMETER_VERIFICATION, "productType is required");
            }
            let mut list: Vec<&Order> =
                state.orders.values().filter(|o| o.state == "live" && q.get("symbol").is_none_or(|s| *s == o.symbol)).collect();
            list.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.order_id.cmp(&a.order_id)));
            order_list(state, &list)
        }
        ("POST", "/api/v2/mix/order/place-order") => place(state, &body),
        ("POST", "/api/v2/mix/order/cancel-order") => cancel(state, &body),
        ("POST", "/api/v2/mix/account/set-leverage") => set_leverage(state, &body),
        ("POST", "/api/v2/mix/account/set-margin-mode") => set_margin_mode(state, &body),
        ("POST", "/api/v2/mix/account/set-position-mode") => {
            let mode = body["posMode"].as_str().unwrap_or("");
            if !matches!(mode, "one_way_mode" | "hedge_mode") || !product_type_ok(body["productType"].as_str()) {
                return bad(codes::PARAMETER_VERIFICATION, "Parameter verification failed");
            }
            if mode != state.pos_mode && state.has_exposure(None) {
                return bad(codes::POSITION_MODE_LOCKED, "Position or order exists, the position mode cannot be switched");
            }
            state.pos_mode = mode.to_owned();
            ok(json!({"posMode": mode}))
        }
        _ => err(StatusCode::NOT_FOUND, codes::URL_NOT_FOUND, "Request URL NOT FOUND"),
    }
}

fn account_fields(state: &FakeState) -> Value {
    let upl = state.total_unrealized().to_string();
    let equity = state.equity().to_string();
    let available = state.max_available().to_string();
    json!({
        "marginCoin": "USDT",
        "locked": "0",
        "available": (state.balance - state.margin_in_use()).max(Decimal::ZERO).to_string(),
        "crossedMaxAvailable": available,
        "isolatedMaxAvailable": available,
        "maxTransferOut": available,
        "accountEquity": equity,
        "usdtEquity": equity,
        "btcEquity": "0",
        "crossedRiskRate": "0",
        "unrealizedPL": upl,
        "coupon": "0",
        "crossedUnrealizedPL": upl,
        "isolatedUnrealizedPL": "0",
        "unionTotalMargin": equity,
        "unionAvailable": available,
        "unionMm": "0",
        "assetMode": "single",
    })
}

fn position_views(state: &FakeState, symbol: Option<&str>) -> Vec<Value> {
    state
        .positions
        .iter()
        .filter(|((s, _), p)| !p.size.is_zero() && symbol.is_none_or(|want| want == s))
        .map(|((s, hold), p)| {
            let mark = state.marks.get(s).copied().unwrap_or(p.entry);
            let leverage = state.leverage_of(s);
            let locked = state.locked(s, hold).min(p.size);
            json!({
                "marginCoin": "USDT",
                "symbol": s,
                "holdSide": hold,
                "openDelegateSize": "0",
                "marginSize": (p.size * p.entry / Decimal::from(leverage.max(1))).normalize().to_string(),
                "available": (p.size - locked).normalize().to_string(),
                "locked": locked.normalize().to_string(),
                "total": p.size.normalize().to_string(),
                "leverage": leverage.to_string(),
                "achievedProfits": p.realized.normalize().to_string(),
                "openPriceAvg": p.entry.normalize().to_string(),
                "marginMode": state.margin_mode_of(s),
                "posMode": state.pos_mode,
                "unrealizedPL": state.unrealized(s, hold, p).normalize().to_string(),
                "liquidationPrice": "0",
                "keepMarginRate": "0.004",
                "markPrice": mark.normalize().to_string(),
                "breakEvenPrice": p.entry.normalize().to_string(),
                "totalFee": (-p.fees).normalize().to_string(),
                "deductedFee": p.fees.normalize().to_string(),
                "marginRatio": "0",
                "assetMode": "single",
                "uTime": now_ms().to_string(),
                "autoMargin": "off",
                "cTime": p.opened_ms.to_string(),
            })
        })
        .collect()
}

fn common_fields_ok(body: &Value) -> bool {
    product_type_ok(body["productType"].as_str()) && body["marginCoin"].as_str().is_some_and(|c| c.eq_ignore_ascii_case("usdt"))
}

fn set_leverage(state: &mut FakeState, body: &Value) -> Response {
    let symbol = body["symbol"].as_str().unwrap_or("").to_owned();
    let Some(contract) = state.contracts.get(&symbol).cloned() else {
        return bad(codes::SYMBOL_NOT_FOUND, "Parameter symbol does not exist");
    };
    if !common_fields_ok(body) {
        return bad(codes::PARAMETER_VERIFICATION, "Parameter verification failed");
    }
    let Some(leverage) = body["leverage"].as_str().and_then(|l| l.parse::<u32>().ok()) else {
        return bad(codes::PARAMETER_VERIFICATION, "leverage must be an integer string");
    };
    if leverage < contract.min_lever || leverage > contract.max_lever {
        return bad(codes::LEVERAGE_OUT_OF_RANGE, "Exceeded the maximum settable leverage");
    }
    state.leverage.insert(symbol.clone(), leverage);
    let l = leverage.to_string();
    ok(
        json!({"symbol": symbol.to_lowercase(), "marginCoin": "USDT", "longLeverage": l, "shortLeverage": l, "crossMarginLeverage": l, "marginMode": state.margin_mode_of(&symbol)}),
    )
}

fn set_margin_mode(state: &mut FakeState, body: &Value) -> Response {
    let symbol = body["symbol"].as_str().unwrap_or("").to_owned();
    if !state.contracts.contains_key(&symbol) {
        return bad(codes::SYMBOL_NOT_FOUND, "Parameter symbol does not exist");
    }
    let mode = body["marginMode"].as_str().unwrap_or("");
    if !common_fields_ok(body) || !matches!(mode, "isolated" | "crossed") {
        return bad(codes::PARAMETER_VERIFICATION, "Parameter verification failed");
    }
    if mode != state.margin_mode_of(&symbol) && state.has_exposure(Some(&symbol)) {
        return bad(codes::MARGIN_MODE_LOCKED, "Currently holding positions or orders, the margin mode cannot be adjusted");
    }
    state.margin_mode.insert(symbol.clone(), mode.to_owned());
    let l = state.leverage_of(&symbol).to_string();
    ok(json!({"symbol": symbol.to_lowercase(), "marginCoin": "USDT", "longLeverage": l, "shortLeverage": l, "marginMode": mode}))
}

fn cancel(state: &mut FakeState, body: &Value) -> Response {
    if !product_type_ok(body["productType"].as_str()) {
        return bad(codes::PARAMETER_VERIFICATION, "Parameter verification failed");
    }
    let symbol = body["symbol"].as_str().unwrap_or("");
    let client_oid = match (body["clientOid"].as_str(), body["orderId"].as_str()) {
        (Some(c), _) => Some(c.to_owned()),
        (None, Some(id)) => state.orders.values().find(|o| o.order_id == id).map(|o| o.client_oid.clone()),
        (None, None) => return bad(codes::PARAMETER_VERIFICATION, "orderId or clientOid is required"),
    };
    let Some(order) = client_oid.and_then(|c| state.orders.get_mut(&c)).filter(|o| o.symbol == symbol) else {
        return bad(codes::CANCEL_NOT_FOUND, "Order does not exist");
    };
    if order.state != "live" {
        return bad(codes::ORDER_NOT_CANCELABLE, "No order to cancel");
    }
    order.state = "canceled".into();
    order.updated_ms = now_ms();
    ok(json!({"orderId": order.order_id, "clientOid": order.client_oid}))
}

fn place(state: &mut FakeState, order: &Value) -> Response {
    let s = |k: &str| order[k].as_str().unwrap_or("").to_owned();
    let (symbol, side, client_oid, order_type) = (s("symbol"), s("side"), s("clientOid"), s("orderType"));
    if !common_fields_ok(order) || !matches!(side.as_str(), "buy" | "sell") || !matches!(order_type.as_str(), "market" | "limit") {
        return bad(codes::PARAMETER_VERIFICATION, "Parameter verification failed");
    }
    let margin_mode = s("marginMode");
    if !matches!(margin_mode.as_str(), "isolated" | "crossed") {
        return bad(codes::PARAMETER_VERIFICATION, "marginMode must be isolated or crossed");
    }
    let Some(contract) = state.contracts.get(&symbol).cloned() else {
        return bad(codes::SYMBOL_NOT_FOUND, "Parameter symbol does not exist");
    };
    let hedge = state.pos_mode == "hedge_mode";
    // `tradeSide` counts only in hedge mode (Bitget ignores it in one-way mode); any case.
    let trade_side = order.get("tradeSide").and_then(Value::as_str).map(str::to_ascii_lowercase).filter(|_| hedge);
    if hedge && !matches!(trade_side.as_deref(), Some("open" | "close")) {
        return bad(codes::POSITION_MODE_MISMATCH, "The order type for unilateral position must also be the unilateral position type.");
    }
    if !client_oid.is_empty() && state.orders.contains_key(&client_oid) {
        return bad(codes::DUPLICATE_CLIENT_OID, "Duplicate clientOid");
    }
    let Ok(size) = Decimal::from_str(&s("size")) else {
        return bad(codes::PARAMETER_VERIFICATION, "size must be a decimal string");
    };
    let price = match (order_type.as_str(), Decimal::from_str(&s("price"))) {
        ("limit", Ok(p)) if p > Decimal::ZERO => Some(p),
        ("limit", _) => return bad(codes::PARAMETER_VERIFICATION, "a limit order needs a price"),
        _ => None,
    };
    let Some(mark) = state.marks.get(&symbol).copied() else {
        return bad(codes::SYMBOL_NOT_FOUND, "Parameter symbol does not exist");
    };
    let reduce_only = s("reduceOnly").eq_ignore_ascii_case("YES");

    // Which position the order moves, and whether it opens or closes it.
    let (hold, opening) = if hedge {
        let closing = trade_side.as_deref() == Some("close");
        (if side == "buy" { "long" } else { "short" }, !closing)
    } else {
        let held = |h: &str| state.positions.get(&(symbol.clone(), h.to_owned())).map(|p| p.size).unwrap_or_default();
        match side.as_str() {
            "buy" if held("short") > Decimal::ZERO => ("short", false),
            "sell" if held("long") > Decimal::ZERO => ("long", false),
            _ if reduce_only => return bad(codes::NO_POSITION_TO_CLOSE, "No position to close"),
            "buy" => ("long", true),
            _ => ("short", true),
        }
    };

    // What the order does in the market: a hedge-mode close of a long (`buy`) sells.
    let trades = if hedge && !opening {
        if side == "buy" {
            "sell"
        } else {
            "buy"
        }
    } else {
        side.as_str()
    };

    // The contract's rules, in Bitget's order.
    if opening && contract.status != "normal" {
        return bad(codes::SYMBOL_NOT_TRADABLE, "The contract is being temporarily maintained");
    }
    if size <= Decimal::ZERO || (size % contract.size_step) != Decimal::ZERO {
        return bad(
            codes::SIZE_PRECISION,
            &format!("Parameter verification exception size checkBDScale error value={size} checkScale={}", contract.size_step.scale()),
        );
    }
    if let Some(p) = price {
        if (p % contract.price_tick) != Decimal::ZERO {
            return bad(codes::PRICE_PRECISION, &format!("Price must be a multiple of {}", contract.price_tick.normalize()));
        }
        if (trades == "buy" && p > mark * (Decimal::ONE + contract.buy_limit_ratio))
            || (trades == "sell" && p < mark * (Decimal::ONE - contract.sell_limit_ratio))
        {
            return bad(
                codes::PRICE_OUT_OF_BAND,
                if trades == "buy" {
                    "The order price is higher than the maximum price limit"
                } else {
                    "The order price is lower than the minimum price limit"
                },
            );
        }
    }
    if opening {
        if size < contract.min_size {
            return bad(codes::BELOW_MIN_SIZE, "less than the minimum order quantity");
        }
        if size * price.unwrap_or(mark) < contract.min_notional {
            return bad(codes::BELOW_MIN_NOTIONAL, &format!("less than the minimum amount {} USDT", contract.min_notional.normalize()));
        }
        let leverage = Decimal::from(state.leverage_of(&symbol).max(1));
        if size * price.unwrap_or(mark) / leverage > state.max_available() {
            return bad(codes::INSUFFICIENT_BALANCE, "The order amount exceeds the balance");
        }
    } else {
        let held = state.positions.get(&(symbol.clone(), hold.to_owned())).map(|p| p.size).unwrap_or_default();
        let free = held - state.locked(&symbol, hold);
        if held.is_zero() {
            return bad(codes::NO_POSITION_TO_CLOSE, "No position to close");
        }
        // One-way mode nets: an ordinary order larger than the opposite position closes it and
        // opens the rest the other way. Only a reduce-only order is held to what can be closed.
        if size > free && (reduce_only || hedge) {
            return bad(codes::INSUFFICIENT_BALANCE, "The close size exceeds the position available to close");
        }
    }

    state.next_order_id += 1;
    let order_id = state.next_order_id.to_string();
    let client_oid = if client_oid.is_empty() { format!("auto{order_id}") } else { client_oid };
    let now = now_ms();
    let record = Order {
        order_id: order_id.clone(),
        client_oid: client_oid.clone(),
        symbol: symbol.clone(),
        side: side.clone(),
        trade_side: trade_side.clone(),
        reduce_only: !hedge && reduce_only,
        closing: !opening,
        order_type: order_type.clone(),
        price,
        size,
        filled: Decimal::ZERO,
        price_avg: None,
        fee: Decimal::ZERO,
        profits: Decimal::ZERO,
        state: "live".into(),
        margin_mode,
        leverage: state.leverage_of(&symbol),
        created_ms: now,
        updated_ms: now,
    };
    state.orders.insert(client_oid.clone(), record);
    // A market order, or a limit order at or through the mark, takes liquidity now.
    let marketable = match price {
        None => true,
        Some(p) => (trades == "buy" && p >= mark) || (trades == "sell" && p <= mark),
    };
    if marketable {
        fill(state, &client_oid, mark, contract.taker_fee);
    }
    ok(json!({"orderId": order_id, "clientOid": client_oid}))
}

/// Fills a live order whole at `price`, moving its position and the wallet.
fn fill(state: &mut FakeState, client_oid: &str, price: Decimal, fee_rate: Decimal) {
    let Some(mut order) = state.orders.get(client_oid).cloned() else { return };
    let whole = order.size;
    if let Some(limit) = state.fill_limit.take() {
        order.size = order.size.min(limit);
    }
    let hold = match order.hold_side() {
        "net" => {
            let held_short = state.positions.get(&(order.symbol.clone(), "short".to_owned())).is_some_and(|p| !p.size.is_zero());
            let held_long = state.positions.get(&(order.symbol.clone(), "long".to_owned())).is_some_and(|p| !p.size.is_zero());
            match order.side.as_str() {
                "buy" if held_short => "short",
                "sell" if held_long => "long",
                "buy" => "long",
                _ => "short",
            }
        }
        h => h,
    };
    let opening = !order.closing;
    let position = state.positions.entry((order.symbol.clone(), hold.to_owned())).or_insert_with(|| Position::opened_at(price));
    if position.size.is_zero() {
        // Flat again since it was last open: this is a new position.
        *position = Position::opened_at(price);
    }
    let fee = order.size * price * fee_rate;
    let mut realized = Decimal::ZERO;
    let size = if opening {
        position.entry = if position.size.is_zero() {
            price
        } else {
            (position.size * position.entry + order.size * price) / (position.size + order.size)
        };
        position.size += order.size;
        order.size
    } else {
        let closed = order.size.min(position.size);
        realized = (price - position.entry) * closed * if hold == "long" { Decimal::ONE } else { Decimal::NEGATIVE_ONE };
        position.size -= closed;
        position.realized += realized;
        closed
    };
    position.fees += fee;
    state.balance += realized - fee;
    // One-way netting: what the close did not use opens a position the other way.
    let rest = order.size - size;
    let nets = !opening && order.trade_side.is_none() && !order.reduce_only && rest > Decimal::ZERO;
    if nets {
        let other = if hold == "long" { "short" } else { "long" };
        let flipped = state.positions.entry((order.symbol.clone(), other.to_owned())).or_insert_with(|| Position::opened_at(price));
        if flipped.size.is_zero() {
            *flipped = Position::opened_at(price);
        }
        flipped.entry = price;
        flipped.size += rest;
    }
    let size = if nets { order.size } else { size };
    let trade_side = match &order.trade_side {
        Some(t) => t.clone(),
        None => format!("{}_single", order.side),
    };
    let maker = order.order_type == "limit" && fee_rate == state.contracts.get(&order.symbol).map(|c| c.maker_fee).unwrap_or_default();
    let trade_id = 5_000_000 + state.trades.len() as u64;
    state.trades.push(Trade {
        trade_id,
        order_id: order.order_id.clone(),
        symbol: order.symbol.clone(),
        side: order.side.clone(),
        trade_side,
        pos_mode: state.pos_mode.clone(),
        price,
        size,
        fee,
        profit: realized,
        maker,
        created_ms: next_creation_ms(),
    });
    if let Some(o) = state.orders.get_mut(client_oid) {
        o.filled = size;
        o.price_avg = Some(price);
        o.fee = fee;
        o.profits = realized;
        // What a thin book could not fill is canceled, not left resting.
        o.state = if order.size < whole { "canceled" } else { "filled" }.into();
        o.updated_ms = now_ms();
    }
}

/// The account's fills, newest first: at most 100 a page (`limit`, default 100), before
/// `idLessThan`, within `startTime`..`endTime` (at most a week apart; the week before `endTime`
/// when `startTime` is absent), of one `symbol` or `orderId` when given.
fn fills(state: &FakeState, q: &HashMap<String, String>) -> Response {
    if !product_type_ok(q.get("productType").map(String::as_str)) {
        return bad(codes::PARAMETER_VERIFICATION, "productType is required");
    }
    let number = |k: &str| q.get(k).map(|v| v.parse::<i64>());
    let (limit, start, end, before) = match (number("limit"), number("startTime"), number("endTime"), number("idLessThan")) {
        (Some(Err(_)), ..) | (_, Some(Err(_)), ..) | (_, _, Some(Err(_)), _) | (.., Some(Err(_))) => {
            return bad(codes::PARAMETER_VERIFICATION, "Parameter verification failed")
        }
        (l, s, e, b) => (l.and_then(Result::ok).unwrap_or(100), s.and_then(Result::ok), e.and_then(Result::ok), b.and_then(Result::ok)),
    };
    if !(1..=100).contains(&limit) {
        return bad(codes::PARAMETER_VERIFICATION, "limit must be between 1 and 100");
    }
    let end = end.unwrap_or_else(now_ms);
    let start = start.unwrap_or(end - FILLS_SPAN_MS);
    if end < start || end - start > FILLS_SPAN_MS {
        return bad(codes::PARAMETER_VERIFICATION, "The time range between startTime and endTime cannot exceed 7 days");
    }
    let page: Vec<&Trade> = state
        .trades
        .iter()
        .rev()
        .filter(|t| (start..=end).contains(&t.created_ms))
        .filter(|t| before.is_none_or(|b| (t.trade_id as i64) < b))
        .filter(|t| q.get("symbol").is_none_or(|s| *s == t.symbol))
        .filter(|t| q.get("orderId").is_none_or(|id| *id == t.order_id))
        .take(limit as usize)
        .collect();
    let end_id = page.last().map(|t| t.trade_id.to_string());
    let list: Vec<Value> = page.iter().map(|t| t.view()).collect();
    ok(json!({"fillList": if list.is_empty() { Value::Null } else { Value::Array(list) }, "endId": end_id}))
}

/// The account's ended orders (filled or canceled), newest first: at most 100 a page (`limit`),
/// before `idLessThan`, created within `startTime`..`endTime`, of one `symbol` when given.
fn orders_history(state: &FakeState, q: &HashMap<String, String>) -> Response {
    if !product_type_ok(q.get("productType").map(String::as_str)) {
        return bad(codes::PARAMETER_VERIFICATION, "productType is required");
    }
    let number = |k: &str| q.get(k).map(|v| v.parse::<i64>().map_err(|_| ()));
    let (Ok(limit), Ok(start), Ok(end), Ok(before)) = (
        number("limit").unwrap_or(Ok(100)),
        number("startTime").transpose(),
        number("endTime").transpose(),
        number("idLessThan").transpose(),
    ) else {
        return bad(codes::PARAMETER_VERIFICATION, "Parameter verification failed");
    };
    if !(1..=100).contains(&limit) {
        return bad(codes::PARAMETER_VERIFICATION, "limit must be between 1 and 100");
    }
    let mut list: Vec<&Order> = state
        .orders
        .values()
        .filter(|o| o.state != "live")
        .filter(|o| start.is_none_or(|s| o.created_ms >= s) && end.is_none_or(|e| o.created_ms <= e))
        .filter(|o| before.is_none_or(|b| o.order_id.parse::<i64>().is_ok_and(|id| id < b)))
        .filter(|o| q.get("symbol").is_none_or(|s| *s == o.symbol))
        .collect();
    list.sort_by_key(|o| std::cmp::Reverse(o.order_id.parse::<i64>().unwrap_or(0)));
    list.truncate(limit as usize);
    order_list(state, &list)
}

/// A page of orders as the list endpoints answer it: each carries `status` where the detail
/// carries `state`; the list is null when empty, and `endId` names the last one.
fn order_list(state: &FakeState, list: &[&Order]) -> Response {
    let views: Vec<Value> = list
        .iter()
        .map(|o| {
            let mut v = o.view(&state.pos_mode);
            if let Some(map) = v.as_object_mut() {
                let status = map.remove("state").unwrap_or(Value::Null);
                map.insert("status".into(), status);
            }
            v
        })
        .collect();
    let end_id = list.last().map(|o| o.order_id.clone());
    ok(json!({"entrustedList": if views.is_empty() { Value::Null } else { Value::Array(views) }, "endId": end_id}))
}

/// Resting limit orders the mark has crossed fill at their own price, as makers.
fn fill_crossed(state: &mut FakeState) {
    let crossed: Vec<(String, Decimal, Decimal)> = state
        .orders
        .values()
        .filter(|o| o.state == "live")
        .filter_map(|o| {
            let mark = *state.marks.get(&o.symbol)?;
            let price = o.price?;
            let crosses = (o.economic_side() == "buy" && mark <= price) || (o.economic_side() == "sell" && mark >= price);
            let maker = state.contracts.get(&o.symbol).map(|c| c.maker_fee).unwrap_or_default();
            crosses.then(|| (o.client_oid.clone(), price, maker))
        })
        .collect();
    for (client_oid, price, maker) in crossed {
        fill(state, &client_oid, price, maker);
    }
}

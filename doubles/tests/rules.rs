//! The Bitget double refuses what Bitget refuses, with Bitget's codes: each rule the project's
//! tests lean on is checked here against a signed HTTP call, as a client would meet it.

use base64::Engine;
use doubles::bitget::{codes, FakeBitget, KEY, PASSPHRASE, SECRET};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(double: &FakeBitget) -> Client {
        Client { http: reqwest::Client::new(), base: double.url.clone() }
    }

    async fn signed(&self, method: &str, path_and_query: &str, body: &str, timestamp_ms: i64) -> (u16, Value) {
        let ts = timestamp_ms.to_string();
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{ts}{method}{path_and_query}{body}").as_bytes());
        let sign = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let url = format!("{}{path_and_query}", self.base);
        let request = if method == "POST" { self.http.post(url).body(body.to_owned()) } else { self.http.get(url) };
        let response = request
            .header("ACCESS-KEY", KEY)
            .header("ACCESS-SIGN", sign)
            .header("ACCESS-TIMESTAMP", ts)
            .header("ACCESS-PASSPHRASE", PASSPHRASE)
            .header("Content-Type", "application/json")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path_and_query: &str) -> (u16, Value) {
        self.signed("GET", path_and_query, "", chrono::Utc::now().timestamp_millis()).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.signed("POST", path, &body.to_string(), chrono::Utc::now().timestamp_millis()).await
    }

    /// Places an order; Bitget's answer code.
    async fn place(&self, order: Value) -> String {
        let (_, body) = self.post("/api/v2/mix/order/place-order", order).await;
        body["code"].as_str().unwrap_or_default().to_owned()
    }
}

fn merged(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn order(extra: Value) -> Value {
    merged(
        json!({"symbol": "BTCUSDT", "productType": "USDT-FUTURES", "marginMode": "crossed", "marginCoin": "USDT",
               "size": "0.01", "side": "buy", "orderType": "market"}),
        extra,
    )
}

fn d(s: &str) -> rust_decimal::Decimal {
    s.parse().unwrap()
}

#[tokio::test]
async fn a_request_signed_outside_the_timestamp_window_is_refused() {
    let double = FakeBitget::start().await;
    let client = Client::new(&double);
    let path = "/api/v2/mix/account/accounts?productType=USDT-FUTURES";
    let stale = chrono::Utc::now().timestamp_millis() - 31_000;
    let (status, body) = client.signed("GET", path, "", stale).await;
    assert_eq!((status, body["code"].as_str()), (400, Some(codes::TIMESTAMP_EXPIRED)));
    assert_eq!(client.get(path).await.0, 200);
}

#[tokio::test]
async fn more_than_ten_orders_a_second_meet_429() {
    let double = FakeBitget::start().await;
    let client = Client::new(&double);
    let mut answers = Vec::new();
    for i in 0..11 {
        answers.push(client.place(order(json!({"clientOid": format!("burst-{i}")}))).await);
    }
    assert!(answers[..10].iter().all(|c| c == "00000"), "{answers:?}");
    assert_eq!(answers[10], "429");
}

#[tokio::test]
async fn precision_notional_band_and_duplicates_are_refused_with_bitgets_codes() {
    let double = FakeBitget::start().await;
    let client = Client::new(&double);
    assert_eq!(client.place(order(json!({"size": "0.0105"}))).await, codes::SIZE_PRECISION);
    assert_eq!(client.place(order(json!({"orderType": "limit", "price": "64000.05"}))).await, codes::PRICE_PRECISION);
    // A buy limit above mark × 1.05 and a sell limit below mark × 0.95; the other sides are free.
    assert_eq!(client.place(order(json!({"orderType": "limit", "price": "68300"}))).await, codes::PRICE_OUT_OF_BAND);
    assert_eq!(client.place(order(json!({"side": "sell", "orderType": "limit", "price": "61700"}))).await, codes::PRICE_OUT_OF_BAND);
    assert_eq!(client.place(order(json!({"orderType": "limit", "price": "50000", "clientOid": "low-buy"}))).await, "00000");
    // 1 DOGE at 0.15 is worth less than 5 USDT.
    assert_eq!(client.place(order(json!({"symbol": "DOGEUSDT", "size": "1"}))).await, codes::BELOW_MIN_NOTIONAL);
    assert_eq!(client.place(order(json!({"clientOid": "once"}))).await, "00000");
    assert_eq!(client.place(order(json!({"clientOid": "once"}))).await, codes::DUPLICATE_CLIENT_OID);
}

#[tokio::test]
async fn a_reduce_only_close_below_the_minimum_notional_is_accepted() {
    let double = FakeBitget::start().await;
    let client = Client::new(&double);
    double.set_position("DOGEUSDT", "long", "10", "0.15");
    assert_eq!(client.place(order(json!({"symbol": "DOGEUSDT", "size": "1", "side": "sell", "reduceOnly": "YES"}))).await, "00000");
    assert_eq!(double.position("DOGEUSDT", "long"), d("9"));
}

#[tokio::test]
async fn a_resting_limit_order_fills_at_its_price_when_the_mark_crosses_and_a_canceled_one_never_does() {
    let double = FakeBitget::start().await;
    let client = Client::new(&double);
    assert_eq!(client.place(order(json!({"orderType": "limit", "price": "64000", "clientOid": "rest-a"}))).await, "00000");
    assert_eq!(client.place(order(json!({"orderType": "limit", "price": "63000", "clientOid": "rest-b"}))).await, "00000");
    assert_eq!(double.order("rest-a").unwrap().state, "live");
    let cancel = json!({"symbol": "BTCUSDT", "productType": "USDT-FUTURES", "clientOid": "rest-b"});
    assert_eq!(client.post("/api/v2/mix/order/cancel-order", cancel).await.1["code"], "00000");
    double.set_mark("BTCUSDT", "62000");
    let a = double.order("rest-a").unwrap();
    assert_eq!((a.state.as_str(), a.price_avg), ("filled", Some(d("64000"))), "fills at its own price");
    assert_eq!(double.order("rest-b").unwrap().state, "canceled");
    assert_eq!(double.position("BTCUSDT", "long"), d("0.01"));
    let again = json!({"symbol": "BTCUSDT", "productType": "USDT-FUTURES", "clientOid": "rest-a"});
    assert_eq!(client.post("/api/v2/mix/order/cancel-order", again).await.1["code"], codes::ORDER_NOT_CANCELABLE);
}

#[tokio::test]
async fn leverage_and_margin_mode_are_per_symbol_and_locked_while_a_position_is_open() {
    let double = FakeBitget::start().await;
    let client = Client::new(&double);
    let account = |extra: Value| merged(json!({"symbol": "BTCUSDT", "productType": "USDT-FUTURES", "marginCoin": "USDT"}), extra);
    let code = |(_, body): (u16, Value)| body["code"].as_str().unwrap_or_default().to_owned();
    assert_eq!(code(client.post("/api/v2/mix/account/set-leverage", account(json!({"leverage": "3"}))).await), "00000");
    assert_eq!(
        code(client.post("/api/v2/mix/account/set-leverage", account(json!({"leverage": "126"}))).await),
        codes::LEVERAGE_OUT_OF_RANGE
    );
    assert_eq!(code(client.post("/api/v2/mix/account/set-margin-mode", account(json!({"marginMode": "isolated"}))).await), "00000");
    assert_eq!((double.leverage("BTCUSDT"), double.margin_mode("BTCUSDT").as_str()), (3, "isolated"));
    assert_eq!(double.leverage("ETHUSDT"), 20, "another symbol keeps its own");
    assert_eq!(client.place(order(json!({}))).await, "00000");
    assert_eq!(
        code(client.post("/api/v2/mix/account/set-margin-mode", account(json!({"marginMode": "crossed"}))).await),
        codes::MARGIN_MODE_LOCKED
    );
    let hedge = json!({"productType": "USDT-FUTURES", "posMode": "hedge_mode"});
    assert_eq!(code(client.post("/api/v2/mix/account/set-position-mode", hedge).await), codes::POSITION_MODE_LOCKED);
}

#[tokio::test]
async fn the_position_mode_is_on_the_single_account_and_never_on_the_list() {
    let double = FakeBitget::start().await;
    double.set_pos_mode("hedge_mode");
    let client = Client::new(&double);
    let (_, list) = client.get("/api/v2/mix/account/accounts?productType=USDT-FUTURES").await;
    assert!(list["data"][0].get("posMode").is_none(), "{list}");
    let (_, one) = client.get("/api/v2/mix/account/account?symbol=BTCUSDT&productType=USDT-FUTURES&marginCoin=USDT").await;
    assert_eq!(one["data"]["posMode"], "hedge_mode");
}

#[tokio::test]
async fn a_one_way_order_larger_than_the_opposite_position_closes_it_and_opens_the_rest() {
    let double = FakeBitget::start().await;
    let client = Client::new(&double);
    assert_eq!(client.place(order(json!({"size": "0.02"}))).await, "00000");
    assert_eq!(client.place(order(json!({"side": "sell", "size": "0.05"}))).await, "00000");
    assert_eq!(double.position("BTCUSDT", "long"), rust_decimal::Decimal::ZERO);
    assert_eq!(double.position("BTCUSDT", "short"), d("0.03"));
}

#[tokio::test]
async fn candles_are_bucketed_oldest_first_and_held_to_each_endpoints_limit() {
    let double = FakeBitget::start().await;
    let csv: String =
        (0..30).map(|i| format!("{},{o},{h},{l},{c},2\n", i * 60_000, o = 100 + i, h = 102 + i, l = 99 + i, c = 101 + i)).collect();
    let loaded = reqwest::Client::new().post(format!("{}/double/candles?symbol=BTCUSDT", double.url)).body(csv).send().await.unwrap();
    assert_eq!(loaded.status(), 200);
    let get = |q: &str| {
        let url = format!("{}{q}", double.url);
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = get("/api/v2/mix/market/candles?symbol=BTCUSDT&productType=USDT-FUTURES&granularity=5m&limit=3").await;
    assert_eq!(status, 200, "{body}");
    // The newest three five-minute buckets, oldest first, each the minutes it holds.
    assert_eq!(body["data"][0], json!(["900000", "115", "121", "114", "120", "10", "1200"]));
    assert_eq!(body["data"][2][0], "1500000");
    let (_, body) =
        get("/api/v2/mix/market/candles?symbol=BTCUSDT&productType=USDT-FUTURES&granularity=1m&startTime=60000&endTime=120000").await;
    assert_eq!(body["data"].as_array().unwrap().len(), 2, "startTime and endTime are inclusive open times");
    for (query, code) in [
        ("/api/v2/mix/market/candles?symbol=BTCUSDT&productType=USDT-FUTURES&granularity=1m&limit=1001", codes::PARAMETER_VERIFICATION),
        (
            "/api/v2/mix/market/history-candles?symbol=BTCUSDT&productType=USDT-FUTURES&granularity=1m&limit=201",
            codes::PARAMETER_VERIFICATION,
        ),
        ("/api/v2/mix/market/candles?symbol=BTCUSDT&productType=USDT-FUTURES&granularity=2m", codes::PARAMETER_VERIFICATION),
        ("/api/v2/mix/market/candles?symbol=NOPEUSDT&productType=USDT-FUTURES&granularity=1m", codes::SYMBOL_NOT_FOUND),
        ("/api/v2/mix/market/candles?symbol=BTCUSDT&granularity=1m", codes::PARAMETER_VERIFICATION),
    ] {
        let (status, body) = get(query).await;
        assert_eq!((status, body["code"].as_str()), (400, Some(code)), "{query}: {body}");
    }
    // A tick moves the forming minute, or starts the next one.
    double.tick("BTCUSDT", 29 * 60_000 + 10_000, "140".parse().unwrap());
    double.tick("BTCUSDT", 30 * 60_000 + 1, "90".parse().unwrap());
    let (_, body) = get("/api/v2/mix/market/candles?symbol=BTCUSDT&productType=USDT-FUTURES&granularity=1m&limit=2").await;
    assert_eq!(body["data"][0], json!(["1740000", "129", "140", "128", "140", "2", "280"]));
    assert_eq!(body["data"][1], json!(["1800000", "90", "90", "90", "90", "0", "0"]));
}

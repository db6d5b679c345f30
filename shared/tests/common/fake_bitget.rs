//! A local fake of Bitget's v2 futures API that checks what the real one checks: every private
//! call's HMAC signature, timestamp window, passphrase and demo header, the account's position
//! mode, duplicate client order ids and the place-order rate limit. Faults are scripted per path.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
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
}

#[derive(Debug, Clone)]
pub struct Key {
    pub secret: String,
    pub passphrase: String,
    pub demo: bool,
}

#[derive(Default)]
pub struct FakeState {
    pub keys: HashMap<String, Key>,
    pub pos_mode: String,
    pub marks: HashMap<String, Decimal>,
    /// (symbol, "long" | "short") → (size, entry)
    pub positions: HashMap<(String, String), (Decimal, Decimal)>,
    pub orders: HashMap<String, Value>,
    pub faults: VecDeque<(String, Fault)>,
    pub calls: HashMap<String, u32>,
    pub rejected_signatures: u32,
    place_times: HashMap<String, VecDeque<Instant>>,
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

impl FakeBitget {
    pub async fn start() -> FakeBitget {
        let mut state = FakeState { pos_mode: "one_way_mode".into(), ..Default::default() };
        state.keys.insert(KEY.into(), Key { secret: SECRET.into(), passphrase: PASSPHRASE.into(), demo: false });
        state.keys.insert(DEMO_KEY.into(), Key { secret: SECRET.into(), passphrase: PASSPHRASE.into(), demo: true });
        state.marks.insert("BTCUSDT".into(), "65000".parse().unwrap());
        state.marks.insert("ETHUSDT".into(), "3200".parse().unwrap());
        let state = Arc::new(Mutex::new(state));
        let app = axum::Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        FakeBitget { url, state }
    }

    pub fn fault(&self, path: &str, fault: Fault) {
        self.state.lock().unwrap().faults.push_back((path.to_owned(), fault));
    }
    pub fn calls(&self, path: &str) -> u32 {
        self.state.lock().unwrap().calls.get(path).copied().unwrap_or(0)
    }
    pub fn order_count(&self) -> usize {
        self.state.lock().unwrap().orders.len()
    }
    pub fn rejected_signatures(&self) -> u32 {
        self.state.lock().unwrap().rejected_signatures
    }
    pub fn set_mark(&self, symbol: &str, price: &str) {
        self.state.lock().unwrap().marks.insert(symbol.into(), price.parse().unwrap());
    }
    pub fn set_position(&self, symbol: &str, side: &str, size: &str, entry: &str) {
        self.state.lock().unwrap().positions.insert((symbol.into(), side.into()), (size.parse().unwrap(), entry.parse().unwrap()));
    }
    pub fn position(&self, symbol: &str, side: &str) -> Decimal {
        self.state.lock().unwrap().positions.get(&(symbol.to_owned(), side.to_owned())).map(|p| p.0).unwrap_or_default()
    }
    pub fn set_pos_mode(&self, mode: &str) {
        self.state.lock().unwrap().pos_mode = mode.into();
    }
}

fn ok(data: Value) -> Response {
    (StatusCode::OK, axum::Json(json!({"code": "00000", "msg": "success", "requestTime": 0, "data": data}))).into_response()
}

fn err(status: StatusCode, code: &str, msg: &str) -> Response {
    (status, axum::Json(json!({"code": code, "msg": msg, "requestTime": 0, "data": null}))).into_response()
}

fn verify(state: &mut FakeState, method: &Method, uri: &Uri, headers: &HeaderMap, body: &str) -> Result<String, Box<Response>> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (key, sig, ts, pass) = (h("ACCESS-KEY"), h("ACCESS-SIGN"), h("ACCESS-TIMESTAMP"), h("ACCESS-PASSPHRASE"));
    let Some(k) = state.keys.get(&key).cloned() else {
        state.rejected_signatures += 1;
        return Err(Box::new(err(StatusCode::BAD_REQUEST, "40006", "Invalid ACCESS_KEY")));
    };
    let now = chrono::Utc::now().timestamp_millis();
    if ts.parse::<i64>().map(|t| (now - t).abs() > 30_000).unwrap_or(true) {
        state.rejected_signatures += 1;
        return Err(Box::new(err(StatusCode::BAD_REQUEST, "40008", "Request timestamp expired")));
    }
    if pass != k.passphrase {
        state.rejected_signatures += 1;
        return Err(Box::new(err(StatusCode::BAD_REQUEST, "40012", "apikey/password is incorrect")));
    }
    let path_and_query = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(k.secret.as_bytes()).unwrap();
    mac.update(format!("{ts}{}{path_and_query}{body}", method.as_str()).as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if sig != expected {
        state.rejected_signatures += 1;
        return Err(Box::new(err(StatusCode::BAD_REQUEST, "40009", "sign signature error")));
    }
    let paptrading = h("paptrading") == "1";
    if paptrading != k.demo {
        state.rejected_signatures += 1;
        return Err(Box::new(err(StatusCode::BAD_REQUEST, "40099", "demo keys need paptrading: 1 and live keys must not send it")));
    }
    Ok(key)
}

async fn handle(State(shared): State<Arc<Mutex<FakeState>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let body = String::from_utf8_lossy(&body).into_owned();
    let fault = {
        let mut state = shared.lock().unwrap();
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
        Some(Fault::Code(code)) => return err(StatusCode::BAD_REQUEST, code, "scripted error"),
        _ => {}
    }
    let accept_then_timeout = matches!(fault, Some(Fault::AcceptThenTimeout));
    let response = {
        let mut state = shared.lock().unwrap();
        route(&mut state, &method, &uri, &headers, &path, &body)
    };
    if accept_then_timeout {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    response
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query().unwrap_or("").split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn route(state: &mut FakeState, method: &Method, uri: &Uri, headers: &HeaderMap, path: &str, body: &str) -> Response {
    let q = query(uri);
    match (method.as_str(), path) {
        ("GET", "/api/v2/mix/market/tickers") => ok(Value::Array(
            state.marks.iter().map(|(s, p)| json!({"symbol": s, "markPrice": p.to_string(), "lastPr": p.to_string()})).collect(),
        )),
        ("GET", "/api/v2/mix/market/symbol-price") => match state.marks.get(q.get("symbol").map(String::as_str).unwrap_or("")) {
            Some(p) => ok(json!([{"symbol": q["symbol"], "price": p.to_string(), "markPrice": p.to_string()}])),
            None => err(StatusCode::BAD_REQUEST, "40034", "Parameter symbol does not exist"),
        },
        ("GET", "/api/v2/mix/market/contracts") => {
            let v: Value = serde_json::from_str(include_str!("../../data/contracts.json")).unwrap();
            ok(v["data"].clone())
        }
        _ => {
            let key = match verify(state, method, uri, headers, body) {
                Ok(k) => k,
                Err(r) => return *r,
            };
            private(state, &key, method.as_str(), path, &q, body)
        }
    }
}

fn private(state: &mut FakeState, key: &str, method: &str, path: &str, q: &HashMap<String, String>, body: &str) -> Response {
    match (method, path) {
        ("GET", "/api/v2/mix/account/accounts") => {
            let upl: Decimal = state.positions.iter().map(|((s, side), (size, entry))| {
                let mark = state.marks.get(s).copied().unwrap_or(*entry);
                (mark - entry) * size * if side == "long" { Decimal::ONE } else { Decimal::NEGATIVE_ONE }
            }).sum();
            ok(json!([{"marginCoin": "USDT", "available": "9000", "accountEquity": (Decimal::from(10000) + upl).to_string(), "usdtEquity": (Decimal::from(10000) + upl).to_string(), "unrealizedPL": upl.to_string(), "posMode": state.pos_mode}]))
        }
        ("GET", "/api/v2/mix/position/all-position") => ok(Value::Array(
            state
                .positions
                .iter()
                .filter(|(_, (size, _))| !size.is_zero())
                .map(|((s, side), (size, entry))| {
                    let mark = state.marks.get(s).copied().unwrap_or(*entry);
                    let upl = (mark - entry) * size * if side == "long" { Decimal::ONE } else { Decimal::NEGATIVE_ONE };
                    json!({"symbol": s, "holdSide": side, "total": size.to_string(), "openPriceAvg": entry.to_string(), "markPrice": mark.to_string(), "unrealizedPL": upl.to_string(), "marginCoin": "USDT"})
                })
                .collect(),
        )),
        ("GET", "/api/v2/mix/order/detail") => match q.get("clientOid").and_then(|c| state.orders.get(c)) {
            Some(order) => ok(order.clone()),
            None => err(StatusCode::BAD_REQUEST, "40109", "The data of the order cannot be found"),
        },
        ("POST", "/api/v2/mix/order/place-order") => place(state, key, body),
        _ => err(StatusCode::NOT_FOUND, "40404", "Request URL NOT FOUND"),
    }
}

fn place(state: &mut FakeState, key: &str, body: &str) -> Response {
    let now = Instant::now();
    let times = state.place_times.entry(key.to_owned()).or_default();
    while times.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(1)) {
        times.pop_front();
    }
    if times.len() >= 10 {
        return err(StatusCode::TOO_MANY_REQUESTS, "429", "Too Many Requests");
    }
    times.push_back(now);
    let Ok(order) = serde_json::from_str::<Value>(body) else {
        return err(StatusCode::BAD_REQUEST, "40017", "Parameter verification failed");
    };
    let s = |k: &str| order[k].as_str().unwrap_or("").to_owned();
    let (symbol, side, client_oid) = (s("symbol"), s("side"), s("clientOid"));
    if s("productType") != "USDT-FUTURES" || s("marginCoin") != "USDT" || client_oid.is_empty() {
        return err(StatusCode::BAD_REQUEST, "40017", "Parameter verification failed");
    }
    let hedge = state.pos_mode == "hedge_mode";
    if hedge != order.get("tradeSide").is_some() {
        return err(StatusCode::BAD_REQUEST, "40774", "The order type for unilateral position must also be the unilateral position type.");
    }
    if state.orders.contains_key(&client_oid) {
        return err(StatusCode::BAD_REQUEST, "40786", "Duplicate clientOid");
    }
    let Ok(size) = s("size").parse::<Decimal>() else {
        return err(StatusCode::BAD_REQUEST, "40017", "size");
    };
    let Some(mark) = state.marks.get(&symbol).copied() else {
        return err(StatusCode::BAD_REQUEST, "40034", "symbol");
    };
    // Which position the order moves, and in which direction.
    let (hold, opening) = if hedge {
        let closing = s("tradeSide") == "close";
        (if side == "buy" { "long" } else { "short" }, !closing)
    } else {
        let long = state.positions.get(&(symbol.clone(), "long".into())).map(|p| p.0).unwrap_or_default();
        let short = state.positions.get(&(symbol.clone(), "short".into())).map(|p| p.0).unwrap_or_default();
        let reduce = s("reduceOnly") == "YES";
        match side.as_str() {
            "buy" if short > Decimal::ZERO => ("short", false),
            "sell" if long > Decimal::ZERO => ("long", false),
            _ if reduce => return err(StatusCode::BAD_REQUEST, "22002", "No position to close"),
            "buy" => ("long", true),
            _ => ("short", true),
        }
    };
    let entry = state.positions.entry((symbol.clone(), hold.to_owned())).or_insert((Decimal::ZERO, mark));
    let mut realized = Decimal::ZERO;
    if opening {
        entry.1 = if entry.0.is_zero() { mark } else { (entry.0 * entry.1 + size * mark) / (entry.0 + size) };
        entry.0 += size;
    } else {
        let closed = size.min(entry.0);
        realized = (mark - entry.1) * closed * if hold == "long" { Decimal::ONE } else { Decimal::NEGATIVE_ONE };
        entry.0 -= closed;
    }
    let order_id = format!("{}", 1_000_000 + state.orders.len());
    let fee = size * mark * Decimal::new(6, 4);
    state.orders.insert(
        client_oid.clone(),
        json!({"orderId": order_id, "clientOid": client_oid, "symbol": symbol, "state": "filled", "baseVolume": size.to_string(), "priceAvg": mark.to_string(), "fee": (-fee).to_string(), "totalProfits": realized.to_string(), "side": side}),
    );
    ok(json!({"orderId": order_id, "clientOid": client_oid}))
}

//! Scale benchmark of the strategy runner and the backtest (not a timed test), on the local
//! stack. Seeds BOTS (10,000) running paper `ema_cross` bots (1m, 9/21) on BTCUSDT and ETHUSDT,
//! loads a candle series into the Bitget double, then measures and prints:
//!
//! - the deployed fan-out (one run per shard, all at once) at a minute where no bot crosses: the
//!   common case, candles fetched once per market and no partition read;
//! - the same at the minute every bot crosses: one order per bot (the worst case);
//! - a backtest over 10,000 one-minute candles, through `backtest::run` (history pages from the
//!   double, paced at Bitget's 20 calls a second) and its simulation alone.
//!
//! Run it through `bench/strategy_scale.sh`.

use futures::StreamExt;
use rust_decimal::Decimal;
use shared::keys::GUARDIAN_SHARDS;
use shared::state::Table;
use shared::trading::candles::Interval;
use shared::trading::strategy::{EmaCross, Strategy};
use std::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
const MINUTE: i64 = 60_000;

fn candle(price: i64) -> doubles::bitget::Candle {
    let p = Decimal::from(price);
    doubles::bitget::Candle { open: p, high: p + Decimal::from(5), low: p - Decimal::from(5), close: p, volume: Decimal::ONE }
}

async fn fan_out(state: &shared::AppState, now_ms: i64) -> serde_json::Value {
    let started = Instant::now();
    let runs: Vec<_> = futures::stream::iter(0..GUARDIAN_SHARDS)
        .map(|shard| async move {
            let began = Instant::now();
            let report = shared::trading::runner::run(state, &[shard], now_ms).await;
            (began.elapsed().as_millis() as u64, report)
        })
        .buffer_unordered(usize::from(GUARDIAN_SHARDS))
        .collect()
        .await;
    serde_json::json!({
        "wall_ms": started.elapsed().as_millis() as u64,
        "slowest_shard_ms": runs.iter().map(|r| r.0).max(),
        "bots_seen": runs.iter().map(|r| r.1.bots_seen).sum::<u32>(),
        "bots_acting": runs.iter().map(|r| r.1.bots_evaluated).sum::<u32>(),
        "orders_sent": runs.iter().map(|r| r.1.orders_sent).sum::<u32>(),
        "candle_calls": runs.iter().map(|r| r.1.candle_calls).sum::<u32>(),
        "errors": runs.iter().map(|r| r.1.errors.len()).sum::<usize>(),
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let bots: usize = std::env::var("BOTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let sdk = shared::aws::sdk_config().expect("the local stack's AWS environment");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let exchange = doubles::bitget::FakeBitget::start().await;
    let lookup = |k: &str| match k {
        "BITGET_BASE_URL" => Some(exchange.url.clone()),
        "TABLE_NAME" => Some(format!("scale-{id}")),
        "JWT_SECRET_ID" => Some(format!("scale/{id}/jwt")),
        "ENCRYPTION_SECRET_ID" => Some(format!("scale/{id}/enc")),
        "TELEGRAM_SECRET_ID" => Some(format!("scale/{id}/telegram")),
        "TELEGRAM_BASE_URL" => Some("http://127.0.0.1:9".into()),
        _ => std::env::var(k).ok(),
    };
    let config = shared::config::Config::from_lookup(lookup)?;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    ops::devstack::create_table(&dynamo, &config.table_name, include_str!("../../template.yaml")).await?;
    ops::devstack::seed_secrets(&aws_sdk_secretsmanager::Client::new(&sdk), &config).await?;
    let table = config.table_name.clone();
    let state = shared::AppState::all(config, sdk.clone()).await.map_err(|e| e.to_string())?;

    // 10,100 one-minute candles ending 200 minutes ago: flat, then a jump at the last one.
    let now = chrono::Utc::now().timestamp_millis() / MINUTE * MINUTE;
    let count = 10_100i64;
    let t0 = now - (count + 200) * MINUTE;
    for (symbol, base) in [("BTCUSDT", 65_000i64), ("ETHUSDT", 3_200)] {
        let mut series: Vec<(i64, doubles::bitget::Candle)> =
            (0..count - 1).map(|i| (t0 + i * MINUTE, candle(base + (i % 7) - 3))).collect();
        series.push((t0 + (count - 1) * MINUTE, candle(base + base / 50)));
        exchange.load_candles(symbol, series);
        state.trading_store().set_mark(symbol, Decimal::from(base + base / 50)).await.map_err(|e| e.to_string())?;
    }
    let strategy = Strategy::EmaCross(EmaCross { interval: Interval::M1, fast: 9, slow: 21, size: "0.01".parse()?, allow_short: false });

    let seeding = Instant::now();
    let mut items = Vec::with_capacity(bots * 2);
    for i in 0..bots {
        let symbol = if i % 2 == 0 { "BTCUSDT" } else { "ETHUSDT" };
        let user = uuid::Uuid::new_v4().to_string();
        items.extend(ops::devstack::running_strategy_bot(&user, symbol, strategy, t0)?);
    }
    ops::devstack::put_items(&dynamo, &table, items).await?;
    let seeded_ms = seeding.elapsed().as_millis() as u64;

    let quiet = fan_out(&state, t0 + (count - 1) * MINUTE).await;
    let crossing = fan_out(&state, t0 + count * MINUTE).await;

    let backtest = shared::trading::backtest::Backtest {
        config: shared::trading::store::BotConfig {
            symbol: "BTCUSDT".into(),
            leverage: 10,
            stop_loss_pct: Decimal::from(5),
            take_profit_pct: None,
            trailing_stop_pct: None,
            max_position_notional: Decimal::from(100_000),
            margin_mode: Default::default(),
            strategy,
        },
        interval: Interval::M1,
        from_ms: t0 + 100 * MINUTE,
        to_ms: t0 + count * MINUTE,
        start_balance: Decimal::from(10_000),
    };
    let began = Instant::now();
    let report = shared::trading::backtest::run(&state, &backtest).await.map_err(|e| e.to_string())?;
    let backtest_ms = began.elapsed().as_millis() as u64;
    let history_calls = exchange.calls("/api/v2/mix/market/history-candles");
    let specs = state.bitget.contracts().await?;
    let candles = shared::trading::candles::history(&state.bitget, "BTCUSDT", Interval::M1, backtest.from_ms, backtest.to_ms, now).await?;
    let began = Instant::now();
    let simulated =
        shared::trading::backtest::simulate(&backtest.config, &specs["BTCUSDT"], &candles, Interval::M1, backtest.start_balance);
    let simulate_ms = began.elapsed().as_millis() as u64;

    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "bots": bots,
            "seeding_ms": seeded_ms,
            "fan_out_quiet_minute": quiet,
            "fan_out_every_bot_crosses": crossing,
            "backtest": {
                "candles": candles.len(),
                "total_ms": backtest_ms,
                "history_calls": history_calls,
                "simulate_ms": simulate_ms,
                "trades": report.trades.len(),
                "same_as_run": simulated == report,
            },
        }))?
    );
    Ok(())
}

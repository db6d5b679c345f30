//! Scale benchmark of one guardian run (not a timed test): seeds BOTS (10,000) running paper bots,
//! each with an open position, into the local stack, triggers 1 % of them, runs one sweep and
//! prints wall time, backend calls by kind and peak memory. Run it through `bench/guardian_scale.sh`.

use shared::guardian::{sweep, SweepStats};
use shared::keys;
use shared::trading::model::{ExchangeKind, PositionSide};
use shared::trading::store::{BotConfig, BotRecord, BotState, PaperPosition};
use std::time::{Duration, Instant};

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let bots: usize = std::env::var("BOTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let lookup = |k: &str| match k {
        "TABLE_NAME" => Some(format!("scale-{id}")),
        "JWT_SECRET_ID" => Some(format!("scale/{id}/jwt")),
        "ENCRYPTION_SECRET_ID" => Some(format!("scale/{id}/enc")),
        "TELEGRAM_SECRET_ID" => Some(format!("scale/{id}/telegram")),
        "TELEGRAM_BASE_URL" => Some("http://127.0.0.1:9".into()),
        _ => std::env::var(k).ok(),
    };
    let config = shared::config::Config::from_lookup(lookup)?;
    let sdk = shared::aws::sdk_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    shared::devstack::create_table(&dynamo, &config.table_name, include_str!("../../template.yaml")).await?;
    shared::devstack::seed_secrets(&aws_sdk_secretsmanager::Client::new(&sdk), &config).await?;
    let table = config.table_name.clone();
    let state = shared::AppState::new(config, &sdk).map_err(|e| e.to_string())?;
    state.trading_store().set_mark("BTCUSDT", "65000".parse()?).await.map_err(|e| e.to_string())?;
    state.trading_store().set_mark("ETHUSDT", "3200".parse()?).await.map_err(|e| e.to_string())?;

    let seeding = Instant::now();
    let symbols = [("BTCUSDT", "65000", "0.01"), ("ETHUSDT", "3200", "0.1")];
    let mut items = Vec::with_capacity(bots * 2);
    for i in 0..bots {
        let user = uuid::Uuid::new_v4().to_string();
        let (symbol, mark, size) = symbols[i % 2];
        // Every hundredth position is 5 % under water: its stop-loss (2 %) triggers.
        let entry: rust_decimal::Decimal =
            if i % 100 == 0 { mark.parse::<rust_decimal::Decimal>()? * rust_decimal::Decimal::new(105, 2) } else { mark.parse()? };
        let bot = BotRecord {
            user_id: user.clone(),
            state: BotState::Running,
            config: BotConfig {
                symbol: symbol.into(),
                leverage: 5,
                stop_loss_pct: "2".parse()?,
                take_profit_pct: Some("50".parse()?),
                trailing_stop_pct: None,
                max_position_notional: "100000".parse()?,
            },
            version: 1,
            exchange: ExchangeKind::Paper,
            updated_at: "2026-11-24T00:00:00Z".into(),
            stop_id: None,
        };
        let mut bot_item = keys::with_key(serde_dynamo::to_item(&bot)?, keys::bot(&user));
        bot_item.extend(keys::active_bot_index(&user));
        let position = PaperPosition {
            symbol: symbol.into(),
            side: PositionSide::Long,
            size: size.parse()?,
            entry_price: entry,
            leverage: 5,
            margin: "100".parse()?,
            version: 1,
            high_water: None,
        };
        let mut position_item = keys::with_key(serde_dynamo::to_item(&position)?, keys::paper_position(&user, symbol));
        position_item.extend(keys::active_position_index(&user, symbol));
        items.push(bot_item);
        items.push(position_item);
    }
    let writes = futures::stream::iter(items.chunks(25).map(|chunk| {
        let requests: Vec<_> = chunk
            .iter()
            .map(|item| {
                aws_sdk_dynamodb::types::WriteRequest::builder()
                    .put_request(aws_sdk_dynamodb::types::PutRequest::builder().set_item(Some(item.clone())).build().unwrap())
                    .build()
            })
            .collect();
        let dynamo = dynamo.clone();
        let table = table.clone();
        async move {
            let mut pending = std::collections::HashMap::from([(table.clone(), requests)]);
            while !pending.is_empty() {
                let out = dynamo.batch_write_item().set_request_items(Some(pending.clone())).send().await.map_err(|e| e.to_string())?;
                pending = out.unprocessed_items.unwrap_or_default().into_iter().filter(|(_, v)| !v.is_empty()).collect();
            }
            Ok::<_, String>(())
        }
    }));
    use futures::StreamExt;
    let results: Vec<_> = writes.buffer_unordered(8).collect().await;
    results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let seeded_in = seeding.elapsed();

    let baseline_kib = peak_rss_kib();
    // Reset the high-water mark so the figure is the sweep's, not the seeding's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let stats = SweepStats::default();
    let started = Instant::now();
    let report = sweep(&state, Instant::now() + Duration::from_secs(15 * 60), &stats).await;
    let wall = started.elapsed();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "bots": bots,
            "seeding_ms": seeded_in.as_millis() as u64,
            "sweep_wall_ms": wall.as_millis() as u64,
            "bots_checked": report.bots_checked,
            "positions_checked": report.positions_checked,
            "closed": report.closed.len(),
            "errors": report.errors.len(),
            "calls": stats.snapshot(),
            "peak_rss_kib_during_sweep": peak_rss_kib(),
            "peak_rss_kib_before_sweep": baseline_kib,
        }))?
    );
    Ok(())
}

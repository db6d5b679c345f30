//! Scale benchmark of the guardian (not a timed test): seeds BOTS (10,000) running paper bots,
//! each with an open position, into the local stack, 1 % of them past their stop, then measures
//! two things and prints them with the backend calls by kind and peak memory:
//!
//! - the deployed fan-out: one run per shard, all at once (the schedule starts one invocation per
//!   shard); its wall time is the slowest shard's;
//! - one run over every shard in one process (what a single invocation would face unsharded), on
//!   a fresh copy of the same bots, unless FAN_OUT_ONLY=1.
//!
//! Run it through `bench/guardian_scale.sh`.

use futures::StreamExt;
use rust_decimal::Decimal;
use shared::guardian::{sweep_shards, SweepStats, PAGE_SIZE};
use shared::keys::GUARDIAN_SHARDS;
use shared::state::Table;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// A fresh table and state with `bots` running bots, every hundredth 5 % under water.
async fn seeded_state(bots: usize, sdk: &shared::aws::SdkConfig) -> Result<(shared::AppState, Duration), BoxError> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    // Contract specs (the paper account's fees and steps) come from the Bitget double.
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
    let dynamo = aws_sdk_dynamodb::Client::new(sdk);
    ops::devstack::create_table(&dynamo, &config.table_name, include_str!("../../template.yaml")).await?;
    ops::devstack::seed_secrets(&aws_sdk_secretsmanager::Client::new(sdk), &config).await?;
    let table = config.table_name.clone();
    let state = shared::AppState::all(config, sdk.clone()).await.map_err(|e| e.to_string())?;
    state.trading_store().set_mark("BTCUSDT", "65000".parse()?).await.map_err(|e| e.to_string())?;
    state.trading_store().set_mark("ETHUSDT", "3200".parse()?).await.map_err(|e| e.to_string())?;

    let seeding = Instant::now();
    let symbols = [("BTCUSDT", "65000", "0.01"), ("ETHUSDT", "3200", "0.1")];
    let mut items = Vec::with_capacity(bots * 2);
    for i in 0..bots {
        let (symbol, mark, size) = symbols[i % 2];
        let mark: Decimal = mark.parse()?;
        // Every hundredth position is 5 % under water: its stop-loss (2 %) triggers.
        let entry = if i % 100 == 0 { mark * Decimal::new(105, 2) } else { mark };
        let user = uuid::Uuid::new_v4().to_string();
        items.extend(ops::devstack::running_paper_bot(&user, symbol, size.parse()?, entry, "2".parse()?)?);
    }
    let mut seeded = 0;
    for chunk in items.chunks(20_000) {
        ops::devstack::put_items(&dynamo, &table, chunk.to_vec()).await?;
        seeded += chunk.len();
        eprintln!("seeded {seeded} items in {:?}", seeding.elapsed());
    }
    Ok((state, seeding.elapsed()))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let bots: usize = std::env::var("BOTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let sdk = shared::aws::sdk_config().expect("the local stack's AWS environment");
    let all: Vec<u16> = (0..GUARDIAN_SHARDS).collect();
    let deadline = || Instant::now() + Duration::from_secs(15 * 60);

    // The fan-out: one run per shard, all at once, each with its own counters.
    let (state, seeded_in) = seeded_state(bots, &sdk).await?;
    let started = Instant::now();
    let fan_state = &state;
    let runs: Vec<_> = futures::stream::iter(all.iter().copied())
        .map(|shard| async move {
            let stats = SweepStats::default();
            let began = Instant::now();
            let report = sweep_shards(fan_state, &[shard], deadline(), &stats, PAGE_SIZE).await;
            (shard, began.elapsed(), report, stats.snapshot())
        })
        .buffer_unordered(all.len())
        .collect()
        .await;
    let fan_out_wall = started.elapsed();

    // One run over every shard in one process, on a fresh copy of the bots (skipped with
    // FAN_OUT_ONLY=1: seeding a second copy of 100,000 bots takes longer than the runs).
    let whole = if std::env::var("FAN_OUT_ONLY").is_ok_and(|v| v == "1") {
        serde_json::Value::Null
    } else {
        let (state, _) = seeded_state(bots, &sdk).await?;
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let stats = SweepStats::default();
        let started = Instant::now();
        let report = sweep_shards(&state, &all, deadline(), &stats, PAGE_SIZE).await;
        serde_json::json!({
            "wall_ms": started.elapsed().as_millis() as u64,
            "bots_checked": report.bots_checked,
            "positions_checked": report.positions_checked,
            "closed": report.closed.len(),
            "errors": report.errors.len(),
            "calls": stats.snapshot(),
            "peak_rss_kib": peak_rss_kib(),
        })
    };
    let per_shard: Vec<serde_json::Value> = runs
        .iter()
        .map(|(shard, wall, report, calls)| {
            serde_json::json!({"shard": shard, "wall_ms": wall.as_millis() as u64, "bots_checked": report.bots_checked, "closed": report.closed.len(), "errors": report.errors.len(), "calls": calls})
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "bots": bots,
            "shards": GUARDIAN_SHARDS,
            "seeding_ms": seeded_in.as_millis() as u64,
            "one_run_over_all_shards": whole,
            "fan_out_one_run_per_shard_at_once": {
                "wall_ms": fan_out_wall.as_millis() as u64,
                "bots_checked": runs.iter().map(|r| r.2.bots_checked).sum::<u32>(),
                "closed": runs.iter().map(|r| r.2.closed.len()).sum::<usize>(),
                "errors": runs.iter().map(|r| r.2.errors.len()).sum::<usize>(),
                "largest_shard_bots": runs.iter().map(|r| r.2.bots_checked).max(),
                "per_shard": per_shard,
            },
        }))?
    );
    Ok(())
}

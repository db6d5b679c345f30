//! Live push, measured against the local stack (`bench/live_latency.sh` starts it): the time from
//! a stop request to its push arriving on the user's second connection, 20 times over (start,
//! wait for the push, stop, time it), then the broadcast function's own time per stream record,
//! re-delivering every batch the stream gave (with both connections open).

#[path = "../tests/common/mod.rs"]
mod common;

use common::live::*;
use common::*;
use serde_json::json;
use shared::handlers::trading as t;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let live = live().await;
    let app = &live.app;
    let user = sign_up(app).await;
    let (mut first, mut second) = (live.connect(&user.access).await, live.connect(&user.access).await);
    let config = json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "2", "max_position_notional": "20000"});
    let mut took = Vec::new();
    for _ in 0..20 {
        assert_eq!(app.call_as(t::start_bot, &user.access, "POST", "/api/v1/bot/start", Some(config.clone())).await.status, 200);
        for socket in [&mut first, &mut second] {
            next_matching(socket, Duration::from_secs(5), |m| m["type"] == "bot" && m["state"] == "running").await.expect("start pushed");
        }
        let asked = Instant::now();
        assert_eq!(app.call_as(t::stop_bot, &user.access, "POST", "/api/v1/bot/stop", None).await.status, 200);
        next_matching(&mut second, Duration::from_secs(5), |m| m["type"] == "bot" && m["state"] == "stopped").await.expect("stop pushed");
        took.push(asked.elapsed());
        next_matching(&mut first, Duration::from_secs(5), |m| m["type"] == "bot" && m["state"] == "stopped").await.expect("stop pushed");
    }
    took.sort();
    println!(
        "stop request → push on the second connection, 20 stops: median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        percentile(&took, 0.5).as_secs_f64() * 1e3,
        percentile(&took, 0.9).as_secs_f64() * 1e3,
        took.last().unwrap().as_secs_f64() * 1e3
    );
    let batches: Vec<serde_json::Value> = live.delivered.lock().unwrap().clone();
    let (mut records, mut changes, mut spent) = (0, 0, Duration::ZERO);
    for round in 0..5 {
        for batch in &batches {
            let event: shared::live::stream::StreamEvent = serde_json::from_value(batch.clone()).unwrap();
            let started = Instant::now();
            let report = shared::live::broadcast::handle(&app.state, &live.management, event).await.expect("broadcast");
            spent += started.elapsed();
            if round == 0 {
                records += report.records;
                changes += report.changes;
            }
        }
    }
    println!(
        "broadcast: {records} records ({changes} changes users see) in {} batches, {:.2} ms per record, {:.2} ms per change pushed to 2 connections (5 rounds)",
        batches.len(),
        spent.as_secs_f64() * 1e3 / (5 * records.max(1)) as f64,
        spent.as_secs_f64() * 1e3 / (5 * changes.max(1)) as f64
    );
}

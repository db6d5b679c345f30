//! Prints, as JSON, what this project's Bitget client reads from an endpoint, so `make test` can
//! check that ccxt's own bitget client reads the same values from the Bitget double.
//!
//! `bitget_read BASE_URL account | positions | marks | position-mode SYMBOL | order SYMBOL CLIENT_OID |
//!  candles SYMBOL GRANULARITY NOW_MS COUNT | history SYMBOL GRANULARITY FROM_MS TO_MS NOW_MS`
//! with the keys in BITGET_KEY, BITGET_SECRET and BITGET_PASSPHRASE.

use shared::secrets::Secret;
use shared::trading::bitget::{BitgetClient, BitgetCredentials, BitgetExchange};
use shared::trading::exchange::Exchange;
use std::sync::Arc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn env(key: &str) -> Result<String, BoxError> {
    std::env::var(key).map_err(|_| format!("{key} is not set").into())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (base_url, command) = match args.as_slice() {
        [base, command, ..] => (base.as_str(), command.as_str()),
        _ => return Err("usage: bitget_read BASE_URL account|positions|marks|position-mode SYMBOL|order SYMBOL CLIENT_OID".into()),
    };
    let creds = BitgetCredentials {
        api_key: env("BITGET_KEY")?,
        api_secret: Secret::new(env("BITGET_SECRET")?),
        passphrase: Secret::new(env("BITGET_PASSPHRASE")?),
        demo: false,
    };
    let client = Arc::new(BitgetClient::new(reqwest::Client::new(), base_url));
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or_else(|| format!("{command} needs more arguments"));
    let out = match command {
        "marks" => serde_json::to_value(client.mark_prices().await?)?,
        "position-mode" => serde_json::json!(client.position_mode(&creds, arg(2)?).await?),
        "candles" | "history" => {
            use shared::trading::candles::{history, recent_closed, Interval};
            let interval = Interval::parse(arg(3)?).ok_or("granularity is 1m, 5m, 15m, 1H or 4H")?;
            let n = |i: usize| -> Result<i64, BoxError> { Ok(arg(i)?.parse::<i64>()?) };
            let candles = match command {
                "candles" => recent_closed(&client, arg(2)?, interval, n(4)?, n(5)? as u32).await?,
                _ => history(&client, arg(2)?, interval, n(4)?, n(5)?, n(6)?).await?,
            };
            serde_json::to_value(candles)?
        }
        _ => {
            let position_mode = client.position_mode(&creds, "BTCUSDT").await?;
            // Crossed, as ccxt's orders are in the check.
            let margin_mode = shared::trading::model::MarginMode::Crossed;
            let exchange = BitgetExchange { client: client.clone(), creds, position_mode, margin_mode };
            match command {
                "account" => serde_json::to_value(exchange.account().await?)?,
                "positions" => serde_json::to_value(exchange.positions().await?)?,
                "order" => serde_json::to_value(exchange.find_order(arg(2)?, arg(3)?).await?)?,
                "fills" => match exchange.fills(arg(2)?.parse()?, arg(3)?.parse()?).await? {
                    shared::trading::bitget::FillSpan::Complete(fills) => serde_json::to_value(fills)?,
                    shared::trading::bitget::FillSpan::TooMany { .. } => return Err("more fills than one read takes".into()),
                },
                "ended-orders" => {
                    serde_json::to_value(exchange.ended_order_client_ids(arg(2)?.parse()?, arg(3)?.parse()?, &Default::default()).await?)?
                }
                other => return Err(format!("unknown command {other}").into()),
            }
        }
    };
    println!("{out}");
    Ok(())
}

//! Operator and developer commands against the configured stack (local emulator or AWS):
//!   localstack create-table | seed-secrets | set-price SYMBOL PRICE | kill-switch on|off

use shared::config::Config;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = Config::from_env()?;
    let sdk = shared::aws::sdk_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["create-table"] => {
            let template = std::fs::read_to_string("template.yaml")?;
            shared::devstack::create_table(&dynamo, &config.table_name, &template).await?;
            println!("table {} ready", config.table_name);
        }
        ["seed-secrets"] => {
            if !config.is_local() {
                return Err("seed-secrets generates development secrets and only runs with APP_ENV=local".into());
            }
            shared::devstack::seed_secrets(&aws_sdk_secretsmanager::Client::new(&sdk), &config).await?;
            println!("secrets seeded: {}, {}, {}", config.jwt_secret_id, config.encryption_secret_id, config.telegram_secret_id);
        }
        ["set-price", symbol, price] => {
            let price: rust_decimal::Decimal = price.parse().map_err(|_| "PRICE must be a decimal number")?;
            if price <= rust_decimal::Decimal::ZERO {
                return Err("PRICE must be positive".into());
            }
            let item = shared::keys::with_key(
                std::collections::HashMap::from([
                    ("symbol".to_owned(), shared::dynamo::s(*symbol)),
                    ("price".to_owned(), shared::dynamo::s(price.to_string())),
                    ("updated_at".to_owned(), shared::dynamo::s(chrono::Utc::now().to_rfc3339())),
                ]),
                shared::keys::mark_price(symbol),
            );
            dynamo.put_item().table_name(&config.table_name).set_item(Some(item)).send().await?;
            println!("{symbol} mark price set to {price}");
        }
        ["kill-switch", state @ ("on" | "off")] => {
            let item = shared::keys::with_key(
                std::collections::HashMap::from([
                    ("enabled".to_owned(), aws_sdk_dynamodb::types::AttributeValue::Bool(*state == "on")),
                    ("updated_at".to_owned(), shared::dynamo::s(chrono::Utc::now().to_rfc3339())),
                ]),
                shared::keys::kill_switch(),
            );
            dynamo.put_item().table_name(&config.table_name).set_item(Some(item)).send().await?;
            println!("kill switch {state}");
        }
        other => {
            return Err(format!("unknown command {other:?}; try create-table, seed-secrets, set-price SYMBOL PRICE, kill-switch on|off").into())
        }
    }
    Ok(())
}

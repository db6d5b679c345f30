//! Operator and developer commands against the configured stack (the local emulator, or AWS with
//! the default credential chain, profiles and SSO included):
//!   ops create-table | seed-secrets | set-price SYMBOL PRICE | load-candles SYMBOL FILE | kill-switch on|off [REASON]
//!   ops grant-admin EMAIL | revoke-admin EMAIL (the admin role; admin routes also need two-factor)
//!   ops init-secrets | rotate-jwt-keys        (AWS: fill the secrets CloudFormation cannot make)
//!   ops backfill-history                      (once, after the release that added order and fill history)

use shared::config::Config;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = Config::from_env()?;
    // An operator's laptop: the default chain (profiles, SSO, credential processes), on the one TLS
    // stack the functions use.
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(shared::aws::https_client()).load().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let trading =
        shared::trading::store::TradingStore { client: &dynamo, table: &config.table_name, history_days: config.history_retention_days };
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["create-table"] => {
            let template = std::fs::read_to_string("template.yaml")?;
            ops::devstack::create_table(&dynamo, &config.table_name, &template).await?;
            println!("table {} ready", config.table_name);
        }
        ["init-secrets"] => {
            let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
            let added = ops::devstack::init_secrets(&secrets, &config).await?;
            println!("{added}");
        }
        ["rotate-jwt-keys"] => {
            let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
            let kid = ops::devstack::rotate_jwt_keys(&secrets, &config.jwt_secret_id, 3).await?;
            println!("new signing key {kid}; older keys stay published until they age out (3 kept)");
        }
        ["seed-secrets"] => {
            if !config.is_local() {
                return Err("seed-secrets generates development secrets and only runs with APP_ENV=local".into());
            }
            ops::devstack::seed_secrets(&aws_sdk_secretsmanager::Client::new(&sdk), &config).await?;
            println!("secrets seeded: {}, {}, {}", config.jwt_secret_id, config.encryption_secret_id, config.telegram_secret_id);
        }
        ["set-price", symbol, price] => {
            let price: rust_decimal::Decimal = price.parse().map_err(|_| "PRICE must be a decimal number")?;
            if price <= rust_decimal::Decimal::ZERO {
                return Err("PRICE must be positive".into());
            }
            let symbol = symbol.to_uppercase();
            trading.set_mark(&symbol, price).await.map_err(|e| e.to_string())?;
            println!("{symbol} mark price set to {price}");
            // Locally the Bitget double's candles follow the price.
            if let Some(double) = local_double(&config) {
                let body = serde_json::json!({"symbol": symbol, "price": price.to_string()});
                let answer = reqwest::Client::new().post(format!("{double}/double/tick")).json(&body).send().await?;
                println!("candle series extended: {}", answer.text().await?);
            }
        }
        ["load-candles", symbol, file] => {
            let double = local_double(&config).ok_or("load-candles needs the local stack's Bitget double (make dev)")?;
            let csv = std::fs::read_to_string(file)?;
            let answer =
                reqwest::Client::new().post(format!("{double}/double/candles?symbol={}", symbol.to_uppercase())).body(csv).send().await?;
            println!("{}", answer.text().await?);
        }
        ["backfill-history"] => {
            let done = trading.backfill_history().await.map_err(|e| e.to_string())?;
            println!(
                "history backfilled: {} orders given their pointers and TTL, {} paper fills written, {} exchange-id pointers given a TTL",
                done.orders, done.fills, done.pointers
            );
            if done.moved > 0 {
                println!("{} orders changed while they were read: run it again", done.moved);
            }
        }
        ["kill-switch", state @ ("on" | "off"), reason @ ..] => {
            // The same switch `PUT /api/v1/admin/kill-switch` sets, with who and why.
            let reason = if reason.is_empty() { format!("make kill-switch STATE={state}") } else { reason.join(" ") };
            let by = format!("ops:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()));
            trading.set_kill_switch(*state == "on", &reason, &by).await.map_err(|e| e.to_string())?;
            println!("kill switch {state}");
        }
        ["grant-admin", email] => {
            // The only way to the admin role: an operator with access to the table.
            let email = shared::auth::email::EmailAddress::parse(email).map_err(|_| "EMAIL is not an email address")?;
            let users = shared::auth::store::UserStore { client: &dynamo, table: &config.table_name };
            let (form, creds) = users.find(&email).await.map_err(|e| e.to_string())?.ok_or("no account has this address")?;
            if !creds.email_verified {
                return Err("the account is not verified yet".into());
            }
            let mut roles = creds.roles.clone();
            if !roles.iter().any(|r| r == shared::auth::tokens::ADMIN_ROLE) {
                roles.push(shared::auth::tokens::ADMIN_ROLE.to_owned());
            }
            if !users.set_roles(&form, &creds.user_id, &roles).await.map_err(|e| e.to_string())? {
                return Err("the account changed meanwhile; run it again".into());
            }
            println!("{} ({}) is an admin from its next sign-in (admin routes also need two-factor)", email.as_str(), creds.user_id);
        }
        ["revoke-admin", email] => {
            // Ends admin access at once: every admin call reads the role from the account.
            let email = shared::auth::email::EmailAddress::parse(email).map_err(|_| "EMAIL is not an email address")?;
            let users = shared::auth::store::UserStore { client: &dynamo, table: &config.table_name };
            let (form, creds) = users.find(&email).await.map_err(|e| e.to_string())?.ok_or("no account has this address")?;
            let roles: Vec<String> = creds.roles.iter().filter(|r| *r != shared::auth::tokens::ADMIN_ROLE).cloned().collect();
            if !users.set_roles(&form, &creds.user_id, &roles).await.map_err(|e| e.to_string())? {
                return Err("the account changed meanwhile; run it again".into());
            }
            println!("{} ({}) is no longer an admin", email.as_str(), creds.user_id);
        }
        other => {
            return Err(
                format!("unknown command {other:?}; try create-table, seed-secrets, init-secrets, rotate-jwt-keys, set-price SYMBOL PRICE, load-candles SYMBOL FILE, kill-switch on|off [REASON], grant-admin EMAIL, revoke-admin EMAIL, backfill-history").into()
            )
        }
    }
    Ok(())
}

/// The Bitget double of `make dev` (never a real exchange: only with APP_ENV=local).
fn local_double(config: &Config) -> Option<String> {
    std::env::var("BITGET_BASE_URL").ok().filter(|_| config.is_local()).map(|u| u.trim_end_matches('/').to_owned())
}

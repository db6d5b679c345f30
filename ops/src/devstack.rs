//! The local stack's setup, shared by `make dev`, `make test` and the integration tests: the table
//! is created from the definition in `template.yaml` (no second hand-written schema), and the
//! secrets are freshly generated.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType, ScalarAttributeType,
    StreamSpecification, StreamViewType, TimeToLiveSpecification,
};
use serde_yaml::Value;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The `Properties` of the template's one `AWS::DynamoDB::Table`.
pub fn table_properties(template_yaml: &str) -> Result<Value, BoxError> {
    let template: Value = serde_yaml::from_str(template_yaml)?;
    let resources = template.get("Resources").and_then(Value::as_mapping).ok_or("template has no Resources")?;
    let table = resources
        .values()
        .find(|r| r.get("Type").and_then(Value::as_str) == Some("AWS::DynamoDB::Table"))
        .ok_or("template declares no AWS::DynamoDB::Table")?;
    Ok(table.get("Properties").cloned().ok_or("the table has no Properties")?)
}

fn str_at<'a>(v: &'a Value, key: &str) -> Result<&'a str, BoxError> {
    Ok(v.get(key).and_then(Value::as_str).ok_or_else(|| format!("missing {key}"))?)
}

fn key_schema(v: &Value) -> Result<Vec<KeySchemaElement>, BoxError> {
    let list = v.get("KeySchema").and_then(Value::as_sequence).ok_or("missing KeySchema")?;
    list.iter()
        .map(|k| {
            Ok(KeySchemaElement::builder()
                .attribute_name(str_at(k, "AttributeName")?)
                .key_type(KeyType::from(str_at(k, "KeyType")?))
                .build()?)
        })
        .collect()
}

/// Creates the table as `template.yaml` declares it, unless it exists already.
pub async fn create_table(client: &aws_sdk_dynamodb::Client, table_name: &str, template_yaml: &str) -> Result<(), BoxError> {
    let props = table_properties(template_yaml)?;
    let mut request = client.create_table().table_name(table_name).billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest);
    request = request.set_attribute_definitions(Some(attribute_definitions(&props)?));
    request = request.set_key_schema(Some(key_schema(&props)?));
    let indexes = global_indexes(&props)?;
    request = request.set_global_secondary_indexes(Some(indexes.clone()).filter(|i| !i.is_empty()));
    if let Some(stream) = props.get("StreamSpecification") {
        request = request.stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::from(str_at(stream, "StreamViewType")?))
                .build()?,
        );
    }
    match request.send().await {
        Ok(_) => {}
        // A table of an earlier release: given the indexes added since, as a stack update would.
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {
            return add_missing_indexes(client, table_name, &props, indexes).await
        }
        Err(e) => return Err(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string().into()),
    }
    if let Some(ttl) = props.get("TimeToLiveSpecification") {
        client
            .update_time_to_live()
            .table_name(table_name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder().attribute_name(str_at(ttl, "AttributeName")?).enabled(true).build()?,
            )
            .send()
            .await
            .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())?;
    }
    Ok(())
}

fn attribute_definitions(props: &Value) -> Result<Vec<AttributeDefinition>, BoxError> {
    let list = props.get("AttributeDefinitions").and_then(Value::as_sequence).ok_or("missing AttributeDefinitions")?;
    list.iter()
        .map(|def| {
            Ok(AttributeDefinition::builder()
                .attribute_name(str_at(def, "AttributeName")?)
                .attribute_type(ScalarAttributeType::from(str_at(def, "AttributeType")?))
                .build()?)
        })
        .collect()
}

fn global_indexes(props: &Value) -> Result<Vec<GlobalSecondaryIndex>, BoxError> {
    let list = props.get("GlobalSecondaryIndexes").and_then(Value::as_sequence).into_iter().flatten();
    list.map(|gsi| {
        let projection = gsi.get("Projection").ok_or("GSI without Projection")?;
        Ok(GlobalSecondaryIndex::builder()
            .index_name(str_at(gsi, "IndexName")?)
            .set_key_schema(Some(key_schema(gsi)?))
            .projection(Projection::builder().projection_type(ProjectionType::from(str_at(projection, "ProjectionType")?)).build())
            .build()?)
    })
    .collect()
}

/// Creates the template's indexes an existing table lacks, one at a time (as DynamoDB allows).
async fn add_missing_indexes(
    client: &aws_sdk_dynamodb::Client,
    table_name: &str,
    props: &Value,
    indexes: Vec<GlobalSecondaryIndex>,
) -> Result<(), BoxError> {
    let error = |e: String| -> BoxError { e.into() };
    let table = client
        .describe_table()
        .table_name(table_name)
        .send()
        .await
        .map_err(|e| error(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()))?;
    let existing: Vec<String> =
        table.table.and_then(|t| t.global_secondary_indexes).unwrap_or_default().into_iter().filter_map(|g| g.index_name).collect();
    for index in indexes.into_iter().filter(|i| !existing.contains(&i.index_name)) {
        let create = aws_sdk_dynamodb::types::CreateGlobalSecondaryIndexAction::builder()
            .index_name(index.index_name.clone())
            .set_key_schema(Some(index.key_schema.clone()))
            .set_projection(index.projection.clone())
            .build()?;
        client
            .update_table()
            .table_name(table_name)
            .set_attribute_definitions(Some(attribute_definitions(props)?))
            .global_secondary_index_updates(aws_sdk_dynamodb::types::GlobalSecondaryIndexUpdate::builder().create(create).build())
            .send()
            .await
            .map_err(|e| error(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()))?;
    }
    Ok(())
}

async fn put_secret(client: &aws_sdk_secretsmanager::Client, id: &str, value: &str) -> Result<(), BoxError> {
    let created = client.create_secret().name(id).secret_string(value).send().await;
    if let Err(e) = created {
        if e.as_service_error().is_some_and(|s| s.is_resource_exists_exception()) {
            client
                .put_secret_value()
                .secret_id(id)
                .secret_string(value)
                .send()
                .await
                .map_err(|e| aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string())?;
        } else {
            return Err(aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string().into());
        }
    }
    Ok(())
}

/// Writes freshly generated development secrets under the ids the configuration names.
pub async fn seed_secrets(client: &aws_sdk_secretsmanager::Client, config: &shared::config::Config) -> Result<(), BoxError> {
    let now = chrono::Utc::now();
    let kid = format!("{}-{}", now.format("%Y%m%d"), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let pepper = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let jwt = serde_json::json!({ "keys": [shared::auth::tokens::generate_key_entry(&kid, now)], "code_pepper": pepper });
    put_secret(client, &config.jwt_secret_id, &jwt.to_string()).await?;
    put_secret(client, &config.encryption_secret_id, &shared::crypto::generate_key_secret("local-1").to_string()).await?;
    let telegram = serde_json::json!({"bot_token": format!("0000:{}", uuid::Uuid::new_v4().simple()), "chat_id": "-1000000000000"});
    put_secret(client, &config.telegram_secret_id, &telegram.to_string()).await?;
    let webhook = serde_json::json!({"token": format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())});
    put_secret(client, &config.telegram_webhook_secret_id, &webhook.to_string()).await?;
    Ok(())
}

async fn get_secret(client: &aws_sdk_secretsmanager::Client, id: &str) -> Result<serde_json::Value, BoxError> {
    let out = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string())?;
    Ok(serde_json::from_str(out.secret_string().unwrap_or("{}"))?)
}

/// Adds a fresh Ed25519 signing key to the auth secret and keeps the `keep` newest keys: the new
/// one signs at once, the older ones still verify tokens issued before, so nobody is logged out.
/// Keep at least two and rotate less often than the token lifetime plus the secrets TTL.
pub async fn rotate_jwt_keys(client: &aws_sdk_secretsmanager::Client, secret_id: &str, keep: usize) -> Result<String, BoxError> {
    let mut secret = get_secret(client, secret_id).await?;
    let now = chrono::Utc::now();
    let kid = format!("{}-{}", now.format("%Y%m%d%H%M"), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut keys: Vec<serde_json::Value> = secret["keys"].as_array().cloned().unwrap_or_default();
    keys.push(shared::auth::tokens::generate_key_entry(&kid, now));
    keys.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()));
    keys.truncate(keep.max(2));
    secret["keys"] = serde_json::Value::Array(keys);
    client
        .put_secret_value()
        .secret_id(secret_id)
        .secret_string(secret.to_string())
        .send()
        .await
        .map_err(|e| aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string())?;
    Ok(kid)
}

/// After the first deploy: a JWT signing key and an encryption key where the template left the
/// lists empty. Never replaces existing keys.
pub async fn init_secrets(client: &aws_sdk_secretsmanager::Client, config: &shared::config::Config) -> Result<String, BoxError> {
    let mut done = Vec::new();
    let jwt = get_secret(client, &config.jwt_secret_id).await?;
    if jwt["keys"].as_array().is_none_or(|k| k.is_empty()) {
        rotate_jwt_keys(client, &config.jwt_secret_id, 3).await?;
        done.push("JWT signing key created");
    }
    let enc = get_secret(client, &config.encryption_secret_id).await?;
    if enc["keys"].as_array().is_none_or(|k| k.is_empty()) {
        let value = shared::crypto::generate_key_secret(&format!("k{}", chrono::Utc::now().format("%Y%m%d")));
        client
            .put_secret_value()
            .secret_id(&config.encryption_secret_id)
            .secret_string(value.to_string())
            .send()
            .await
            .map_err(|e| aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string())?;
        done.push("encryption key created");
    }
    Ok(if done.is_empty() { "secrets already initialised".into() } else { done.join(", ") })
}

/// A running paper bot's record, as `POST /api/v1/bot/start` writes it.
fn seed_bot(
    user_id: &str,
    symbol: &str,
    leverage: u32,
    stop_loss_pct: rust_decimal::Decimal,
    strategy: shared::trading::strategy::Strategy,
    run: Option<shared::trading::store::BotRun>,
) -> shared::trading::store::BotRecord {
    use shared::trading::store::{BotConfig, BotRecord, BotState};
    BotRecord {
        user_id: user_id.to_owned(),
        state: BotState::Running,
        config: BotConfig {
            symbol: symbol.into(),
            leverage,
            stop_loss_pct,
            take_profit_pct: Some(rust_decimal::Decimal::from(50)),
            trailing_stop_pct: None,
            max_position_notional: rust_decimal::Decimal::from(100_000),
            margin_mode: Default::default(),
            strategy,
        },
        version: 1,
        exchange: shared::trading::model::ExchangeKind::Paper,
        updated_at: chrono::Utc::now().to_rfc3339(),
        stop_id: None,
        stop_round: 0,
        credentials_version: None,
        position_mode: None,
        run,
        strategy_state: Default::default(),
        stop_reason: None,
    }
}

fn indexed_bot_item(bot: &shared::trading::store::BotRecord) -> Result<shared::dynamo::Item, BoxError> {
    let mut bot_item = shared::keys::with_key(serde_dynamo::to_item(bot)?, shared::keys::bot(&bot.user_id));
    bot_item.extend(shared::keys::active_bot_index(&bot.user_id));
    Ok(bot_item)
}

/// A running paper bot holding one open long, as the guardian's index holds them: for the scale
/// benchmark and the guardian tests that need many bots in chosen shards without the HTTP path.
pub fn running_paper_bot(
    user_id: &str,
    symbol: &str,
    size: rust_decimal::Decimal,
    entry: rust_decimal::Decimal,
    stop_loss_pct: rust_decimal::Decimal,
) -> Result<Vec<shared::dynamo::Item>, BoxError> {
    use shared::trading::model::PositionSide;
    use shared::trading::store::PaperPosition;
    let leverage = 5;
    let bot = seed_bot(user_id, symbol, leverage, stop_loss_pct, Default::default(), None);
    let position = PaperPosition {
        symbol: symbol.into(),
        side: PositionSide::Long,
        size,
        entry_price: entry,
        leverage,
        margin: size * entry / rust_decimal::Decimal::from(leverage),
        version: 1,
        high_water: None,
        position_id: format!("seed-{user_id}"),
    };
    let mut position_item = shared::keys::with_key(serde_dynamo::to_item(&position)?, shared::keys::paper_position(user_id, symbol));
    position_item.extend(shared::keys::active_position_index(user_id, symbol));
    Ok(vec![indexed_bot_item(&bot)?, position_item])
}

/// A running paper bot of `strategy`, flat, started at `started_ms`, with its profile (a
/// strategy order is held to the account existing): for the strategy runner's scale benchmark.
pub fn running_strategy_bot(
    user_id: &str,
    symbol: &str,
    strategy: shared::trading::strategy::Strategy,
    started_ms: i64,
) -> Result<Vec<shared::dynamo::Item>, BoxError> {
    let run = shared::trading::store::BotRun { id: "run-v1".into(), started_ms };
    let bot = seed_bot(user_id, symbol, 10, rust_decimal::Decimal::from(5), strategy, Some(run));
    let profile = shared::auth::store::Profile {
        id: user_id.to_owned(),
        email: format!("{user_id}@scale.example"),
        username: None,
        email_verified: true,
        created_at: chrono::Utc::now().to_rfc3339(),
        revoked_before_ms: None,
        expires_at: None,
        revoked_sessions: Default::default(),
        mfa_enabled: false,
        roles: Vec::new(),
    };
    let profile_item = shared::keys::with_key(serde_dynamo::to_item(&profile)?, shared::keys::profile(user_id));
    Ok(vec![indexed_bot_item(&bot)?, profile_item])
}

/// Writes items in batches of 25, eight batches at a time, until DynamoDB has taken them all.
pub async fn put_items(client: &aws_sdk_dynamodb::Client, table: &str, items: Vec<shared::dynamo::Item>) -> Result<(), BoxError> {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    use futures::StreamExt;
    let batches = items.chunks(25).map(|chunk| {
        let requests: Result<Vec<WriteRequest>, BoxError> = chunk
            .iter()
            .map(|item| Ok(WriteRequest::builder().put_request(PutRequest::builder().set_item(Some(item.clone())).build()?).build()))
            .collect();
        async move {
            let mut pending = std::collections::HashMap::from([(table.to_owned(), requests?)]);
            while !pending.is_empty() {
                let out = client
                    .batch_write_item()
                    .set_request_items(Some(pending.clone()))
                    .send()
                    .await
                    .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())?;
                pending = out.unprocessed_items.unwrap_or_default().into_iter().filter(|(_, v)| !v.is_empty()).collect();
            }
            Ok::<_, BoxError>(())
        }
    });
    let results: Vec<Result<(), BoxError>> = futures::stream::iter(batches).buffer_unordered(8).collect().await;
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_definition_is_read_from_the_template() {
        let props = super::table_properties(include_str!("../../template.yaml")).unwrap();
        assert!(props.get("KeySchema").is_some());
        let gsi = &props["GlobalSecondaryIndexes"][0];
        assert_eq!(gsi["IndexName"].as_str(), Some(shared::keys::GSI1_NAME));
        assert_eq!(props["GlobalSecondaryIndexes"][1]["IndexName"].as_str(), Some(shared::keys::OPEN_ORDERS_INDEX));
        assert_eq!(props["TimeToLiveSpecification"]["AttributeName"].as_str(), Some(shared::keys::TTL_ATTRIBUTE));
    }
}

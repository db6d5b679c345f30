//! Lambda's DynamoDB event source mapping, played locally: reads the table's stream on DynamoDB
//! Local at `endpoint` (every shard, from the newest record on), batches records (up to 100, or what arrived
//! within a poll) in the event Lambda delivers, and hands each batch to an invoker. A batch the
//! function fails is split in halves and each retried (bisect-on-error); a record that still
//! fails alone after three tries goes to the dead-letter file, and the stream goes on.

use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

pub const BATCH_SIZE: usize = 100;
/// The function the table's stream feeds.
pub const BROADCAST: &str = "broadcast";
const POLL: Duration = Duration::from_millis(100);

/// Runs one batch: `Ok` when the function took it.
pub type Deliver = std::sync::Arc<dyn Fn(Value) -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// DynamoDB Local writes an empty map attribute as `{}` where DynamoDB writes `{"M": {}}`
/// (which the SDK and Lambda's event both carry): made what DynamoDB sends.
fn normalize(change: &mut Value) {
    fn attribute(value: &mut Value) {
        match value {
            Value::Object(map) if map.is_empty() => *value = json!({"M": {}}),
            Value::Object(map) => {
                if let Some(Value::Object(inner)) = map.get_mut("M") {
                    inner.values_mut().for_each(attribute);
                }
                if let Some(Value::Array(items)) = map.get_mut("L") {
                    items.iter_mut().for_each(attribute);
                }
            }
            _ => {}
        }
    }
    for image in ["Keys", "NewImage", "OldImage"] {
        if let Some(Value::Object(item)) = change.get_mut(image) {
            item.values_mut().for_each(attribute);
        }
    }
}

/// One GetRecords call, read as JSON: its records are already in the shape Lambda's event
/// carries (the SDK's parser refuses DynamoDB Local's `{}` for an empty map). DynamoDB Local
/// checks no signature.
async fn get_records(http: &reqwest::Client, endpoint: &str, iterator: &str) -> Result<(Vec<Value>, Option<String>), String> {
    let answer = http
        .post(endpoint)
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amz-target", "DynamoDBStreams_20120810.GetRecords")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
        )
        .json(&json!({"ShardIterator": iterator, "Limit": BATCH_SIZE}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = answer.status();
    let body: Value = answer.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("GetRecords answered {status}: {body}"));
    }
    let records = body["Records"].as_array().cloned().unwrap_or_default();
    Ok((records, body["NextShardIterator"].as_str().map(str::to_owned)))
}

/// Delivers `records`, halving a failed batch down to single records.
fn deliver(records: Vec<Value>, to: Deliver, dead_letters: Option<std::path::PathBuf>) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        for attempt in 0..3 {
            match to(json!({"Records": records.clone()})).await {
                Ok(()) => return,
                Err(e) if records.len() > 1 => {
                    tracing::warn!(error = %e, size = records.len(), "a stream batch failed; bisecting");
                    let right = records[records.len() / 2..].to_vec();
                    let left = records[..records.len() / 2].to_vec();
                    deliver(left, to.clone(), dead_letters.clone()).await;
                    deliver(right, to, dead_letters).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "a stream record failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if let Some(path) = dead_letters {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(f, "{}", json!({"Records": records}));
            }
        }
    })
}

/// Follows the stream of `table` until the task is dropped. Starts at the newest record of every
/// shard open now; shards that open later are read from their start.
pub async fn follow(
    client: aws_sdk_dynamodbstreams::Client,
    endpoint: String,
    dynamo: aws_sdk_dynamodb::Client,
    table: String,
    to: Deliver,
    dead_letters: Option<std::path::PathBuf>,
) -> Result<(), String> {
    let described = dynamo.describe_table().table_name(&table).send().await.map_err(|e| e.to_string())?;
    let stream_arn =
        described.table().and_then(|t| t.latest_stream_arn()).ok_or_else(|| format!("table {table} has no stream"))?.to_owned();
    // Per shard: its iterator (None once the shard is closed and read), and the last record read.
    let mut iterators: HashMap<String, Option<String>> = HashMap::new();
    let mut last_read: HashMap<String, String> = HashMap::new();
    let mut first = true;
    let http = reqwest::Client::new();
    loop {
        // New shards (DynamoDB rolls them over): read each from its start.
        let stream = client.describe_stream().stream_arn(&stream_arn).send().await.map_err(|e| e.to_string())?;
        for shard in stream.stream_description().map(|d| d.shards()).unwrap_or_default() {
            let Some(id) = shard.shard_id() else { continue };
            if iterators.contains_key(id) {
                continue;
            }
            let open = shard.sequence_number_range().is_some_and(|r| r.ending_sequence_number().is_none());
            if first && !open {
                // Closed before this started: nothing in it is new.
                iterators.insert(id.to_owned(), None);
                continue;
            }
            let request = client.get_shard_iterator().stream_arn(&stream_arn).shard_id(id);
            let request = match last_read.get(id) {
                // Read again after a failed read: from the record after the last one delivered.
                Some(seq) => request.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).sequence_number(seq),
                None if first => request.shard_iterator_type(ShardIteratorType::Latest),
                None => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
            };
            match request.send().await {
                Ok(out) => {
                    iterators.insert(id.to_owned(), out.shard_iterator().map(str::to_owned));
                }
                Err(e) => {
                    tracing::warn!(error = %aws_sdk_dynamodbstreams::error::DisplayErrorContext(&e), "no iterator for a shard yet")
                }
            }
        }
        first = false;
        let mut batch = Vec::new();
        let mut failed = Vec::new();
        for (shard, iterator) in iterators.iter_mut() {
            let Some(current) = iterator.clone() else { continue };
            match get_records(&http, &endpoint, &current).await {
                Ok((records, next)) => {
                    if let Some(seq) = records.last().and_then(|r| r["dynamodb"]["SequenceNumber"].as_str()) {
                        last_read.insert(shard.clone(), seq.to_owned());
                    }
                    batch.extend(records.into_iter().map(|mut r| {
                        normalize(&mut r["dynamodb"]);
                        r["eventSourceARN"] = stream_arn.as_str().into();
                        r
                    }));
                    *iterator = next;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the stream failed");
                    failed.push(shard.clone());
                }
            }
        }
        // A shard whose read failed gets a new iterator on the next round, after its last record.
        for shard in failed {
            iterators.remove(&shard);
        }
        for chunk in batch.chunks(BATCH_SIZE) {
            deliver(chunk.to_vec(), to.clone(), dead_letters.clone()).await;
        }
        tokio::time::sleep(POLL).await;
    }
}

//! DynamoDB helpers: items through `serde_dynamo`, and conditional-write failures told apart from
//! outages so the first becomes a 409 and the second a 503. Store calls fail with `StoreError`,
//! which keeps the SDK's error as its source; the edge turns it into a 503 or a 500 and logs it.

use crate::error::ApiError;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;

pub type Item = HashMap<String, AttributeValue>;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// DynamoDB did not do it (throttled, unreachable, an outage): worth retrying shortly.
    #[error("dynamodb call failed")]
    Unavailable(#[source] crate::error::Cause),
    /// An item that does not encode or decode: a bug.
    #[error("item encoding")]
    Codec(#[from] serde_dynamo::Error),
    /// A request that does not build: a bug.
    #[error("building a dynamodb request")]
    Request(#[from] aws_sdk_dynamodb::error::BuildError),
    /// An item the code just wrote or read is not there: a bug.
    #[error("missing: {0}")]
    Missing(&'static str),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => ApiError::Dependency { what: "the database", cause },
            bug => ApiError::Internal(Some(Box::new(bug))),
        }
    }
}

pub fn to_item<T: Serialize>(value: &T) -> Result<Item, StoreError> {
    Ok(serde_dynamo::to_item(value)?)
}

pub fn from_item<T: DeserializeOwned>(item: Item) -> Result<T, StoreError> {
    Ok(serde_dynamo::from_item(item)?)
}

/// The items at `keys` (those that exist), strongly consistent, in BatchGetItem calls of 100.
/// Keys DynamoDB leaves unprocessed are asked again with a backoff; still left after that, the
/// read fails as unavailable rather than answering without them.
pub async fn batch_get(client: &aws_sdk_dynamodb::Client, table: &str, keys: Vec<crate::keys::Key>) -> Result<Vec<Item>, StoreError> {
    let mut found = Vec::new();
    for chunk in keys.chunks(100) {
        let wanted = aws_sdk_dynamodb::types::KeysAndAttributes::builder().set_keys(Some(chunk.to_vec())).consistent_read(true).build()?;
        let mut request = std::collections::HashMap::from([(table.to_owned(), wanted)]);
        for attempt in 0..8u64 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(20 << attempt.min(5))).await;
            }
            let out = client.batch_get_item().set_request_items(Some(request.clone())).send().await.map_err(db_error)?;
            found.extend(out.responses.unwrap_or_default().remove(table).unwrap_or_default());
            match out.unprocessed_keys.filter(|u| !u.is_empty()) {
                Some(rest) => request = rest,
                None => {
                    request.clear();
                    break;
                }
            }
        }
        if !request.is_empty() {
            return Err(StoreError::Unavailable("a batch read stayed unprocessed (throttled)".into()));
        }
    }
    Ok(found)
}

/// One strongly consistent read of the item at `key`, decoded.
pub async fn get_item<T: DeserializeOwned>(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key: crate::keys::Key,
) -> Result<Option<T>, StoreError> {
    let out = client.get_item().table_name(table).set_key(Some(key)).consistent_read(true).send().await.map_err(db_error)?;
    out.item.map(from_item).transpose()
}

/// A conditional write's outcome: `true` written, `false` its condition failed; other errors 503.
/// For single-item writes; a transaction goes through [`transact`].
pub fn written<O, E, R>(result: Result<O, SdkError<E, R>>) -> Result<bool, StoreError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if is_condition_failure(&e) => Ok(false),
        Err(e) => Err(db_error(e)),
    }
}

/// Puts `item` only if no item has its key: `false` when one has (nothing written).
pub async fn put_new(client: &aws_sdk_dynamodb::Client, table: &str, item: Item) -> Result<bool, StoreError> {
    written(client.put_item().table_name(table).set_item(Some(item)).condition_expression("attribute_not_exists(PK)").send().await)
}

/// Was this SDK error a single write's failed condition? (A cancelled transaction is told apart
/// by its reasons, in [`transact`].)
pub fn is_condition_failure<E: aws_sdk_dynamodb::error::ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    match err {
        SdkError::ServiceError(service) => service.err().code() == Some("ConditionalCheckFailedException"),
        _ => false,
    }
}

/// What a transaction came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transacted {
    Written,
    /// Cancelled because these items' conditions failed (by position, in the order given).
    ConditionFailed(Vec<bool>),
}

impl Transacted {
    pub fn written(&self) -> bool {
        *self == Transacted::Written
    }

    /// Did the item at `index` fail its condition?
    pub fn failed(&self, index: usize) -> bool {
        matches!(self, Transacted::ConditionFailed(f) if f.get(index).copied().unwrap_or(false))
    }
}

/// Tries of a transaction whose cancellation was not a failed condition (a conflict with another
/// transaction on the same items, throttling) before it is answered as unavailable.
pub const TRANSIENT_TRIES: u32 = 4;

/// How a cancellation's reasons read: only `ConditionalCheckFailed` is a failed condition; a
/// cancellation without one (`TransactionConflict`, `ThrottlingError`, ...) is transient.
pub fn cancellation(reasons: &[Option<&str>]) -> Option<Vec<bool>> {
    let failed: Vec<bool> = reasons.iter().map(|r| *r == Some("ConditionalCheckFailed")).collect();
    failed.contains(&true).then_some(failed)
}

/// Sends a transaction. A failed condition is an answer, not an error; a transient cancellation
/// or throttling is retried with jittered backoff, then becomes `StoreError::Unavailable`, so a
/// conflict never passes for "taken" or "spent".
pub async fn transact(
    request: aws_sdk_dynamodb::operation::transact_write_items::builders::TransactWriteItemsFluentBuilder,
) -> Result<Transacted, StoreError> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError as E;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let err = match request.clone().send().await {
            Ok(_) => return Ok(Transacted::Written),
            Err(err) => err,
        };
        let transient = match &err {
            SdkError::ServiceError(service) => match service.err() {
                E::TransactionCanceledException(c) => {
                    let reasons: Vec<Option<&str>> = c.cancellation_reasons().iter().map(|r| r.code()).collect();
                    match cancellation(&reasons) {
                        Some(failed) => return Ok(Transacted::ConditionFailed(failed)),
                        None => true,
                    }
                }
                E::TransactionInProgressException(_) | E::ProvisionedThroughputExceededException(_) | E::RequestLimitExceeded(_) => true,
                other => aws_sdk_dynamodb::error::ProvideErrorMetadata::code(other) == Some("ThrottlingException"),
            },
            _ => false,
        };
        if !transient || attempt >= TRANSIENT_TRIES {
            return Err(db_error(err));
        }
        tokio::time::sleep(backoff(attempt)).await;
    }
}

/// A jittered, growing wait before try `attempt + 1` (20–40 ms, 40–80 ms, ...).
pub fn backoff(attempt: u32) -> std::time::Duration {
    use rand::Rng;
    let base = 20u64 << attempt.min(6);
    std::time::Duration::from_millis(rand::thread_rng().gen_range(base..=base * 2))
}

/// Maps a write error: a failed condition becomes the given 409, anything else a logged 503.
pub fn write_error<E, R>(err: SdkError<E, R>, conflict: ApiError) -> ApiError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if is_condition_failure(&err) {
        conflict
    } else {
        db_error(err).into()
    }
}

/// A failed DynamoDB call, kept whole (with the SDK's context) as the cause.
pub fn db_error<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    StoreError::Unavailable(Box::new(Described(aws_sdk_dynamodb::error::DisplayErrorContext(err).to_string())))
}

/// The SDK error rendered with its whole context (service code, message, request id).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Described(String);

pub fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}
pub fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// The first `limit` items a query gives from `start` on, and whether any follow them. It reads
/// on while a page came back short of them (DynamoDB's 1 MB cut, or a filter): mostly one Query.
/// `query` is given the start key and how many items are still wanted.
pub async fn first_items<F>(limit: usize, mut start: Option<Item>, query: F) -> Result<(Vec<Item>, bool), StoreError>
where
    F: Fn(Option<Item>, i32) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
{
    let mut items = Vec::new();
    loop {
        let wanted = i32::try_from(limit + 1 - items.len()).unwrap_or(i32::MAX);
        let out = query(start.take(), wanted).send().await.map_err(db_error)?;
        items.extend(out.items.unwrap_or_default());
        match out.last_evaluated_key {
            Some(key) if items.len() <= limit => start = Some(key),
            _ => break,
        }
    }
    let more = items.len() > limit;
    items.truncate(limit);
    Ok((items, more))
}

/// Every item a query finds, through all its pages (`query` builds one page from its start key).
pub async fn query_all(
    query: impl Fn(Option<Item>) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
) -> Result<Vec<Item>, StoreError> {
    let mut items = Vec::new();
    let mut start: Option<Item> = None;
    loop {
        let out = query(start.take()).send().await.map_err(db_error)?;
        items.extend(out.items.unwrap_or_default());
        match out.last_evaluated_key {
            Some(key) => start = Some(key),
            None => return Ok(items),
        }
    }
}

/// Every item of one partition, strongly consistent, through all its pages.
pub async fn partition(client: &aws_sdk_dynamodb::Client, table: &str, pk: String) -> Result<Vec<Item>, StoreError> {
    query_all(|start| {
        client
            .query()
            .table_name(table)
            .key_condition_expression("PK = :pk")
            .expression_attribute_values(":pk", s(pk.clone()))
            .consistent_read(true)
            .set_exclusive_start_key(start)
    })
    .await
}

/// Deletes every item at `keys`, 25 to a batch, retrying what DynamoDB leaves unprocessed.
pub async fn delete_all(client: &aws_sdk_dynamodb::Client, table: &str, keys: Vec<crate::keys::Key>) -> Result<(), StoreError> {
    use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
    for chunk in keys.chunks(25) {
        let mut requests = chunk
            .iter()
            .map(|key| Ok(WriteRequest::builder().delete_request(DeleteRequest::builder().set_key(Some(key.clone())).build()?).build()))
            .collect::<Result<Vec<_>, StoreError>>()?;
        for attempt in 0.. {
            let out = client.batch_write_item().request_items(table, requests).send().await.map_err(db_error)?;
            requests = out.unprocessed_items.and_then(|mut u| u.remove(table)).unwrap_or_default();
            if requests.is_empty() {
                break;
            }
            if attempt >= 5 {
                return Err(StoreError::Unavailable("DynamoDB kept items of a batch delete unprocessed (throttled)".into()));
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
    Ok(())
}

/// The key (`PK`, `SK`) of an item read back.
pub fn key_of(item: &Item) -> crate::keys::Key {
    [crate::keys::PK, crate::keys::SK].iter().filter_map(|k| item.get(*k).map(|v| ((*k).to_owned(), v.clone()))).collect()
}

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

/// Was this SDK error a failed condition (on a single write or inside a transaction)?
pub fn is_condition_failure<E: aws_sdk_dynamodb::error::ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    match err {
        SdkError::ServiceError(service) => {
            matches!(service.err().code(), Some("ConditionalCheckFailedException") | Some("TransactionCanceledException"))
        }
        _ => false,
    }
}

/// Which items of a cancelled transaction failed their condition, by position.
pub fn cancelled_conditions<R>(err: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>) -> Vec<bool> {
    match err {
        SdkError::ServiceError(service) => match service.err() {
            aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(e) => {
                e.cancellation_reasons().iter().map(|r| r.code() == Some("ConditionalCheckFailed")).collect()
            }
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
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

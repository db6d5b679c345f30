//! What live push and notifications keep: WebSocket connections (API Gateway WebSocket API), one
//! item per connection under its user and a pointer from the connection id to its user
//! (`$disconnect` and `$default` know only the id), both expiring with API Gateway's own limit on
//! a connection's life, 2 hours; and each user's notification settings and linked Telegram chat.

use crate::dynamo::{self, db_error, from_item, n, s, to_item, StoreError};
use crate::keys;
use crate::live::telegram::Notifications;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem, Update};
use serde::{Deserialize, Serialize};

/// API Gateway closes a WebSocket connection after 2 hours whatever happens on it.
pub const CONNECTION_LIFETIME_SECS: i64 = 2 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Connection {
    pub connection_id: String,
    pub user_id: String,
    /// The session its token was issued for: revoking the session closes the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// When its token was issued (ms): a global logout after it closes the connection.
    pub issued_at_ms: i64,
    pub connected_ms: i64,
    pub expires_at: i64,
}

pub struct LiveStore<'a> {
    pub client: &'a aws_sdk_dynamodb::Client,
    pub table: &'a str,
}

impl LiveStore<'_> {
    /// The connection and its pointer, in one transaction.
    pub async fn add(&self, connection: &Connection) -> Result<(), StoreError> {
        let item = keys::with_key(to_item(connection)?, keys::connection(&connection.user_id, &connection.connection_id));
        let pointer = keys::with_key(
            std::collections::HashMap::from([
                ("user_id".to_owned(), s(connection.user_id.as_str())),
                (keys::TTL_ATTRIBUTE.to_owned(), n(connection.expires_at)),
            ]),
            keys::connection_pointer(&connection.connection_id),
        );
        let put = |item| -> Result<TransactWriteItem, StoreError> {
            Ok(TransactWriteItem::builder().put(Put::builder().table_name(self.table).set_item(Some(item)).build()?).build())
        };
        let request = self.client.transact_write_items().transact_items(put(item)?).transact_items(put(pointer)?);
        dynamo::transact(request).await?;
        Ok(())
    }

    /// The user a connection belongs to, while its pointer lives.
    pub async fn owner(&self, connection_id: &str) -> Result<Option<String>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(self.table)
            .set_key(Some(keys::connection_pointer(connection_id)))
            .send()
            .await
            .map_err(db_error)?;
        Ok(out.item.and_then(|i| i.get("user_id").and_then(|v| v.as_s().ok()).cloned()))
    }

    /// Forgets a connection (closed, gone, or never to be used again).
    pub async fn remove(&self, user_id: &str, connection_id: &str) -> Result<(), StoreError> {
        let delete = |key| -> Result<TransactWriteItem, StoreError> {
            Ok(TransactWriteItem::builder().delete(Delete::builder().table_name(self.table).set_key(Some(key)).build()?).build())
        };
        let request = self
            .client
            .transact_write_items()
            .transact_items(delete(keys::connection(user_id, connection_id))?)
            .transact_items(delete(keys::connection_pointer(connection_id))?);
        dynamo::transact(request).await?;
        Ok(())
    }

    /// Every live connection of the user (those past their end are left to the TTL sweep).
    pub async fn of_user(&self, user_id: &str) -> Result<Vec<Connection>, StoreError> {
        let now = chrono::Utc::now().timestamp();
        let items = dynamo::partition(self.client, self.table, keys::connections_partition(user_id)).await?;
        Ok(items.into_iter().filter_map(|i| from_item::<Connection>(i).ok()).filter(|c| c.expires_at > now).collect())
    }

    pub async fn notifications(&self, user_id: &str) -> Result<Notifications, StoreError> {
        Ok(dynamo::get_item(self.client, self.table, keys::notifications(user_id)).await?.unwrap_or_default())
    }

    /// Links a chat to the user, while their account exists. `false`: it does not.
    pub async fn link_telegram(&self, user_id: &str, chat_id: i64) -> Result<bool, StoreError> {
        let check = ConditionCheck::builder()
            .table_name(self.table)
            .set_key(Some(keys::profile(user_id)))
            .condition_expression("attribute_exists(PK)")
            .build()?;
        let update = Update::builder()
            .table_name(self.table)
            .set_key(Some(keys::notifications(user_id)))
            .update_expression("SET telegram_chat_id = :chat, linked_at = :at")
            .expression_attribute_values(":chat", n(chat_id))
            .expression_attribute_values(":at", s(crate::trading::store::now_rfc3339()))
            .build()?;
        let request = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().condition_check(check).build())
            .transact_items(TransactWriteItem::builder().update(update).build());
        Ok(dynamo::transact(request).await?.written())
    }

    pub async fn unlink_telegram(&self, user_id: &str) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(self.table)
            .set_key(Some(keys::notifications(user_id)))
            .update_expression("REMOVE telegram_chat_id, linked_at")
            .send()
            .await
            .map_err(db_error)?;
        Ok(())
    }

    pub async fn set_notification_events(&self, user_id: &str, events: &[String]) -> Result<Notifications, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(self.table)
            .set_key(Some(keys::notifications(user_id)))
            .update_expression("SET events = :events")
            .expression_attribute_values(":events", AttributeValue::L(events.iter().map(|e| s(e.as_str())).collect()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(db_error)?;
        from_item(out.attributes.unwrap_or_default())
    }
}

//! The `broadcast` function: the table's stream in, every change pushed to each of its user's
//! WebSocket connections (through API Gateway's Management API), revoked sessions' connections
//! closed, and the user's Telegram told what they asked to hear about.

use crate::error::ApiError;
use crate::live::store::{Connection, LiveStore};
use crate::live::stream::{changes_of, close_reasons, push_message, Change, StreamEvent, UserChange};
use crate::state::{Bitget, Cache, Table, Telegram};
use aws_sdk_apigatewaymanagement::primitives::Blob;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};

/// API Gateway's Management API for this stage's connections (locally, `make dev`'s gateway).
pub struct Gateway {
    pub client: aws_sdk_apigatewaymanagement::Client,
}

/// What happened to one message sent to a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    /// 410: the client is gone; the connection is forgotten.
    Gone,
    Failed,
}

impl Gateway {
    pub fn new(sdk: &crate::aws::SdkConfig, endpoint: &str) -> Self {
        let config = aws_sdk_apigatewaymanagement::config::Builder::from(sdk).endpoint_url(endpoint).build();
        Gateway { client: aws_sdk_apigatewaymanagement::Client::from_conf(config) }
    }

    pub async fn send(&self, connection_id: &str, message: &str) -> Sent {
        let sent = self.client.post_to_connection().connection_id(connection_id).data(Blob::new(message.as_bytes())).send().await;
        match sent {
            Ok(_) => Sent::Delivered,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_gone_exception()) => Sent::Gone,
            Err(e) => {
                tracing::warn!(connection_id, error = %aws_sdk_apigatewaymanagement::error::DisplayErrorContext(&e), "a push failed");
                Sent::Failed
            }
        }
    }

    /// Closes a connection from the server's side (API Gateway then runs `$disconnect`).
    pub async fn close(&self, connection_id: &str) -> Sent {
        match self.client.delete_connection().connection_id(connection_id).send().await {
            Ok(_) => Sent::Delivered,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_gone_exception()) => Sent::Gone,
            Err(e) => {
                tracing::warn!(connection_id, error = %aws_sdk_apigatewaymanagement::error::DisplayErrorContext(&e), "closing a connection failed");
                Sent::Failed
            }
        }
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct BroadcastReport {
    pub records: usize,
    pub changes: usize,
    pub pushed: usize,
    pub gone: usize,
    pub failed: usize,
    pub closed: usize,
    pub notified: usize,
}

/// Whether a revocation ends this connection.
fn revoked(change: &Change, connection: &Connection) -> bool {
    match change {
        Change::Revoked { before_ms, sessions, account_gone } => {
            *account_gone
                || before_ms.is_some_and(|cutoff| connection.issued_at_ms < cutoff)
                || connection.session_id.as_ref().is_some_and(|sid| sessions.contains(sid))
        }
        _ => false,
    }
}

/// Sends `messages` to one connection in order, stopping at a 410.
async fn send_all(gateway: &Gateway, connection_id: String, messages: &[String]) -> (String, Vec<Sent>) {
    let mut outcomes = Vec::new();
    for message in messages {
        let sent = gateway.send(&connection_id, message).await;
        let gone = sent == Sent::Gone;
        outcomes.push(sent);
        if gone {
            break;
        }
    }
    (connection_id, outcomes)
}

/// One batch of stream records. A failure to read a user's connections fails the batch (the
/// event source mapping retries it, bisecting); a push that fails is logged and counted, and
/// Telegram never fails anything.
pub async fn handle(
    state: &(impl Table + Cache + Bitget + Telegram),
    gateway: &Gateway,
    event: StreamEvent,
) -> Result<BroadcastReport, ApiError> {
    let changes: Vec<UserChange> = event.records.iter().flat_map(changes_of).collect();
    let mut report = BroadcastReport { records: event.records.len(), changes: changes.len(), ..Default::default() };
    if changes.is_empty() {
        return Ok(report);
    }
    let reasons = close_reasons(&changes);
    let symbols: Vec<String> = changes
        .iter()
        .filter_map(|c| match &c.change {
            Change::Position(p) => Some(p.symbol.clone()),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let marks = crate::trading::service::marks(state, &symbols).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e.chain(), "marks unavailable; positions are pushed at their entry price");
        Default::default()
    });
    let mut by_user: BTreeMap<&str, Vec<&UserChange>> = BTreeMap::new();
    for change in &changes {
        by_user.entry(change.user_id.as_str()).or_default().push(change);
    }
    let store = LiveStore { client: state.dynamo(), table: &state.config().table_name };
    for (user_id, user_changes) in &by_user {
        let connections = store.of_user(user_id).await?;
        if connections.is_empty() {
            continue;
        }
        let mut closing: BTreeSet<String> = BTreeSet::new();
        let mut messages = Vec::new();
        for change in user_changes {
            if matches!(change.change, Change::Revoked { .. }) {
                closing.extend(connections.iter().filter(|c| revoked(&change.change, c)).map(|c| c.connection_id.clone()));
                continue;
            }
            let reason = match &change.change {
                Change::Position(p) => reasons.get(&(change.user_id.clone(), p.symbol.clone())).map(String::as_str),
                _ => None,
            };
            messages.push(push_message(&change.change, &marks, reason).to_string());
        }
        // In stream order per connection (the stream orders each item's changes).
        let targets: Vec<String> =
            connections.iter().map(|c| c.connection_id.clone()).filter(|id| !closing.contains(id.as_str())).collect();
        let sends = targets.into_iter().map(|id| send_all(gateway, id, &messages));
        let results: Vec<(String, Vec<Sent>)> = futures::stream::iter(sends).buffer_unordered(16).collect().await;
        for (connection_id, outcomes) in results {
            for sent in outcomes {
                match sent {
                    Sent::Delivered => report.pushed += 1,
                    Sent::Failed => report.failed += 1,
                    Sent::Gone => {
                        report.gone += 1;
                        // Its pointer and item expire anyway: not worth failing the batch.
                        if let Err(e) = store.remove(user_id, &connection_id).await {
                            tracing::warn!(error = %e, "a gone connection could not be forgotten");
                        }
                    }
                }
            }
        }
        for connection_id in closing {
            gateway.close(&connection_id).await;
            if let Err(e) = store.remove(user_id, &connection_id).await {
                tracing::warn!(error = %e, "a closed connection could not be forgotten");
            }
            report.closed += 1;
        }
    }
    // Pushes are out; Telegram gets what time is left, and never fails or holds the batch.
    report.notified = tokio::time::timeout(crate::live::telegram::NOTIFY_BUDGET, crate::live::telegram::notify(state, &changes))
        .await
        .unwrap_or_else(|_| {
            tracing::warn!("telegram sends cut short by their budget");
            0
        });
    Ok(report)
}

/// The `broadcast` function's one entry: the batch handled, its figures logged; a failure logged
/// once with its causes and returned, so the event source mapping retries (bisecting) the batch.
pub async fn serve(
    state: &(impl Table + Cache + Bitget + Telegram),
    gateway: &Gateway,
    event: lambda_runtime::LambdaEvent<StreamEvent>,
) -> Result<BroadcastReport, lambda_runtime::Error> {
    let started = std::time::Instant::now();
    match handle(state, gateway, event.payload).await {
        Ok(report) => {
            tracing::info!(
                records = report.records,
                changes = report.changes,
                pushed = report.pushed,
                gone = report.gone,
                failed = report.failed,
                closed = report.closed,
                notified = report.notified,
                duration_ms = started.elapsed().as_millis() as u64,
                "broadcast done"
            );
            Ok(report)
        }
        Err(e) => {
            tracing::error!(error = %e.chain(), "broadcast failed; the batch is retried");
            Err(e.into())
        }
    }
}

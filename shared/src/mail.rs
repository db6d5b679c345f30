//! Outgoing mail: SES v2 in AWS, a JSON-lines outbox file locally.

use crate::config::Config;
use serde::Serialize;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

#[derive(Clone, Serialize)]
pub struct Email {
    pub to: String,
    pub subject: String,
    pub body: String,
    /// Only in the local outbox, so tests and developers can read the code without parsing prose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The mail's link token, likewise only in the local outbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for Email {
    // The body carries the code (or a link token); the address is personal data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let domain = self.to.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        f.debug_struct("Email")
            .field("to", &format_args!("***@{domain}"))
            .field("subject", &self.subject)
            .field("body", &"[redacted]")
            .field("code", &self.code.as_ref().map(|_| "[redacted]"))
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

pub enum Mailer {
    Outbox { path: PathBuf, lock: tokio::sync::Mutex<()> },
    Ses { client: aws_sdk_sesv2::Client, from: String },
}

#[derive(Debug, thiserror::Error)]
#[error("mail could not be sent: {0}")]
pub struct MailError(String);

impl Mailer {
    pub fn from_config(config: &Config, sdk: &crate::aws::SdkConfig) -> Self {
        if config.is_local() {
            Mailer::Outbox { path: config.outbox_path.clone(), lock: tokio::sync::Mutex::new(()) }
        } else {
            Mailer::Ses { client: aws_sdk_sesv2::Client::new(sdk), from: config.mail_from.clone() }
        }
    }

    pub async fn send(&self, email: &Email) -> Result<(), MailError> {
        match self {
            Mailer::Outbox { path, lock } => {
                let line = serde_json::to_string(email).map_err(|e| MailError(e.to_string()))? + "\n";
                let _guard = lock.lock().await;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(dir).await.map_err(|e| MailError(e.to_string()))?;
                }
                let mut file =
                    tokio::fs::OpenOptions::new().create(true).append(true).open(path).await.map_err(|e| MailError(e.to_string()))?;
                file.write_all(line.as_bytes()).await.map_err(|e| MailError(e.to_string()))?;
                // tokio's File finishes writes in the background unless flushed.
                file.flush().await.map_err(|e| MailError(e.to_string()))
            }
            Mailer::Ses { client, from } => {
                use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message};
                let content = |text: &str| Content::builder().data(text).charset("UTF-8").build().map_err(|e| MailError(e.to_string()));
                let message =
                    Message::builder().subject(content(&email.subject)?).body(Body::builder().text(content(&email.body)?).build()).build();
                client
                    .send_email()
                    .from_email_address(from)
                    .destination(Destination::builder().to_addresses(&email.to).build())
                    .content(EmailContent::builder().simple(message).build())
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| MailError(aws_sdk_sesv2::error::DisplayErrorContext(e).to_string()))
            }
        }
    }
}

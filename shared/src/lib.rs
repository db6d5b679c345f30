//! The common library of every Lambda in the workspace.

pub mod admin;
pub mod alerts;
pub mod auth;
pub mod aws;
pub mod config;
pub mod crypto;
pub mod dynamo;
pub mod error;
pub mod guardian;
pub mod handlers;
pub mod http;
pub mod keys;
pub mod live;
pub mod mail;
pub mod probes;
pub mod redis_conn;
pub mod sdk_http;
pub mod secrets;
pub mod state;
pub mod telemetry;
pub mod trading;

pub use error::ApiError;
pub use state::{App, AppState};

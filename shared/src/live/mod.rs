//! Live on every device and told on Telegram: the WebSocket connections of each user, the
//! table's stream mapped to what users see, the `broadcast` function that pushes it, and the
//! per-user Telegram notifications.

pub mod broadcast;
pub mod store;
pub mod stream;
pub mod telegram;

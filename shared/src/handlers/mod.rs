//! One module per route; each function crate's `main` serves exactly one of them.
pub mod admin;
pub mod auth;
pub mod health;
pub mod live;
pub mod trading;

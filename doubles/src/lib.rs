//! Doubles of the external APIs the project calls, for tests and the local stack. Each enforces
//! what the real API enforces (signatures, timestamps, precision, rate limits, documented error
//! codes), and Bitget's is checked by an independent client (ccxt) in `make test`.

pub mod bitget;
pub mod stream_source;
pub mod telegram;
pub mod ws_gateway;

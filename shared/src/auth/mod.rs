pub mod email;
pub mod limits;
pub mod password;
pub mod session;
pub mod store;
pub mod tokens;

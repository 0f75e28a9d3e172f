//! `pollen-agent`: the agent daemon, and the piece-serving code the server's
//! seed shares with it.

pub mod connection;
pub mod error;
pub mod file_set;
pub mod piece_cache;
pub mod piece_picker;
pub mod rate_limit;
pub mod seed;
pub mod store;
#[cfg(test)]
mod test_util;
pub mod upload;

pub use error::{Error, Result};

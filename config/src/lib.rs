//! `pollen-config`: the server's and the agent's YAML configuration.
//!
//! GoFD's layout and key names are accepted as they are (`net.mgntPort`,
//! `control.cacheSize`, …), including its misspellings `contorl` and
//! `passowrd`. Loading goes read → parse → normalise → [`validate`], and
//! every failure is a [`ConfigError`] naming the offending field. Each
//! component receives only its own section.
//!
//! [`validate`]: ServerConfig::validate

mod agent;
mod error;
mod password;
mod server;
mod tls;

pub use agent::{AgentConfig, AgentControl, AgentNet, ServerLink};
pub use error::{ConfigError, Result};
pub use password::{hash_password, is_password_hash, verify_password};
pub use server::{ServerAuth, ServerConfig, ServerControl, ServerNet};
pub use tls::{CertifiedKey, Tls, TlsTrust, TrustField};

use std::path::Path;

/// Bytes in one "MB" of `speed` and `cacheSize` (GoFD's unit): 1 MiB.
pub const MB: u64 = 1024 * 1024;

/// Converts a MB/s speed to bytes per second; `0` means unlimited (`None`).
pub fn speed_to_bytes(mb_per_sec: f64) -> Option<u64> {
    (mb_per_sec > 0.0).then(|| ((mb_per_sec * MB as f64) as u64).max(1))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn check_port(field: &'static str, port: u16) -> Result<()> {
    if port == 0 {
        return Err(ConfigError::invalid(
            field,
            "must be a port number between 1 and 65535",
        ));
    }
    Ok(())
}

fn check_speed(field: &'static str, v: f64) -> Result<()> {
    if !v.is_finite() || v < 0.0 {
        return Err(ConfigError::invalid(
            field,
            "must be a number of MB/s, 0 for unlimited",
        ));
    }
    Ok(())
}

fn check_tls(tls: Option<&Tls>) -> Result<()> {
    if let Some(tls) = tls {
        tls.load()?;
    }
    Ok(())
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn shipped_examples_load() {
        let s =
            ServerConfig::from_yaml(include_str!("../examples/server.yml"), "server.yml").unwrap();
        assert!(verify_password(
            s.auth.password.as_deref().unwrap(),
            "changeme"
        ));
        assert_eq!(s.net.mgnt_port, 45000);
        let a = AgentConfig::from_yaml(include_str!("../examples/agent.yml"), "agent.yml").unwrap();
        assert_eq!(a.net.ip, Some(std::net::IpAddr::from([127, 0, 0, 2])));
        assert_eq!(
            a.server.base_url().as_deref(),
            Some("http://127.0.0.1:45000")
        );
    }
}

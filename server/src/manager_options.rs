//! Tunables of the task lifecycle, and their values from the configuration.

use std::net::SocketAddr;
use std::time::Duration;

use pollen_agent::https::ClientTrust;
use pollen_config::ServerConfig;

use crate::agent_client::AgentClientOptions;

/// Tunables of the task lifecycle.
#[derive(Clone, Debug)]
pub struct ManagerOptions {
    /// Tasks distributing at once (`control.maxActive`); others wait in `INIT`.
    pub max_active: usize,
    /// Agents contacted at once per task (`control.pushConcurrency`).
    pub push_concurrency: usize,
    /// Peers given to each agent (`control.peerSetSize`).
    pub peer_set_size: usize,
    /// Tasks with at least this many destinations give most of them slim
    /// pushes (`control.slimPushesFrom`; 0: never).
    pub slim_pushes_from: usize,
    /// Agents' data port, for peer addresses (`net.agentDataPort`).
    pub agent_data_port: u16,
    /// The seed's data address told to agents.
    pub seed_addr: SocketAddr,
    /// Where agents `POST` their reports.
    pub report_url: String,
    /// Agent client: management port, timeout, retries.
    pub agent: AgentClientOptions,
    /// A destination silent for this long after its push is failed.
    pub report_timeout: Duration,
    /// How often the watchdog looks.
    pub watchdog_interval: Duration,
    /// Metainfo builds (hashing) running at once.
    pub build_concurrency: usize,
    /// Tasks kept; the oldest final ones are forgotten beyond this.
    pub max_tasks: usize,
    /// Minimum time between two saves of the same task.
    pub persist_interval: Duration,
}

impl ManagerOptions {
    /// Options from the configuration, with the seed's address, the
    /// management port's reachable address, and the trust for agents'
    /// certificates (loaded from `net.agentTls`).
    pub fn from_config(
        config: &ServerConfig,
        seed_addr: SocketAddr,
        mgnt_addr: SocketAddr,
        agent_trust: ClientTrust,
    ) -> Self {
        let c = &config.control;
        let scheme = if config.net.tls.is_some() {
            "https"
        } else {
            "http"
        };
        Self {
            max_active: c.max_active,
            push_concurrency: c.push_concurrency,
            peer_set_size: c.peer_set_size,
            slim_pushes_from: c.slim_pushes_from,
            agent_data_port: config.net.agent_data_port,
            seed_addr,
            report_url: format!("{scheme}://{mgnt_addr}/api/v1/server/reports"),
            agent: AgentClientOptions {
                port: config.net.agent_mgnt_port,
                https: config.net.agent_tls.is_some(),
                trust: agent_trust,
                timeout: Duration::from_secs(c.agent_timeout_secs),
                retries: 3,
                backoff: Duration::from_millis(500),
            },
            report_timeout: Duration::from_secs(60),
            watchdog_interval: Duration::from_secs(5),
            build_concurrency: 2,
            max_tasks: 10_000,
            persist_interval: Duration::from_secs(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_config_names_the_reachable_addresses() {
        let mut c = ServerConfig::default();
        c.control.agent_timeout_secs = 7;
        let o = ManagerOptions::from_config(
            &c,
            "127.0.0.1:45001".parse().unwrap(),
            "[::1]:45000".parse().unwrap(),
            ClientTrust::default(),
        );
        assert_eq!(o.report_url, "http://[::1]:45000/api/v1/server/reports");
        assert_eq!(o.agent.port, 45010);
        assert!(!o.agent.https);
        assert_eq!(o.agent.timeout, Duration::from_secs(7));
        assert_eq!(o.agent.retries, 3);
        assert_eq!(o.max_active, c.control.max_active);
        assert_eq!(o.agent_data_port, 45011);
    }

    #[test]
    fn tls_settings_pick_the_schemes() {
        let mut c = ServerConfig::default();
        c.net.tls = Some(pollen_config::Tls {
            cert: "c.pem".into(),
            key: "k.pem".into(),
        });
        c.net.agent_tls = Some(pollen_config::TlsTrust::default());
        let o = ManagerOptions::from_config(
            &c,
            "127.0.0.1:45001".parse().unwrap(),
            "127.0.0.1:45000".parse().unwrap(),
            ClientTrust::default(),
        );
        assert_eq!(
            o.report_url,
            "https://127.0.0.1:45000/api/v1/server/reports"
        );
        assert!(o.agent.https);
    }
}

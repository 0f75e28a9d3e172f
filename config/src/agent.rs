//! The agent's configuration (GoFD's `agent.yml` layout, plus `server`).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, Result};
use crate::{check_port, check_speed, check_tls, read, Tls, TlsTrust, TrustField};

/// Top level of `agent.yml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    pub name: String,
    /// Everything the agent writes stays inside this directory.
    pub downdir: PathBuf,
    /// GoFD's log config path; accepted and ignored (use `RUST_LOG`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    pub net: AgentNet,
    pub server: ServerLink,
    /// GoFD's agent `auth` section; accepted and ignored, because the
    /// server signs its commands (see `server.publicKey`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<serde_yaml::Value>,
    #[serde(alias = "contorl")]
    pub control: AgentControl,
}

/// `net` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentNet {
    /// This host's address: listening address, and source address of
    /// connections to peers. Must be the address the server knows it by
    /// (the one in the tasks' `destIPs`). When absent, the agent derives it
    /// at start from its route to `server.addr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    pub mgnt_port: u16,
    pub data_port: u16,
    /// GoFD's `net.tls`: serve the management API over HTTPS with these files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

/// `server` section: how to reach and trust the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerLink {
    /// The server's management address: `host:port`, `http://host:port` or
    /// `https://host:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// How to trust the server's certificate when it speaks HTTPS (for the
    /// key fetch and for progress reports). Makes a bare `host:port` in
    /// `addr` mean HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsTrust>,
    /// The server's public key (PEM). When absent it is fetched once from
    /// `addr` and pinned in `<downdir>/.pollen/server.pub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PathBuf>,
}

/// Most worker threads an agent may ask for.
const MAX_WORKER_THREADS: usize = 1024;

/// `control` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentControl {
    /// Piece cache for uploads, MB.
    pub cache_size: u64,
    /// Tasks this agent runs at once; further pushes are refused.
    pub max_active: usize,
    /// This agent's total upload cap, MB/s; 0 is unlimited.
    pub upload_speed: f64,
    /// This agent's total download cap, MB/s; 0 is unlimited.
    pub download_speed: f64,
    /// Threads that run the agent's network and bookkeeping; 0 is one per
    /// core. Hashing and disk I/O run on a separate blocking pool either
    /// way. Fewer threads cost less CPU on a busy host (less handing of
    /// work between threads); one moved 1 GiB as fast as two in the lab.
    pub worker_threads: usize,
    /// Accepted for GoFD compatibility; the task's speed comes from the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            name: "agent".into(),
            downdir: PathBuf::from("pollen-download"),
            log: None,
            net: AgentNet::default(),
            server: ServerLink::default(),
            auth: None,
            control: AgentControl::default(),
        }
    }
}

impl Default for AgentNet {
    fn default() -> Self {
        Self {
            ip: None,
            mgnt_port: 45010,
            data_port: 45011,
            tls: None,
        }
    }
}

impl Default for AgentControl {
    fn default() -> Self {
        Self {
            cache_size: 16,
            max_active: 10,
            upload_speed: 0.0,
            download_speed: 0.0,
            worker_threads: 0,
            speed: None,
        }
    }
}

impl ServerLink {
    /// `addr` as a base URL. Without a scheme, `https://` is added when
    /// `tls` is set and `http://` otherwise.
    pub fn base_url(&self) -> Option<String> {
        self.addr.as_ref().map(|a| {
            let a = a.trim().trim_end_matches('/');
            if a.contains("://") {
                a.to_owned()
            } else if self.tls.is_some() {
                format!("https://{a}")
            } else {
                format!("http://{a}")
            }
        })
    }
}

impl AgentConfig {
    /// Reads, parses, normalises and validates a YAML file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or the field at fault.
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_yaml(&read(path)?, &path.display().to_string())
    }

    /// Parses, normalises and validates YAML text.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field at fault.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let mut c = Self::parse_unvalidated(text, origin)?;
        c.normalize();
        c.validate()?;
        Ok(c)
    }

    /// Parses YAML text without normalising or validating it, so that
    /// command-line overrides can be applied before [`AgentConfig::validate`].
    ///
    /// # Errors
    /// [`ConfigError::Parse`] for invalid YAML, unknown keys or wrong types.
    pub fn parse_unvalidated(text: &str, origin: &str) -> Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
            origin: origin.to_owned(),
            source,
        })
    }

    /// Trims names and the server address.
    pub fn normalize(&mut self) {
        self.name = self.name.trim().to_owned();
        if let Some(a) = &self.server.addr {
            let a = a.trim();
            self.server.addr = (!a.is_empty()).then(|| a.to_owned());
        }
    }

    /// # Errors
    /// The first invalid field.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(ConfigError::invalid("name", "must not be empty"));
        }
        if self.downdir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("downdir", "must not be empty"));
        }
        check_port("net.mgntPort", self.net.mgnt_port)?;
        check_port("net.dataPort", self.net.data_port)?;
        if self.net.mgnt_port == self.net.data_port {
            return Err(ConfigError::invalid(
                "net.dataPort",
                "must differ from net.mgntPort",
            ));
        }
        check_tls(self.net.tls.as_ref())?;
        if self.server.addr.is_none() && self.server.public_key.is_none() {
            return Err(ConfigError::invalid(
                "server.addr",
                "is required (or set server.publicKey) so the agent can trust the server's commands",
            ));
        }
        match self.net.ip {
            Some(ip) if ip.is_unspecified() => {
                return Err(ConfigError::invalid(
                    "net.ip",
                    "must be this host's own address (the one in the tasks' destIPs), not 0.0.0.0",
                ));
            }
            None if self.server.addr.is_none() => {
                return Err(ConfigError::invalid(
                    "net.ip",
                    "is required when server.addr is not set (otherwise it is derived from the route to the server)",
                ));
            }
            _ => {}
        }
        if let Some(a) = &self.server.addr {
            let scheme = a.split_once("://").map(|(s, _)| s);
            if a.contains(char::is_whitespace) || !matches!(scheme, None | Some("http" | "https")) {
                return Err(ConfigError::invalid(
                    "server.addr",
                    "must be host:port, http://host:port or https://host:port",
                ));
            }
            if scheme == Some("http") && self.server.tls.is_some() {
                return Err(ConfigError::invalid(
                    "server.tls",
                    "is set but server.addr says http://; use https:// or no scheme",
                ));
            }
        }
        if let Some(trust) = &self.server.tls {
            trust.load_ca(TrustField::SERVER)?;
        }
        let c = &self.control;
        if c.max_active == 0 {
            return Err(ConfigError::invalid(
                "control.maxActive",
                "must be at least 1",
            ));
        }
        check_speed("control.uploadSpeed", c.upload_speed)?;
        check_speed("control.downloadSpeed", c.download_speed)?;
        if c.worker_threads > MAX_WORKER_THREADS {
            return Err(ConfigError::invalid(
                "control.workerThreads",
                format!("must be at most {MAX_WORKER_THREADS} (0 is one per core)"),
            ));
        }
        if c.cache_size > 1024 * 1024 {
            return Err(ConfigError::invalid(
                "control.cacheSize",
                "must be at most 1048576 MB",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gofd_agent_yml_is_accepted() {
        let yml = "name: agent\ndowndir: /tmp/dl\nnet:\n    ip: 127.0.0.2\n    mgntPort: 45010\n    dataPort: 45011\nauth:\n    username: gofd\n    password: LFFex2mDcetFDnghcZqpz0z/zbzYhRLBj58fnAs45uc=\n    factor: 802cbde8\nserver:\n    addr: 127.0.0.1:45000\ncontorl:\n    cacheSize: 50\n    maxActive: 10\n";
        let c = AgentConfig::from_yaml(yml, "t").unwrap();
        assert_eq!(c.downdir, PathBuf::from("/tmp/dl"));
        assert_eq!(c.net.ip, Some(IpAddr::from([127, 0, 0, 2])));
        assert_eq!(c.control.cache_size, 50);
        assert_eq!(
            c.server.base_url().as_deref(),
            Some("http://127.0.0.1:45000")
        );
    }

    #[test]
    fn needs_a_way_to_trust_the_server() {
        let e = AgentConfig::from_yaml("name: a\n", "t").unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    field: "server.addr",
                    ..
                }
            ),
            "{e}"
        );
        let ok =
            AgentConfig::from_yaml("net:\n  ip: 10.0.0.5\nserver:\n  publicKey: /k.pub\n", "t")
                .unwrap();
        assert_eq!(ok.server.base_url(), None);
        // Without server.addr there is no route to derive net.ip from.
        let e = AgentConfig::from_yaml("server:\n  publicKey: /k.pub\n", "t").unwrap_err();
        assert_eq!(e.field(), Some("net.ip"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let field = |y: &str| match AgentConfig::from_yaml(
            &format!("server:\n  addr: 127.0.0.1:45000\n{y}"),
            "t",
        ) {
            Err(e) => e.field().map_or_else(|| e.to_string(), str::to_owned),
            Ok(_) => "ok".into(),
        };
        assert_eq!(field("net:\n  dataPort: 45010\n"), "net.dataPort");
        assert_eq!(field("net:\n  ip: 0.0.0.0\n"), "net.ip");
        assert_eq!(
            field("control:\n  uploadSpeed: .nan\n"),
            "control.uploadSpeed"
        );
        assert_eq!(field("control:\n  maxActive: 0\n"), "control.maxActive");
        assert_eq!(field("downdir: ''\n"), "downdir");
        assert!(field("bogus: 1\n").contains("bogus"));
        assert_eq!(
            field("net:\n  tls:\n    cert: /nonexistent.crt\n    key: /k\n"),
            "net.tls.cert"
        );
        assert_eq!(field(""), "ok");
        let bad_scheme = AgentConfig::from_yaml("server:\n  addr: ftp://h:1\n", "t");
        assert_eq!(bad_scheme.unwrap_err().field(), Some("server.addr"),);
        let missing_ca = AgentConfig::from_yaml(
            "server:\n  addr: h:1\n  tls:\n    ca: /nonexistent-ca.pem\n",
            "t",
        );
        assert_eq!(missing_ca.unwrap_err().field(), Some("server.tls.ca"));
        let tls_over_http = AgentConfig::from_yaml(
            "server:\n  addr: http://h:1\n  tls:\n    insecure: true\n",
            "t",
        );
        assert_eq!(tls_over_http.unwrap_err().field(), Some("server.tls"));
    }

    #[test]
    fn worker_threads_default_to_one_per_core_and_are_bounded() {
        let parse = |y: &str| {
            AgentConfig::from_yaml(&format!("server:\n  addr: 127.0.0.1:45000\n{y}"), "t")
        };
        assert_eq!(parse("").unwrap().control.worker_threads, 0);
        let one = parse("control:\n  workerThreads: 1\n").unwrap();
        assert_eq!(one.control.worker_threads, 1);
        let four = parse("control:\n  workerThreads: 4\n").unwrap();
        assert_eq!(four.control.worker_threads, 4);
        let e = parse("control:\n  workerThreads: 5000\n").unwrap_err();
        assert_eq!(e.field(), Some("control.workerThreads"));
        assert!(e.to_string().contains("at most 1024"), "{e}");
        assert!(parse("control:\n  workerThreads: -1\n").is_err());
    }

    #[test]
    fn net_ip_is_optional_with_a_server_address() {
        let c = AgentConfig::from_yaml("server:\n  addr: 127.0.0.1:45000\n", "t").unwrap();
        assert_eq!(c.net.ip, None);
        let c = AgentConfig::from_yaml(
            "net:\n  ip: 127.0.0.7\nserver:\n  addr: 127.0.0.1:45000\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.net.ip, Some(IpAddr::from([127, 0, 0, 7])));
    }

    #[test]
    fn server_tls_picks_https() {
        let https = |y: &str| {
            AgentConfig::from_yaml(y, "t")
                .unwrap()
                .server
                .base_url()
                .unwrap()
        };
        assert_eq!(
            https("server:\n  addr: h:45000\n  tls:\n    insecure: true\n"),
            "https://h:45000"
        );
        assert_eq!(
            https("server:\n  addr: https://h:45000/\n"),
            "https://h:45000"
        );
        assert_eq!(https("server:\n  addr: h:45000\n"), "http://h:45000");
    }

    #[test]
    fn gofd_net_tls_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = crate::tls::tests::pem_files(dir.path());
        let yml = format!(
            "net:\n    ip: 127.0.0.2\n    tls:\n        cert: {}\n        key: {}\nserver:\n    addr: https://127.0.0.1:45000\n    tls:\n        ca: {}\n",
            cert.display(),
            key.display(),
            cert.display()
        );
        let c = AgentConfig::from_yaml(&yml, "t").unwrap();
        assert_eq!(c.net.tls.map(|t| t.key), Some(key));
        assert_eq!(c.server.tls.and_then(|t| t.ca), Some(cert));
    }
}

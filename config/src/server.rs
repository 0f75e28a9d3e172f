//! The server's configuration (GoFD's `server.yml` layout).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, Result};
use crate::{
    check_port, check_speed, check_tls, is_password_hash, read, Tls, TlsTrust, TrustField,
};

/// Top level of `server.yml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub name: String,
    /// GoFD's log config path; accepted and ignored (use `RUST_LOG`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Where the server keeps its key pair, generated credentials and tasks.
    #[serde(rename = "datadir", alias = "dataDir")]
    pub data_dir: PathBuf,
    pub net: ServerNet,
    pub auth: ServerAuth,
    #[serde(alias = "contorl")]
    pub control: ServerControl,
}

/// `net` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerNet {
    /// Address the management and data ports listen on.
    pub ip: IpAddr,
    pub mgnt_port: u16,
    pub data_port: u16,
    /// Management port of every agent.
    pub agent_mgnt_port: u16,
    /// Data port of every agent.
    pub agent_data_port: u16,
    /// GoFD's `net.tls`: serve the REST API over HTTPS with these files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// Pollen's addition: reach the agents' management APIs over HTTPS,
    /// trusting their certificates as this says. Absent: plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_tls: Option<TlsTrust>,
}

/// `auth` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerAuth {
    pub username: String,
    /// Argon2 PHC hash from `pollen passwd`. When absent, the server generates
    /// a password at first start, stores its hash in `datadir` and prints it.
    #[serde(alias = "passowrd", skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// GoFD's encryption factor; accepted and ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor: Option<String>,
    /// GoFD's checksum; accepted and ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crc: Option<String>,
    /// Ed25519 private key (PKCS#8 PEM) from `pollen keygen`; default
    /// `<datadir>/server.key`, generated at first start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PathBuf>,
    /// Lifetime of bearer tokens from `POST /api/v1/server/token`, seconds.
    pub token_ttl_secs: u64,
}

/// `control` section (GoFD also spells it `contorl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerControl {
    /// The seed's total upload cap, MB/s; 0 is unlimited.
    pub speed: f64,
    /// Seed piece cache, MB.
    pub cache_size: u64,
    /// Tasks distributing at once; more wait in `INIT`.
    pub max_active: usize,
    /// Agents contacted at once when pushing or cancelling a task.
    pub push_concurrency: usize,
    /// Per-request timeout towards agents, seconds.
    pub agent_timeout_secs: u64,
    /// Size of each agent's random peer set.
    pub peer_set_size: usize,
    /// From this many destinations on (0: never), push the whole metainfo
    /// to only some of them (at least 4, and about the square root of their
    /// number); the others get a slim push and fetch the info dictionary
    /// from those over the data port.
    pub slim_pushes_from: usize,
}

fn default_name() -> String {
    "server".into()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("pollen-server")
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            name: default_name(),
            log: None,
            data_dir: default_data_dir(),
            net: ServerNet::default(),
            auth: ServerAuth::default(),
            control: ServerControl::default(),
        }
    }
}

impl Default for ServerNet {
    fn default() -> Self {
        Self {
            ip: IpAddr::from([127, 0, 0, 1]),
            mgnt_port: 45000,
            data_port: 45001,
            agent_mgnt_port: 45010,
            agent_data_port: 45011,
            tls: None,
            agent_tls: None,
        }
    }
}

impl Default for ServerAuth {
    fn default() -> Self {
        Self {
            username: "pollen".into(),
            password: None,
            factor: None,
            crc: None,
            private_key: None,
            token_ttl_secs: 3600,
        }
    }
}

impl Default for ServerControl {
    fn default() -> Self {
        Self {
            speed: 0.0,
            cache_size: 64,
            max_active: 10,
            push_concurrency: 32,
            agent_timeout_secs: 10,
            peer_set_size: 30,
            slim_pushes_from: 64,
        }
    }
}

impl ServerConfig {
    /// Reads, parses, normalises and validates a YAML file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or the field at fault.
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_yaml(&read(path)?, &path.display().to_string())
    }

    /// Parses, normalises and validates YAML text; `origin` names it in errors.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field at fault.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let mut c: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
                origin: origin.to_owned(),
                source,
            })?
        };
        c.normalize();
        c.validate()?;
        Ok(c)
    }

    /// Trims names and fills derived defaults.
    pub fn normalize(&mut self) {
        self.name = self.name.trim().to_owned();
        self.auth.username = self.auth.username.trim().to_owned();
        if let Some(p) = &self.auth.password {
            self.auth.password = Some(p.trim().to_owned());
        }
    }

    /// Path of the signing key: `auth.privateKey`, else `<datadir>/server.key`.
    pub fn private_key_path(&self) -> PathBuf {
        self.auth
            .private_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("server.key"))
    }

    /// # Errors
    /// The first invalid field.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(ConfigError::invalid("name", "must not be empty"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("datadir", "must not be empty"));
        }
        let n = &self.net;
        check_port("net.mgntPort", n.mgnt_port)?;
        check_port("net.dataPort", n.data_port)?;
        check_port("net.agentMgntPort", n.agent_mgnt_port)?;
        check_port("net.agentDataPort", n.agent_data_port)?;
        if n.mgnt_port == n.data_port {
            return Err(ConfigError::invalid(
                "net.dataPort",
                "must differ from net.mgntPort",
            ));
        }
        if n.agent_mgnt_port == n.agent_data_port {
            return Err(ConfigError::invalid(
                "net.agentDataPort",
                "must differ from net.agentMgntPort",
            ));
        }
        check_tls(n.tls.as_ref())?;
        if let Some(trust) = &n.agent_tls {
            trust.load_ca(TrustField::AGENTS)?;
        }
        if self.auth.username.is_empty() || self.auth.username.contains(':') {
            return Err(ConfigError::invalid(
                "auth.username",
                "must be non-empty and contain no ':'",
            ));
        }
        if let Some(p) = &self.auth.password {
            if !is_password_hash(p) {
                return Err(ConfigError::invalid(
                    "auth.password",
                    "is not a password hash; store the output of `pollen passwd` (GoFD's encrypted passwords cannot be used)",
                ));
            }
        }
        if self.auth.token_ttl_secs == 0 {
            return Err(ConfigError::invalid(
                "auth.tokenTtlSecs",
                "must be at least 1",
            ));
        }
        let c = &self.control;
        check_speed("control.speed", c.speed)?;
        if c.max_active == 0 {
            return Err(ConfigError::invalid(
                "control.maxActive",
                "must be at least 1",
            ));
        }
        if c.push_concurrency == 0 {
            return Err(ConfigError::invalid(
                "control.pushConcurrency",
                "must be at least 1",
            ));
        }
        if c.agent_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                "control.agentTimeoutSecs",
                "must be at least 1",
            ));
        }
        if c.peer_set_size == 0 {
            return Err(ConfigError::invalid(
                "control.peerSetSize",
                "must be at least 1",
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
    use crate::hash_password;

    #[test]
    fn gofd_server_yml_is_accepted() {
        let hash = hash_password("gofd").unwrap();
        let yml = format!(
            "name: server\nlog: /x/log.xml\nnet:\n    ip: 127.0.0.1\n    mgntPort: 45000\n    dataPort: 45001\n    agentMgntPort: 45010\n    agentDataPort: 45011\nauth:\n    username: gofd\n    passowrd: '{hash}'\n    factor: 9427e80d\n    crc: 63F7\ncontorl:\n    speed: 50\n    cacheSize: 50\n    maxActive: 10\n"
        );
        let c = ServerConfig::from_yaml(&yml, "test").unwrap();
        assert_eq!(c.auth.username, "gofd");
        assert_eq!(c.auth.password.as_deref(), Some(hash.as_str()));
        assert_eq!(c.control.speed, 50.0);
        assert_eq!(c.control.max_active, 10);
        assert_eq!(c.net.agent_data_port, 45011);
    }

    #[test]
    fn slim_pushes_start_at_64_destinations_unless_set() {
        assert_eq!(ServerConfig::default().control.slim_pushes_from, 64);
        let c = ServerConfig::from_yaml("control:\n  slimPushesFrom: 0\n", "t").unwrap();
        assert_eq!(c.control.slim_pushes_from, 0);
        assert!(ServerConfig::from_yaml("control:\n  slimPushesFrom: -1\n", "t").is_err());
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = ServerConfig::from_yaml("", "test").unwrap();
        assert_eq!(c, ServerConfig::default());
        assert_eq!(
            c.private_key_path(),
            PathBuf::from("pollen-server/server.key")
        );
    }

    fn field_of(yml: &str) -> String {
        match ServerConfig::from_yaml(yml, "t") {
            Err(e) => e.field().map_or_else(|| e.to_string(), str::to_owned),
            Ok(_) => "ok".into(),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of("net:\n  mgntPort: 0\n"), "net.mgntPort");
        assert_eq!(field_of("net:\n  dataPort: 45000\n"), "net.dataPort");
        assert_eq!(field_of("control:\n  maxActive: 0\n"), "control.maxActive");
        assert_eq!(field_of("control:\n  speed: -1\n"), "control.speed");
        assert_eq!(field_of("auth:\n  password: plaintext\n"), "auth.password");
        assert_eq!(field_of("auth:\n  username: 'a:b'\n"), "auth.username");
        assert_eq!(
            field_of("net:\n  tls:\n    cert: /nonexistent/a.crt\n    key: b\n"),
            "net.tls.cert"
        );
        assert_eq!(
            field_of("net:\n  agentTls:\n    ca: /nonexistent/ca.pem\n"),
            "net.agentTls.ca"
        );
        let unknown = field_of("net:\n  mgtPort: 1\n");
        assert!(unknown.contains("mgtPort"), "{unknown}");
        let bad_type = field_of("net:\n  mgntPort: abc\n");
        assert!(bad_type.contains("mgntPort"), "{bad_type}");
        let bad_ip = field_of("net:\n  ip: 999.1.1.1\n");
        assert!(bad_ip.contains("net"), "{bad_ip}");
    }

    #[test]
    fn gofd_net_tls_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = crate::tls::tests::pem_files(dir.path());
        let yml = format!(
            "net:\n    tls:\n        cert: {}\n        key: {}\n",
            cert.display(),
            key.display()
        );
        let c = ServerConfig::from_yaml(&yml, "t").unwrap();
        assert_eq!(
            c.net.tls,
            Some(Tls {
                cert: cert.clone(),
                key: key.clone()
            })
        );
        assert_eq!(c.net.agent_tls, None);

        let missing_key = yml.replace(&key.display().to_string(), "/nonexistent/k.pem");
        assert_eq!(field_of(&missing_key), "net.tls.key");
        let key_as_cert = yml.replace(&cert.display().to_string(), &key.display().to_string());
        assert_eq!(field_of(&key_as_cert), "net.tls.cert");
        let no_key = format!("net:\n  tls:\n    cert: {}\n", cert.display());
        assert!(field_of(&no_key).contains("key"), "{}", field_of(&no_key));
    }

    #[test]
    fn agent_tls_is_additive() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = crate::tls::tests::pem_files(dir.path());
        let yml = format!("net:\n  agentTls:\n    ca: {}\n", cert.display());
        let c = ServerConfig::from_yaml(&yml, "t").unwrap();
        assert_eq!(
            c.net.agent_tls,
            Some(TlsTrust {
                ca: Some(cert),
                insecure: false
            })
        );
        let c = ServerConfig::from_yaml("net:\n  agentTls:\n    insecure: true\n", "t").unwrap();
        assert!(c.net.agent_tls.is_some_and(|t| t.insecure));
        assert_eq!(
            field_of(&format!("{yml}    insecure: true\n")),
            "net.agentTls.insecure"
        );
        assert!(field_of("net:\n  agentTls:\n    verify: no\n").contains("verify"));
    }
}

//! First-start and every-start preparation of the server's data directory:
//! the Ed25519 signing key pair and the user's credentials.
//!
//! * The private key (PKCS#8 PEM) lives at `auth.privateKey`, default
//!   `<datadir>/server.key`, mode 0600. Its public half (SPKI PEM) is written
//!   beside it as `server.pub` when missing, and always served from the
//!   private key itself, so the two cannot disagree.
//! * Without `auth.password` in the config, the credentials come from
//!   `<datadir>/credentials.yaml` (`username`, `passwordHash`, mode 0600). At
//!   first start a random password is generated, only its hash is stored, and
//!   the plaintext is handed back once so [`crate::run`] can print it.
//!
//! Everything here is blocking file I/O and Argon2 hashing: call it from
//! `spawn_blocking`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, DecodePrivateKey, EncodePublicKey};
use pollen_config::ServerConfig;
use pollen_protocol::token::{Signer, Verifier};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::auth::Credentials;
use crate::error::{Error, Result};

/// File name of the generated credentials inside `datadir`.
pub const CREDENTIALS_FILE: &str = "credentials.yaml";
/// File name of the public key, beside the private key.
pub const PUBLIC_KEY_FILE: &str = "server.pub";
const GENERATED_PASSWORD_LEN: usize = 24;

/// The server's signing material.
#[derive(Clone)]
pub struct Keys {
    pub signer: Signer,
    pub verifier: Verifier,
    /// SPKI PEM, as served on `GET /api/v1/server/pubkey`.
    pub public_pem: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

impl Keys {
    /// Keys from a private key PEM.
    ///
    /// # Errors
    /// [`Error::Key`] (naming `origin`) if it is not an Ed25519 PKCS#8 key.
    pub fn from_private_pem(pem: &str, origin: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Key {
            path: origin.to_path_buf(),
            reason,
        };
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| bad(format!("not an Ed25519 PKCS#8 PEM private key: {e}")))?;
        let public_pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| bad(e.to_string()))?;
        let signer = Signer::from_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let verifier = Verifier::from_pem(public_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            signer,
            verifier,
            public_pem,
        })
    }

    /// A fresh in-memory key pair (tests, demos).
    ///
    /// # Errors
    /// If key generation fails.
    pub fn generate() -> Result<Self> {
        let (private, _) = pollen_protocol::token::generate_keypair()?;
        Self::from_private_pem(&private, Path::new("<generated>"))
    }
}

/// What [`bootstrap`] prepared.
#[derive(Debug)]
pub struct Bootstrapped {
    pub keys: Keys,
    pub credentials: Credentials,
    /// The plaintext password, only when it was generated just now. Print it
    /// once (see [`credentials_banner`]) and drop it.
    pub generated_password: Option<String>,
    /// Where the generated credentials are stored, if they are.
    pub credentials_path: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CredentialsFile {
    username: String,
    password_hash: String,
}

/// Creates `datadir`, loads or creates the key pair, and loads or creates the
/// credentials.
///
/// # Errors
/// Any file that cannot be created or read, a malformed key or credentials
/// file.
pub fn bootstrap(config: &ServerConfig) -> Result<Bootstrapped> {
    create_private_dir(&config.data_dir)?;
    let private_path = config.private_key_path();
    let public_path = public_key_path(&private_path);
    if !private_path.exists() {
        write_keypair(&private_path, &public_path, false)?;
        tracing::info!(private = %private_path.display(), public = %public_path.display(), "generated the server key pair");
    }
    let pem =
        fs::read_to_string(&private_path).map_err(|e| Error::io("read key", &private_path, e))?;
    let keys = Keys::from_private_pem(&pem, &private_path)?;
    if !public_path.exists() {
        write_file(&public_path, keys.public_pem.as_bytes(), 0o644, false)?;
    }
    let (credentials, generated_password, credentials_path) = match &config.auth.password {
        Some(hash) => (
            Credentials {
                username: config.auth.username.clone(),
                password_hash: hash.clone(),
            },
            None,
            None,
        ),
        None => {
            let path = config.data_dir.join(CREDENTIALS_FILE);
            let (c, generated) = load_or_generate_credentials(&path, &config.auth.username)?;
            (c, generated, Some(path))
        }
    };
    Ok(Bootstrapped {
        keys,
        credentials,
        generated_password,
        credentials_path,
    })
}

/// `server.pub` in the directory of `private_path`.
pub fn public_key_path(private_path: &Path) -> PathBuf {
    private_path.with_file_name(PUBLIC_KEY_FILE)
}

/// Generates an Ed25519 key pair: the private key (PKCS#8 PEM, mode 0600) at
/// `private_path` and the public key (SPKI PEM, mode 0644) at `public_path`.
/// Parent directories are created. This is `pollen keygen`.
///
/// # Errors
/// [`Error::KeyExists`] if either file exists and `overwrite` is false; I/O
/// errors naming the file.
pub fn write_keypair(private_path: &Path, public_path: &Path, overwrite: bool) -> Result<()> {
    if !overwrite {
        for p in [private_path, public_path] {
            if p.exists() {
                return Err(Error::KeyExists(p.to_path_buf()));
            }
        }
    }
    let (private, public) = pollen_protocol::token::generate_keypair()?;
    for p in [private_path, public_path] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        }
    }
    write_file(private_path, private.as_bytes(), 0o600, overwrite)?;
    write_file(public_path, public.as_bytes(), 0o644, overwrite)
}

/// The banner printed once when credentials were generated.
pub fn credentials_banner(
    username: &str,
    password: &str,
    url: &str,
    stored_at: Option<&Path>,
) -> String {
    let line = "=".repeat(72);
    let stored = stored_at
        .map(|p| format!("\n  (only its hash is stored, in {})", p.display()))
        .unwrap_or_default();
    format!(
        "{line}\n  Pollen server: generated credentials (shown only this once)\n\n  URL:      {url}\n  username: {username}\n  password: {password}{stored}\n\n  Set auth.password (from `pollen passwd`) in server.yml to choose your own.\n{line}"
    )
}

fn load_or_generate_credentials(
    path: &Path,
    username: &str,
) -> Result<(Credentials, Option<String>)> {
    let bad = |reason: String| Error::Credentials {
        path: path.to_path_buf(),
        reason,
    };
    if path.exists() {
        let text = fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        let file: CredentialsFile = serde_yaml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if !pollen_config::is_password_hash(&file.password_hash) {
            return Err(bad("passwordHash is not a PHC password hash".into()));
        }
        if file.username != username {
            tracing::warn!(
                path = %path.display(),
                stored = %file.username,
                configured = %username,
                "credentials file names another user; using the stored user name"
            );
        }
        return Ok((
            Credentials {
                username: file.username,
                password_hash: file.password_hash,
            },
            None,
        ));
    }
    let password: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(GENERATED_PASSWORD_LEN)
        .map(char::from)
        .collect();
    let hash = pollen_config::hash_password(&password)?;
    let file = CredentialsFile {
        username: username.to_owned(),
        password_hash: hash.clone(),
    };
    let text = serde_yaml::to_string(&file).map_err(|e| bad(e.to_string()))?;
    write_file(path, text.as_bytes(), 0o600, false)?;
    Ok((
        Credentials {
            username: username.to_owned(),
            password_hash: hash,
        },
        Some(password),
    ))
}

fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
        .map_err(|e| Error::io("create data directory", dir, e))
}

/// Writes a whole file with `mode` (set at creation, so a private key is
/// never readable by others, even briefly), then fsyncs it.
fn write_file(path: &Path, bytes: &[u8], mode: u32, overwrite: bool) -> Result<()> {
    let mut o = OpenOptions::new();
    o.write(true);
    if overwrite {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = o.open(path).map_err(|e| Error::io("create", path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("chmod", path, e))?;
    }
    f.write_all(bytes)
        .map_err(|e| Error::io("write", path, e))?;
    f.sync_all().map_err(|e| Error::io("sync", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> ServerConfig {
        ServerConfig {
            data_dir: dir.join("data"),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn first_start_generates_then_reuses() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let first = bootstrap(&c).unwrap();
        let pw = first.generated_password.clone().unwrap();
        assert_eq!(pw.len(), GENERATED_PASSWORD_LEN);
        assert!(pollen_config::verify_password(
            &first.credentials.password_hash,
            &pw
        ));
        let cred_text = fs::read_to_string(c.data_dir.join(CREDENTIALS_FILE)).unwrap();
        assert!(!cred_text.contains(&pw), "plaintext must not be stored");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&c.data_dir.join("server.key")), 0o600);
            assert_eq!(mode(&c.data_dir.join(CREDENTIALS_FILE)), 0o600);
        }
        let public = fs::read_to_string(c.data_dir.join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(public, first.keys.public_pem);

        let second = bootstrap(&c).unwrap();
        assert!(second.generated_password.is_none());
        assert_eq!(second.credentials, first.credentials);
        assert_eq!(second.keys.public_pem, first.keys.public_pem);
    }

    #[test]
    fn configured_password_wins_and_keygen_refuses_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        c.auth.password = Some(pollen_config::hash_password("x").unwrap());
        let b = bootstrap(&c).unwrap();
        assert!(b.generated_password.is_none() && b.credentials_path.is_none());
        assert!(!c.data_dir.join(CREDENTIALS_FILE).exists());

        let k = tmp.path().join("k/a.key");
        let p = tmp.path().join("k/a.pub");
        write_keypair(&k, &p, false).unwrap();
        assert!(matches!(
            write_keypair(&k, &p, false),
            Err(Error::KeyExists(_))
        ));
        write_keypair(&k, &p, true).unwrap();
        let keys = Keys::from_private_pem(&fs::read_to_string(&k).unwrap(), &k).unwrap();
        assert_eq!(keys.public_pem, fs::read_to_string(&p).unwrap());
    }

    #[test]
    fn malformed_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        fs::create_dir_all(&c.data_dir).unwrap();
        fs::write(c.data_dir.join("server.key"), "nope").unwrap();
        assert!(matches!(bootstrap(&c), Err(Error::Key { .. })));
        fs::remove_file(c.data_dir.join("server.key")).unwrap();
        fs::write(c.data_dir.join(CREDENTIALS_FILE), "username: a\n").unwrap();
        assert!(matches!(bootstrap(&c), Err(Error::Credentials { .. })));
    }

    #[test]
    fn banner_names_everything() {
        let b = credentials_banner("pollen", "s3cret", "http://127.0.0.1:45000", None);
        assert!(
            b.contains("pollen") && b.contains("s3cret") && b.contains("http://127.0.0.1:45000")
        );
    }
}

//! `pollen keygen`: writes the server's Ed25519 key pair.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args)]
pub(crate) struct KeygenArgs {
    /// Private key path (PKCS#8 PEM). Set `auth.privateKey` to it.
    #[arg(long, default_value = "server.key")]
    private: PathBuf,
    /// Public key path (SPKI PEM). Give it to agents as `server.publicKey`.
    #[arg(long, default_value = "server.pub")]
    public: PathBuf,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

fn write_new(path: &Path, data: &str, mode: u32, force: bool) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    let mut f = opts.open(path).with_context(|| {
        if path.exists() && !force {
            format!("{} exists; pass --force to replace it", path.display())
        } else {
            format!("cannot create {}", path.display())
        }
    })?;
    f.write_all(data.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

pub(crate) fn keygen(args: KeygenArgs) -> Result<()> {
    if args.private == args.public {
        bail!("--private and --public must be different files");
    }
    let (private, public) = pollen_protocol::token::generate_keypair()?;
    write_new(&args.private, &private, 0o600, args.force)?;
    write_new(&args.public, &public, 0o644, args.force)?;
    println!("private key: {} (server: auth.privateKey)", args.private.display());
    println!("public key:  {} (agents: server.publicKey)", args.public.display());
    Ok(())
}

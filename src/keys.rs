//! `pollen keygen`: writes the server's Ed25519 key pair.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub(crate) struct KeygenArgs {
    /// Private key path (PKCS#8 PEM, mode 0600). Set `auth.privateKey` to it.
    #[arg(long, default_value = "server.key")]
    private: PathBuf,
    /// Public key path (SPKI PEM). Give it to agents as `server.publicKey`.
    #[arg(long, default_value = "server.pub")]
    public: PathBuf,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

pub(crate) fn keygen(args: KeygenArgs) -> Result<()> {
    if args.private == args.public {
        bail!("--private and --public must be different files");
    }
    pollen_server::write_keypair(&args.private, &args.public, args.force)?;
    println!(
        "private key: {} (server: auth.privateKey)",
        args.private.display()
    );
    println!(
        "public key:  {} (agents: server.publicKey)",
        args.public.display()
    );
    Ok(())
}

//! `speedrun policy`: show the maintainers' policy, review a plugin against
//! it, approve or revoke a native library (`plugins::admission` does the work).

use super::args::PolicyArg;
use super::report;
use crate::plugins::admission;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
    /// Policy file (default: sandbox-policy/default.toml).
    #[arg(long = "policy", id = "policy", global = true)]
    pub path: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print the policy: mode, wasm limits, approved hooks, native allow-list.
    Show,
    /// What the policy would refuse of a plugin, and why (exits non-zero if anything).
    Check {
        /// A library, a .wasm module or a plugin crate directory (built first).
        plugin: PathBuf,
        /// Build a crate directory to wasm.
        #[arg(long)]
        wasm: bool,
    },
    /// Add a native plugin to the allow-list, with its library's SHA-256.
    Approve {
        /// A native library or a plugin crate directory (built first).
        plugin: PathBuf,
        /// Hooks it may use, comma-separated (default: every hook it provides).
        #[arg(long, value_delimiter = ',')]
        hooks: Vec<String>,
        /// Who approves it.
        #[arg(long)]
        by: String,
    },
    /// Remove every allow-list entry of a plugin (by name, or by library / crate path).
    Revoke { plugin: String },
}

pub fn policy(a: PolicyArgs) -> Result<()> {
    let lp = PolicyArg { path: a.path }.load()?;
    let file = lp.path.display().to_string();
    match a.command {
        PolicyCommand::Show => print!("{}", report::policy(&lp)),
        PolicyCommand::Check { plugin, wasm } => {
            let r = admission::review(&lp, &plugin, wasm)?;
            print!("{}", report::review(&r, &file));
            if r.refused() > 0 {
                bail!(
                    "{} finding(s): an official run would refuse {}",
                    r.refused(),
                    r.name
                );
            }
            println!("  an official run admits it");
        }
        PolicyCommand::Approve { plugin, hooks, by } => {
            let a = admission::approve(&lp, &plugin, hooks, by)?;
            println!(
                "approved {} {} (sha256 {}) in {file}",
                a.name, a.version, a.sha256
            );
        }
        PolicyCommand::Revoke { plugin } => {
            let (name, removed) = admission::revoke(&lp, &plugin)?;
            println!("revoked {removed} approval(s) of {name} in {file}");
        }
    }
    Ok(())
}

//! `speedrun plugin`: write, build and inspect plugin crates.

use super::args::JsonArg;
use super::{print_json_or, report};
use crate::plugins::{build, open, template, wasm::WasmLimits};
use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Write a ready-to-build plugin crate from a working template.
    New {
        /// Hook family: optimizer, schedule or mlp.
        #[arg(long)]
        hook: String,
        /// Crate name (lowercase, digits, '-', '_').
        name: String,
        /// Parent folder (default: this workspace's plugins/).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a plugin crate (release, shared target directory) and print its library's path.
    Build {
        path: PathBuf,
        /// Build a WebAssembly module instead of a native library.
        #[arg(long)]
        wasm: bool,
    },
    /// Print a plugin's manifest: name, version, API version, hooks, configuration.
    Inspect {
        /// A native library, a .wasm module, or a plugin crate directory (built first).
        path: PathBuf,
        /// Build a crate directory to wasm.
        #[arg(long)]
        wasm: bool,
        #[command(flatten)]
        output: JsonArg,
    },
}

pub fn plugin(c: PluginCommand) -> Result<()> {
    match c {
        PluginCommand::New { hook, name, dir } => {
            let out = template::new_plugin(&hook, &name, dir.as_deref())?;
            println!("wrote plugin crate {}", out.display());
            println!(
                "run it:  speedrun run --track smoke --plugin {}",
                out.display()
            );
        }
        PluginCommand::Build { path, wasm } => {
            let lib = if wasm {
                build::build_wasm(&path)?
            } else {
                build::build_native(&path)?
            };
            println!("{}", lib.display());
        }
        PluginCommand::Inspect { path, wasm, output } => {
            let (module, lib) = open(&path, wasm, WasmLimits::default())?;
            let m = module.manifest()?;
            let transport = module.policy_transport();
            print_json_or(output, &m, |m| report::manifest(m, &lib, transport))?;
        }
    }
    Ok(())
}

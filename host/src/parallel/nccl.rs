//! Ranks as processes, one per GPU, meeting through NCCL: the speedrun's
//! torchrun shape. Rank 0 makes the NCCL id and writes it into the rendezvous
//! folder the launcher (`run --ranks N --device cuda`) gives every rank; the
//! others wait for it. Gradients are averaged by an NCCL all-reduce on the
//! device; the end-of-run verdicts travel through an all-gather.

use super::Collective;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::{CustomOp1, DType, Device, Layout, Shape, Tensor};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct NcclGroup {
    comm: Mutex<Comm>,
    dev: CudaDevice,
    rank: usize,
    world: usize,
}

// SAFETY: the communicator is used behind the mutex, from one thread at a time,
// on its own stream; NCCL allows a communicator to move between threads.
unsafe impl Send for NcclGroup {}
unsafe impl Sync for NcclGroup {}

const ID_FILE: &str = "nccl-id";

impl NcclGroup {
    /// Joins the group of `world` ranks as `rank` on `device`; rank 0 publishes
    /// the NCCL id in `rendezvous`, the others wait up to `timeout` for it.
    pub fn join(
        device: &Device,
        rank: usize,
        world: usize,
        rendezvous: &Path,
        timeout: Duration,
    ) -> Result<NcclGroup> {
        let Device::Cuda(dev) = device else {
            bail!("NCCL ranks need a CUDA device")
        };
        let path = rendezvous.join(ID_FILE);
        let id = if rank == 0 {
            let id = Id::new().map_err(|e| anyhow!("creating the NCCL id: {e:?}"))?;
            let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            let tmp = rendezvous.join(format!("{ID_FILE}.tmp"));
            std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path)?;
            id
        } else {
            let start = Instant::now();
            let bytes = loop {
                match std::fs::read(&path) {
                    Ok(b) if b.len() == 128 => break b,
                    _ if start.elapsed() > timeout => bail!(
                        "rank {rank}: rank 0 did not publish the NCCL id in {} within {timeout:?}",
                        path.display()
                    ),
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            let mut internal = [0 as std::ffi::c_char; 128];
            for (i, b) in internal.iter_mut().zip(bytes) {
                *i = b as std::ffi::c_char;
            }
            Id::uninit(internal)
        };
        let comm = Comm::from_rank(dev.cuda_stream(), rank, world, id)
            .map_err(|e| anyhow!("rank {rank} of {world}: joining the NCCL group: {e:?}"))?;
        Ok(NcclGroup {
            comm: Mutex::new(comm),
            dev: dev.clone(),
            rank,
            world,
        })
    }

    fn comm(&self) -> std::sync::MutexGuard<'_, Comm> {
        self.comm.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The all-reduce as a candle op: NCCL's average of a contiguous f32 tensor.
struct AllReduceMean<'a>(&'a NcclGroup);

impl CustomOp1 for AllReduceMean<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-mean"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce needs the tensor on the GPU")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("nccl all-reduce: the tensor is not contiguous")
        };
        let src = s.as_cuda_slice::<f32>()?.slice(a..b);
        // On the input's device (candle's handle of it), so the result mixes with
        // the run's other tensors; the communicator shares its stream.
        // SAFETY: the all-reduce writes every element.
        let mut dst = unsafe { s.device.alloc::<f32>(b - a) }?;
        self.0
            .comm()
            .all_reduce(&src, &mut dst, &ReduceOp::Avg)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
        Ok((
            CudaStorage::wrap_cuda_slice(dst, s.device.clone()),
            l.shape().clone(),
        ))
    }
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn exchange(&self, mine: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        let comm = self.comm();
        let stream = self.dev.cuda_stream();
        let nccl = |e| anyhow!("NCCL all-gather: {e:?}");
        // Lengths first, then every rank's bytes padded to the longest.
        let len = stream.clone_htod(&[mine.len() as u64]).w()?;
        let mut lens = stream.alloc_zeros::<u64>(self.world).w()?;
        comm.all_gather(&len, &mut lens).map_err(nccl)?;
        let lens = stream.clone_dtoh(&lens).w()?;
        let max = lens.iter().copied().max().unwrap_or(0).max(1) as usize;
        let mut padded = mine;
        padded.resize(max, 0);
        let send = stream.clone_htod(&padded).w()?;
        let mut all = stream.alloc_zeros::<u8>(max * self.world).w()?;
        comm.all_gather(&send, &mut all).map_err(nccl)?;
        let all = stream.clone_dtoh(&all).w()?;
        Ok(all
            .chunks(max)
            .zip(lens)
            .map(|(c, n)| c[..n as usize].to_vec())
            .collect())
    }

    fn abort(&self, why: &str) {
        // The other ranks are inside NCCL calls that cannot see a flag: the
        // launcher ends them when this process exits with an error.
        tracing::error!("rank {} of {} stopped: {why}", self.rank, self.world);
    }

    fn mean(&self, t: &Tensor) -> Result<Tensor> {
        let f = t.to_dtype(DType::F32)?.contiguous()?;
        Ok(f.apply_op1_no_bwd(&AllReduceMean(self))?
            .to_dtype(t.dtype())?)
    }
}

//! The CUDA side of the fused ops: `cuda/ops.cu` compiled by NVRTC for the GPU
//! present (its compute capability read from the driver; PTX cached per
//! architecture for the process, the loaded module per device by candle), and the
//! launch helpers each op's `cuda_fwd` uses. f32 only: other dtypes are refused
//! with the op's name.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig};
use candle_core::cuda_backend::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::{bail, DType, Layout, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The CUDA C source of every kernel.
pub const SOURCE: &str = include_str!("../cuda/ops.cu");

/// Threads per block of the row kernels (the source's BLOCK).
pub(crate) const BLOCK: u32 = 256;
/// Rows per partial sum of the two-stage column sums.
pub(crate) const COL_CHUNK: usize = 256;

static PTX: Mutex<Option<HashMap<String, Arc<str>>>> = Mutex::new(None);

/// Compiles the kernels to PTX for `arch` (e.g. `sm_90`) with NVRTC; needs no GPU.
pub fn compile(arch: &str) -> Result<String> {
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "-std=c++17".into()],
        name: Some("speedrun_ops.cu".into()),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(SOURCE, opts).map_err(|e| {
        candle_core::Error::Msg(format!("NVRTC compiling the kernels for {arch}: {e}"))
    })?;
    Ok(ptx.to_src())
}

/// The device's architecture name, `sm_XY`.
pub fn arch(dev: &CudaDevice) -> Result<String> {
    let ctx = dev.cuda_stream().context().clone();
    let major = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        .w()?;
    let minor = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        .w()?;
    Ok(format!("sm_{major}{minor}"))
}

/// The module name and PTX of `ops.cu` for this device's architecture, compiled
/// on first use (candle loads a module once per device under its name).
pub fn module(dev: &CudaDevice) -> Result<(String, Arc<str>)> {
    let arch = arch(dev)?;
    let mut cache = PTX.lock().unwrap_or_else(|p| p.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    let ptx = match cache.get(&arch) {
        Some(p) => p.clone(),
        None => {
            let p: Arc<str> = compile(&arch)?.into();
            cache.insert(arch.clone(), p.clone());
            p
        }
    };
    Ok((format!("speedrun_ops_{arch}"), ptx))
}

/// The contiguous f32 elements of an input.
pub(crate) fn input<'a>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, f32>> {
    if s.dtype() != DType::F32 {
        bail!("{op}: the CUDA kernels take f32, got {:?}", s.dtype())
    }
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{op}: the input is not contiguous")
    };
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

/// An uninitialised output of `n` elements (every kernel writes all of it).
pub(crate) fn output<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
    dev: &CudaDevice,
    n: usize,
) -> Result<CudaSlice<T>> {
    // SAFETY: the caller's kernel writes every element before anything reads it.
    unsafe { dev.alloc::<T>(n.max(1)) }
}

pub(crate) fn wrap(s: CudaSlice<f32>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(s, dev.clone())
}

/// A grid-stride launch over `n` elements.
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535 * 8) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row.
pub(crate) fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Columns across x, chunks of rows across y (the column sums' first stage).
pub(crate) fn column_chunks(cols: usize, chunks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (cols.div_ceil(BLOCK as usize) as u32, chunks as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launches `name` with the given arguments (each pushed by reference).
#[macro_export]
#[doc(hidden)]
macro_rules! launch {
    ($dev:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        use candle_core::cuda_backend::WrapErr;
        let (module, ptx) = $crate::cuda::module($dev)?;
        let f = $dev.get_or_load_custom_func($name, &module, &ptx)?;
        let mut b = f.builder();
        $( b.arg($arg); )+
        // SAFETY: the arguments match the kernel's signature in ops.cu, and every
        // buffer holds the elements the launch shape reaches.
        unsafe { b.launch($cfg) }.w()?;
    }};
}

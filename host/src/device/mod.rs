//! The compute device a run trains on: `--device cpu|cuda[:N]`, the driver check
//! made before cudarc is touched (it panics without a driver), the device's name
//! for the manifest, and the two things a GPU changes about measuring — the clock
//! (`clock`: spans from CUDA events) and memory (`memory`: the per-run budget).

pub mod clock;
pub mod memory;

use anyhow::{bail, Result};
use candle_core::Device;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// Where to train, as the user names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<DeviceChoice, String> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!(
                    "unknown device {s:?}: expected cpu, cuda or cuda:N (N the GPU's ordinal)"
                )),
            },
        }
    }
}

impl DeviceChoice {
    pub fn is_cpu(self) -> bool {
        self == DeviceChoice::Cpu
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Where a run trains and how much device memory it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::Args)]
pub struct DeviceSettings {
    /// Where to train: cpu, cuda or cuda:N (a GPU needs a build with the `cuda`
    /// feature: scripts/build-cuda.sh).
    #[arg(long = "device", default_value = "cpu")]
    pub choice: DeviceChoice,
    /// Fail the run, naming the hook or phase, when the device holds more than
    /// this (e.g. 40GiB); the whole device on a GPU, the process's resident set on the CPU.
    #[arg(long = "memory-budget", value_parser = memory::parse_budget)]
    pub memory_budget: Option<u64>,
}

/// The NVIDIA driver's library, as the loader names it.
pub const DRIVER_LIBRARY: &str = "libcuda.so.1";

/// Whether this binary was built with the `cuda` feature.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Whether the NVIDIA driver library can be loaded here. Checked before anything
/// of cudarc runs: with no driver, cudarc panics instead of returning an error.
pub fn driver_present() -> bool {
    // SAFETY: loading the driver library runs only its own initialisers; nothing
    // is called through it here.
    unsafe { libloading::Library::new(DRIVER_LIBRARY) }.is_ok()
}

/// Opens the device for a run, or says plainly why it cannot.
pub fn open(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => open_cuda(n, CUDA_BUILT, driver_present()),
    }
}

/// The decision behind `open` for a GPU, with what the machine has passed in.
fn open_cuda(ordinal: usize, built: bool, driver: bool) -> Result<Device> {
    match (built, driver) {
        (false, false) => bail!(
            "--device cuda:{ordinal}: this machine has no NVIDIA driver ({DRIVER_LIBRARY} not found), \
             and this speedrun was built without the `cuda` feature; train on the CPU (--device cpu), \
             or on a machine with an NVIDIA GPU build with scripts/build-cuda.sh"
        ),
        (false, true) => bail!(
            "--device cuda:{ordinal}: this speedrun was built without the `cuda` feature; \
             build one with scripts/build-cuda.sh (it writes target/cuda/release/speedrun)"
        ),
        (true, false) => bail!(
            "--device cuda:{ordinal}: no NVIDIA driver on this machine ({DRIVER_LIBRARY} not found); \
             train on the CPU (--device cpu)"
        ),
        (true, true) => cuda::open(ordinal),
    }
}

/// What the manifest records of the device.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceInfo {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// The GPU's name (none on the CPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// The GPU's memory in bytes (none on the CPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_memory_bytes: Option<u64>,
    /// The NVIDIA driver's version (none on the CPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_driver: Option<String>,
}

pub fn describe(device: &Device) -> DeviceInfo {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => cuda::describe(d),
        _ => DeviceInfo {
            device: "cpu".into(),
            gpu: None,
            gpu_memory_bytes: None,
            gpu_driver: None,
        },
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::DeviceInfo;
    use anyhow::{bail, Context, Result};
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    use candle_core::cuda_backend::CudaDevice;
    use candle_core::Device;

    pub fn open(ordinal: usize) -> Result<Device> {
        let count = CudaContext::device_count().context("asking the NVIDIA driver for its GPUs")?;
        if ordinal >= count.max(0) as usize {
            bail!(
                "--device cuda:{ordinal}: the NVIDIA driver sees {count} GPU(s) (ordinals from 0)"
            );
        }
        Device::new_cuda(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))
    }

    pub fn describe(d: &CudaDevice) -> DeviceInfo {
        let ctx = d.cuda_stream().context().clone();
        DeviceInfo {
            device: format!("cuda:{}", ctx.ordinal()),
            gpu: ctx.name().ok(),
            gpu_memory_bytes: ctx.total_mem().ok().map(|b| b as u64),
            // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  ...".
            gpu_driver: std::fs::read_to_string("/proc/driver/nvidia/version")
                .ok()
                .and_then(|v| {
                    let line = v.lines().next()?.to_string();
                    line.split("Module")
                        .nth(1)?
                        .split_whitespace()
                        .next()
                        .map(str::to_string)
                }),
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use anyhow::Result;
    use candle_core::Device;

    pub fn open(_ordinal: usize) -> Result<Device> {
        unreachable!("open_cuda refuses before this without the cuda feature")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        let e = "tpu".parse::<DeviceChoice>().unwrap_err();
        assert!(e.contains("\"tpu\"") && e.contains("cuda:N"), "{e}");
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn a_gpu_refusal_names_what_is_missing() {
        let msg = |built, driver| format!("{}", open_cuda(1, built, driver).unwrap_err());
        let neither = msg(false, false);
        assert!(neither.contains("no NVIDIA driver") && neither.contains("scripts/build-cuda.sh"));
        let no_feature = msg(false, true);
        assert!(
            no_feature.contains("without the `cuda` feature") && !no_feature.contains("no NVIDIA")
        );
        let no_driver = msg(true, false);
        assert!(no_driver.contains(DRIVER_LIBRARY) && !no_driver.contains("feature"));
        assert!(neither.contains("cuda:1"));
    }
}

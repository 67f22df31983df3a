//! Device memory: what the device holds now and at its peak during a run, and the
//! run's budget. Plugins allocate only through host ops, so every byte is the
//! host's to count. On a GPU the figure is the driver's used memory (total − free,
//! for the whole device: the CUDA context counts); on the CPU it is the process's
//! resident set — the same checks, testable without a GPU.

use anyhow::{anyhow, bail, Result};
use candle_core::Device;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct MemoryMeter {
    device: Device,
    budget: Option<u64>,
    peak: AtomicU64,
}

impl MemoryMeter {
    pub fn new(device: &Device, budget: Option<u64>) -> MemoryMeter {
        let m = MemoryMeter {
            device: device.clone(),
            budget,
            peak: AtomicU64::new(0),
        };
        m.sample();
        m
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn budget(&self) -> Option<u64> {
        self.budget
    }

    /// Bytes in use now; also raises the peak.
    pub fn sample(&self) -> u64 {
        let now = used_bytes(&self.device);
        self.peak.fetch_max(now, Ordering::Relaxed);
        now
    }

    /// The highest figure any sample saw.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Samples, and fails naming `site` (a hook, a phase) if the budget is passed.
    pub fn check(&self, site: impl std::fmt::Display) -> Result<()> {
        let now = self.sample();
        match self.budget {
            Some(b) if now > b => bail!(
                "device memory budget exceeded in {site}: {} in use, the run's budget is {}",
                human(now),
                human(b)
            ),
            _ => Ok(()),
        }
    }

    /// What a phase or hook returned, with an out-of-memory error named (`explain`)
    /// and, when it succeeded, the budget checked (`check`).
    pub fn guard<T>(&self, site: impl std::fmt::Display, r: Result<T>) -> Result<T> {
        match r {
            Ok(v) => self.check(site).map(|()| v),
            Err(e) => Err(self.explain(e, site)),
        }
    }

    /// Names `site` in an out-of-memory error from the device; other errors pass as they are.
    pub fn explain(&self, e: anyhow::Error, site: impl std::fmt::Display) -> anyhow::Error {
        if is_out_of_memory(&e) {
            anyhow!(
                "out of device memory in {site} ({} in use, peak {}): {e:#}",
                human(self.sample()),
                human(self.peak())
            )
        } else {
            e
        }
    }
}

/// Whether an error is the device running out of memory (CUDA's or the allocator's words).
pub fn is_out_of_memory(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("CUDA_ERROR_OUT_OF_MEMORY") || s.contains("out of memory")
}

pub fn human(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// Parses a budget such as `40GiB`, `512 MiB` or `1000000`.
pub fn parse_budget(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("bad memory budget {s:?} (e.g. 40GiB, 512MiB): {e}"))
}

fn used_bytes(device: &Device) -> u64 {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d
            .cuda_stream()
            .context()
            .mem_get_info()
            .map_or(0, |(free, total)| (total - free) as u64),
        _ => resident_bytes(),
    }
}

/// The process's resident set (Linux; 0 where /proc is not there).
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pages * page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_meter_sees_an_allocation_and_keeps_the_peak() {
        let m = MemoryMeter::new(&Device::Cpu, None);
        let before = m.sample();
        assert!(before > 0);
        let big = vec![1u8; 64 << 20];
        let during = m.sample();
        assert!(during >= before + (32 << 20), "{before} -> {during}");
        drop(big);
        assert!(m.peak() >= during);
    }

    #[test]
    fn a_budget_names_the_site_that_passed_it() {
        let m = MemoryMeter::new(&Device::Cpu, Some(1 << 20));
        let e = m.check("hook model.attention").unwrap_err().to_string();
        assert!(
            e.contains("hook model.attention") && e.contains("budget is 1.0 MiB"),
            "{e}"
        );
        assert!(MemoryMeter::new(&Device::Cpu, Some(u64::MAX))
            .check("x")
            .is_ok());
    }

    #[test]
    fn out_of_memory_errors_are_told_apart_and_named() {
        let m = MemoryMeter::new(&Device::Cpu, None);
        let oom = anyhow!("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")");
        let named = m.explain(oom, "the backward pass").to_string();
        assert!(
            named.starts_with("out of device memory in the backward pass"),
            "{named}"
        );
        let other = m.explain(anyhow!("shape mismatch"), "x").to_string();
        assert_eq!(other, "shape mismatch");
    }

    #[test]
    fn budgets_parse_with_units() {
        assert_eq!(parse_budget("512MiB"), Ok(512 << 20));
        assert_eq!(parse_budget("40 GiB"), Ok(40 << 30));
        assert!(parse_budget("lots").unwrap_err().contains("lots"));
    }
}

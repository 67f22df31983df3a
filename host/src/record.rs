//! What a run writes down: its manifest (what decided it), its summary (what
//! it measured, with the verdict), its status, and the records of its plugins,
//! policy and machine. The training loop fills these in, the run directory and
//! the store keep them; both depend on this module and it on neither.

use crate::data::loader::ShardRecord;
use crate::device::DeviceInfo;
use crate::verify::Verdict;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use speedrun_sandbox_policy::Transport;

/// A status enum stored as text: its names are serde's (snake_case), and
/// `Display`/`FromStr` spell them the same way, so the JSON and the SQL agree.
macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<$name, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.name() == s)
                    .ok_or_else(|| format!("{s:?} is not a {}", $what))
            }
        }
    };
}

status_enum! {
    /// Where a run is in its life; the store's `runs.status` column.
    RunStatus, "run status" {
        Running = "running",
        Complete = "complete",
        Failed = "failed",
        /// The process running it ended before the run finished (found at the store's next open).
        Incomplete = "incomplete",
    }
}

status_enum! {
    /// Where a submission is; the store's `submissions.status` column and the
    /// verdict's `status`.
    SubmissionStatus, "submission status" {
        /// Stored, its library not built yet.
        Building = "building",
        BuildFailed = "build_failed",
        Running = "running",
        /// Every run valid: it scores (a record if it beat the record).
        Valid = "valid",
        /// A check failed, or the policy refused it.
        Invalid = "invalid",
        /// It could not run (an error that is not the submission's fault or not a check).
        Error = "error",
        /// Written by earlier versions; read, never written now.
        Refused = "refused",
        Failed = "failed",
    }
}

/// What the run manifest records of each plugin.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PluginRecord {
    pub name: String,
    pub version: String,
    /// The plugin API it was built for, major and minor (a 1.0 plugin says 1, 0).
    pub api_version: u32,
    pub api_minor: u32,
    pub hooks: Vec<String>,
    pub transport: Transport,
    pub path: String,
    /// SHA-256 of the library file.
    pub sha256: String,
    /// Size of the library file in bytes (what it could bring in as data).
    pub bytes: u64,
    pub config: serde_json::Value,
    /// The keys set for this run (`--plugin-config`) over the plugin's defaults
    /// and the track's values: with the library's hash they fix the
    /// configuration, so the stack key names them.
    #[serde(default)]
    pub overrides: serde_json::Map<String, serde_json::Value>,
}

/// What the run manifest records of the policy a run ran under.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyRecord {
    pub path: String,
    pub sha256: String,
    pub mode: String,
    /// Why the run is unofficial (unapproved plugins in dev mode); empty if official.
    pub warnings: Vec<String>,
}

/// The machine a run ran on.
#[derive(Debug, Clone, Serialize)]
pub struct Hardware {
    /// The machine's name (a cluster node's).
    pub host: String,
    pub cpu_model: String,
    /// The CPU's vector-unit flags the kernels choose by (`avx2`, `avx512f`,
    /// `amx_bf16`, ...), as /proc/cpuinfo names them.
    pub cpu_flags: Vec<String>,
    /// The CPU matmul microkernels this run used (`speedrun_kernels::matmul_kernel`).
    pub cpu_matmul_kernel: String,
    pub cores: usize,
    pub memory_bytes: u64,
    /// Threads candle's CPU kernels use (RAYON_NUM_THREADS, else all cores).
    pub threads: usize,
    pub os: String,
    pub arch: String,
}

impl Hardware {
    pub fn detect() -> Hardware {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0);
        let flags: Vec<&str> = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.split_whitespace().collect())
            .unwrap_or_default();
        Hardware {
            host: crate::store::host_name(),
            cpu_flags: VECTOR_FLAGS
                .iter()
                .filter(|f| flags.contains(f))
                .map(|f| f.to_string())
                .collect(),
            cpu_model,
            cpu_matmul_kernel: speedrun_kernels::matmul_kernel().into(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_bytes,
            threads: candle_core::utils::get_num_threads(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
        }
    }

    /// What two runs must share for their times to be compared: the CPU
    /// model and its vector flags, the core count, and the GPU with its
    /// driver. Not the host name: two nodes of one kind are the same hardware.
    pub fn fingerprint(&self, device: &crate::device::DeviceInfo) -> String {
        let mut f = format!(
            "{} [{}] x{}",
            self.cpu_model,
            self.cpu_flags.join(" "),
            self.cores
        );
        if let Some(gpu) = &device.gpu {
            f += &format!(
                " | {gpu} (driver {})",
                device.gpu_driver.as_deref().unwrap_or("unknown")
            );
        }
        f
    }
}

/// The /proc/cpuinfo flags that change which matmul and elementwise kernels run.
const VECTOR_FLAGS: &[&str] = &[
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_bf16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
];

#[derive(Debug, Clone, Serialize)]
pub struct RunManifest {
    pub host_version: String,
    pub git_revision: String,
    pub track: String,
    pub track_path: String,
    pub track_sha256: String,
    /// `--set` changes to the track file (its hash is the changed text's).
    pub track_overrides: Vec<String>,
    pub data_dir: String,
    pub shards: Vec<ShardRecord>,
    pub seed: u64,
    pub steps: usize,
    /// The track's whole budget in steps: a run of fewer (`--steps`) never scores.
    pub track_steps: usize,
    /// The version of the checks that verify this run (`verify::CHECKS_VERSION`).
    pub checks_version: u32,
    pub batch_tokens: usize,
    pub parameters: usize,
    pub optimizer: String,
    /// Every plugin in the stack: name, version, hooks, library hash, configuration.
    pub plugins: Vec<PluginRecord>,
    /// What the run's stack was called (`--label`), part of its stack key.
    pub stack_label: Option<String>,
    /// The sandbox policy's file, hash and mode, and why the run is unofficial if it is.
    pub policy: Option<PolicyRecord>,
    /// Admitted under a policy with every plugin approved.
    pub official: bool,
    pub hardware: Hardware,
    /// The device trained on (the GPU's name and memory on a GPU).
    pub device: DeviceInfo,
    pub started_at: String,
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunSummary {
    pub status: RunStatus,
    pub error: Option<String>,
    pub track: String,
    pub seed: u64,
    pub steps: usize,
    pub tokens: u64,
    pub train_time_s: f64,
    pub tokens_per_s: f64,
    pub flops: f64,
    pub final_val_loss: Option<f64>,
    pub final_val_bpb: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub best_val_bpb: Option<f64>,
    pub target_val_loss: Option<f64>,
    pub target_reached: bool,
    pub time_to_target_s: Option<f64>,
    pub tokens_to_target: Option<u64>,
    pub flops_to_target: Option<f64>,
    pub step_of_target: Option<usize>,
    /// Untimed warm-up steps run before the timed run (on a throwaway stack).
    pub warmup_steps: usize,
    /// The most memory the device held during the run (see `device::memory`).
    pub peak_memory_bytes: u64,
    /// The run's device-memory budget, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_budget_bytes: Option<u64>,
    /// Why the run is not official (unapproved plugins under a dev-mode policy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unofficial_reasons: Vec<String>,
    /// Every check the host made and whether the run is valid.
    pub verdict: Verdict,
    /// The run's id in the run store, when it was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_id: Option<i64>,
    /// Every training loss, in order (the curve determinism is checked on).
    #[serde(skip)]
    pub train_losses: Vec<f32>,
    #[serde(skip)]
    pub run_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_are_serdes_and_parse_back() {
        fn check<T>(all: &[T])
        where
            T: Copy
                + Serialize
                + std::str::FromStr<Err = String>
                + std::fmt::Display
                + PartialEq
                + std::fmt::Debug,
        {
            for &v in all {
                let json = serde_json::to_value(v).unwrap();
                assert_eq!(json.as_str(), Some(v.to_string().as_str()));
                assert_eq!(v.to_string().parse::<T>().unwrap(), v);
            }
        }
        check(RunStatus::ALL);
        check(SubmissionStatus::ALL);
        let e = "nope".parse::<SubmissionStatus>().unwrap_err();
        assert!(e.contains("not a submission status"), "{e}");
    }
}

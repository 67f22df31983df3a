//! A run's directory: `manifest.json` (what ran, on what), `metrics.jsonl` (one
//! line per step and per validation, flushed as written so a crash keeps them),
//! and `summary.json` (the outcome).

use anyhow::{Context, Result};
use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The git revision of the source tree this binary was built from, if it can be read.
pub fn git_revision() -> String {
    let root = crate::track::project_root();
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(rev) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev}-dirty")
            } else {
                rev
            }
        }
        None => "unknown".into(),
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MetricLine {
    Step {
        step: usize,
        tokens: u64,
        train_loss: f64,
        lr: f64,
        grad_norm: f64,
        step_ms: f64,
        tokens_per_s: f64,
        train_time_s: f64,
        /// What the device holds after the step, and the run's peak so far (`device::memory`).
        memory_bytes: u64,
        peak_memory_bytes: u64,
        /// Time, ops and handles inside each plugin hook during the step.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        hooks: Vec<crate::plugins::session::HookLine>,
    },
    Val {
        step: usize,
        tokens: u64,
        train_time_s: f64,
        val_loss: f64,
        val_bpb: f64,
        eval_s: f64,
    },
}

pub struct RunDir {
    pub path: PathBuf,
    metrics: BufWriter<File>,
}

impl RunDir {
    /// Creates the directory (refusing one that already holds a run).
    pub fn create(path: &Path) -> Result<RunDir> {
        if path.join("metrics.jsonl").exists() {
            anyhow::bail!(
                "run directory {} already holds a run; choose another --out",
                path.display()
            );
        }
        std::fs::create_dir_all(path)
            .with_context(|| format!("creating run directory {}", path.display()))?;
        let metrics = File::create(path.join("metrics.jsonl"))
            .with_context(|| format!("creating {}/metrics.jsonl", path.display()))?;
        Ok(RunDir {
            path: path.to_path_buf(),
            metrics: BufWriter::new(metrics),
        })
    }

    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        write_json_atomic(&self.path, name, value)
    }

    /// As `write_json`, readable by the file's owner only: the host's secrets
    /// of the run (its permutation seeds), for replaying it.
    pub fn write_private_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        self.write_json(name, value)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let p = self.path.join(name);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {}", p.display()))?;
        }
        Ok(())
    }

    pub fn metric(&mut self, line: &MetricLine) -> Result<()> {
        serde_json::to_writer(&mut self.metrics, line)?;
        self.metrics.write_all(b"\n")?;
        self.metrics.flush()?;
        Ok(())
    }
}

/// One training step of `metrics.jsonl`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepLine {
    pub step: f64,
    pub tokens: f64,
    pub train_time_s: f64,
    pub train_loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// One validation of `metrics.jsonl`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValLine {
    pub step: f64,
    pub tokens: f64,
    pub train_time_s: f64,
    pub val_loss: f64,
}

/// A run's curves, read back from its directory's `metrics.jsonl` (empty
/// when the directory is gone: the store still has its evaluations), for the
/// plots and the dashboard.
#[derive(Debug, Clone, Default)]
pub struct Curves {
    pub steps: Vec<StepLine>,
    pub vals: Vec<ValLine>,
}

impl Curves {
    pub fn read(run_dir: &Path) -> Curves {
        let mut c = Curves::default();
        let Ok(text) = std::fs::read_to_string(run_dir.join("metrics.jsonl")) else {
            return c;
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            match v["kind"].as_str() {
                Some("step") => c.steps.push(StepLine {
                    step: f("step"),
                    tokens: f("tokens"),
                    train_time_s: f("train_time_s"),
                    train_loss: f("train_loss"),
                    lr: f("lr"),
                    grad_norm: f("grad_norm"),
                }),
                Some("val") => c.vals.push(ValLine {
                    step: f("step"),
                    tokens: f("tokens"),
                    train_time_s: f("train_time_s"),
                    val_loss: f("val_loss"),
                }),
                _ => {}
            }
        }
        c
    }
}

/// Writes `dir/name` as pretty JSON, write-then-rename: a reader never sees
/// half a summary (also for rewriting a finished run's, `train::amend_verdict`).
pub fn write_json_atomic<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    let p = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))
}

/// A fresh run-directory name under `runs/`: track, seed and a timestamp.
pub fn default_run_dir(track: &str, seed: u64) -> PathBuf {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    PathBuf::from("runs").join(format!("{track}-s{seed}-{stamp}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_loss_reads_back_bit_for_bit() {
        // An f32 loss widened to f64: its shortest decimal form is one the
        // default (not correctly rounded) parser reads one ulp off.
        let loss = f64::from_bits(0x4009_5529_f000_0000);
        let dir = tempfile::tempdir().unwrap();
        let mut run = RunDir::create(dir.path()).unwrap();
        for v in [loss, 0.1 + 0.2, 1.0 / 3.0, 5e-324, f64::MAX] {
            run.metric(&MetricLine::Val {
                step: 1,
                tokens: 2,
                train_time_s: 0.5,
                val_loss: v,
                val_bpb: v,
                eval_s: 0.1,
            })
            .unwrap();
        }
        let c = Curves::read(dir.path());
        let read: Vec<u64> = c.vals.iter().map(|l| l.val_loss.to_bits()).collect();
        let want: Vec<u64> = [loss, 0.1 + 0.2, 1.0 / 3.0, 5e-324, f64::MAX]
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(read, want);
    }
}

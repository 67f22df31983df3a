//! Slurm through its commands: `sbatch` submits a job array, `squeue` says
//! which tasks are still queued or running, `scontrol` (or `sacct`, where the
//! cluster keeps accounting) says how a finished task ended, `scancel` stops
//! one. Nothing here schedules: Slurm does.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `--executor slurm`'s settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlurmOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// More `sbatch` options, passed as they are (`--time=2:00:00`,
    /// `--cpus-per-task=2`); they come after ours, so they win.
    pub args: Vec<String>,
    /// GPUs each task asks for (`--gres=gpu:N`): the track's, on a CUDA device.
    pub gpus: Option<usize>,
}

/// A submitted job array.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayJob {
    pub job_id: String,
    /// `LOG_DIR/JOBID_INDEX.log` is each task's stdout and stderr.
    pub log_dir: PathBuf,
}

impl ArrayJob {
    pub fn log(&self, index: usize) -> PathBuf {
        self.log_dir.join(format!("{}_{index}.log", self.job_id))
    }
}

/// How a task that left the queue ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEnd {
    /// COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY;
    /// UNKNOWN if Slurm no longer says.
    pub state: String,
    /// Slurm's `CODE:SIGNAL`.
    pub exit_code: String,
}

/// A job array to submit: `script` run once per index.
pub struct ArraySpec<'a> {
    pub script: &'a Path,
    pub indices: &'a [usize],
    pub job_name: &'a str,
    /// Where each task's `JOBID_INDEX.log` goes.
    pub log_dir: &'a Path,
    /// The directory every task runs in (`--chdir`).
    pub workdir: &'a Path,
}

/// The array's `sbatch` command line.
pub fn sbatch_command(a: &ArraySpec, o: &SlurmOptions) -> Vec<String> {
    let array: Vec<String> = a.indices.iter().map(|i| i.to_string()).collect();
    let mut c = vec![
        "sbatch".to_string(),
        "--parsable".into(),
        format!("--array={}", array.join(",")),
        format!("--job-name={}", a.job_name),
        format!("--output={}/%A_%a.log", a.log_dir.display()),
        format!("--chdir={}", a.workdir.display()),
    ];
    if let Some(p) = &o.partition {
        c.push(format!("--partition={p}"));
    }
    if let Some(n) = o.gpus {
        c.push(format!("--gres=gpu:{n}"));
    }
    c.extend(o.args.iter().cloned());
    c.push(a.script.display().to_string());
    c
}

/// Submits the array; answers the job.
pub fn submit(a: &ArraySpec, o: &SlurmOptions) -> Result<ArrayJob> {
    std::fs::create_dir_all(a.log_dir)
        .with_context(|| format!("creating the Slurm log folder {}", a.log_dir.display()))?;
    let cmd = sbatch_command(a, o);
    let out = run(&cmd)?;
    // --parsable: "JOBID" or "JOBID;CLUSTER".
    let job_id = out.trim().split(';').next().unwrap_or_default().to_string();
    if job_id.is_empty() || !job_id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch answered {out:?}, not a job id ({})", cmd.join(" "));
    }
    Ok(ArrayJob {
        job_id,
        log_dir: a.log_dir.to_path_buf(),
    })
}

/// The array's tasks still in the queue, by index, with their states.
pub fn queued(job: &ArrayJob) -> Result<BTreeMap<usize, String>> {
    let out = run(&[
        "squeue".into(),
        "--noheader".into(),
        "--array".into(),
        format!("--jobs={}", job.job_id),
        "--format=%K %T".into(),
    ]);
    let out = match out {
        Ok(o) => o,
        // A job Slurm has already forgotten is no longer queued.
        Err(e) if format!("{e:#}").contains("Invalid job id") => String::new(),
        Err(e) => return Err(e),
    };
    Ok(parse_queue(&out))
}

fn parse_queue(out: &str) -> BTreeMap<usize, String> {
    out.lines()
        .filter_map(|l| {
            let (k, state) = l.trim().split_once(' ')?;
            Some((k.parse().ok()?, state.trim().to_string()))
        })
        .collect()
}

/// How task `index` ended, once it has left the queue: `scontrol`, which keeps
/// a finished job for the cluster's MinJobAge, else `sacct` (accounting).
pub fn ended(job: &ArrayJob, index: usize) -> TaskEnd {
    let id = format!("{}_{index}", job.job_id);
    if let Ok(out) = run(&[
        "scontrol".into(),
        "--oneliner".into(),
        "show".into(),
        "job".into(),
        id.clone(),
    ]) {
        if let Some(state) = field(&out, "JobState") {
            return TaskEnd {
                state,
                exit_code: field(&out, "ExitCode").unwrap_or_default(),
            };
        }
    }
    if let Ok(out) = run(&[
        "sacct".into(),
        "--noheader".into(),
        "--parsable2".into(),
        "--allocations".into(),
        format!("--jobs={id}"),
        "--format=State,ExitCode".into(),
    ]) {
        if let Some((state, code)) = out.lines().next().and_then(|l| l.split_once('|')) {
            return TaskEnd {
                state: state.split_whitespace().next().unwrap_or(state).to_string(),
                exit_code: code.to_string(),
            };
        }
    }
    TaskEnd {
        state: "UNKNOWN".into(),
        exit_code: String::new(),
    }
}

/// `KEY=VALUE` out of scontrol's one-line record.
fn field(record: &str, key: &str) -> Option<String> {
    record
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

/// Cancels the whole array (`--max-wall` ran out, or the command was stopped).
pub fn cancel(job: &ArrayJob) -> Result<()> {
    run(&["scancel".into(), job.job_id.clone()]).map(|_| ())
}

/// Runs a Slurm command; its stdout, or an error with its stderr.
fn run(cmd: &[String]) -> Result<String> {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .output()
        .with_context(|| {
            format!(
                "running {} (is this a Slurm login node? --executor slurm needs Slurm's commands on PATH)",
                cmd[0]
            )
        })?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_array_is_asked_for_with_our_options_first_and_the_users_after() {
        let o = SlurmOptions {
            partition: Some("gpu".into()),
            args: vec!["--time=1:00:00".into(), "--job-name=mine".into()],
            gpus: Some(8),
        };
        let c = sbatch_command(
            &ArraySpec {
                script: Path::new("/s/task.sh"),
                indices: &[0, 2, 3],
                job_name: "speedrun-bench",
                log_dir: Path::new("/s/logs"),
                workdir: Path::new("/proj"),
            },
            &o,
        );
        assert_eq!(
            c,
            [
                "sbatch",
                "--parsable",
                "--array=0,2,3",
                "--job-name=speedrun-bench",
                "--output=/s/logs/%A_%a.log",
                "--chdir=/proj",
                "--partition=gpu",
                "--gres=gpu:8",
                "--time=1:00:00",
                "--job-name=mine",
                "/s/task.sh"
            ]
        );
    }

    #[test]
    fn queue_lines_and_scontrol_records_are_read_by_field() {
        let q = parse_queue("0 RUNNING\n3 PENDING\nN/A PENDING\n\n");
        assert_eq!(q.len(), 2);
        assert_eq!(q[&0], "RUNNING");
        assert_eq!(q[&3], "PENDING");
        let rec = "JobId=7 ArrayJobId=5 ArrayTaskId=1 JobName=x JobState=CANCELLED Reason=None ExitCode=0:15 RunTime=00:00:03";
        assert_eq!(field(rec, "JobState").as_deref(), Some("CANCELLED"));
        assert_eq!(field(rec, "ExitCode").as_deref(), Some("0:15"));
        assert_eq!(field(rec, "JobId").as_deref(), Some("7"));
        assert_eq!(field(rec, "Nope"), None);
    }
}

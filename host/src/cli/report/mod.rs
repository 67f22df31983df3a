//! How the command line shows what a command answered, as text (each
//! command prints JSON instead under `--json`): every renderer of a domain
//! report is here or in a file beside this one, and the domain modules answer
//! data. (`views` still renders the store's tables it queries.)

mod bench;
mod ladder;
mod submit;

pub use bench::bench;
pub use ladder::ladder;
pub use submit::{records, reverification, verdict};

use crate::bench::{PluginOverheadReport, ThroughputReport};
use crate::plugins::admission::Review;
use crate::record::{RunSummary, Transport};
use speedrun_sandbox_policy::LoadedPolicy;
use std::fmt::Write;
use std::path::Path;

/// The short report `speedrun run` ends with (its verdict line is added by the caller).
pub fn run_summary(s: &RunSummary) -> String {
    let fmt = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
    let mut o = String::new();
    let _ = writeln!(
        o,
        "run {} (track {}, seed {})",
        s.run_dir.display(),
        s.track,
        s.seed
    );
    let _ = writeln!(
        o,
        "  validation loss  {} nats/token, {} bits/byte (best {})",
        fmt(s.final_val_loss),
        fmt(s.final_val_bpb),
        fmt(s.best_val_loss)
    );
    let _ = writeln!(
        o,
        "  training time    {:.1} s over {} steps, {} tokens, {:.0} tokens/s",
        s.train_time_s, s.steps, s.tokens, s.tokens_per_s
    );
    let _ = writeln!(
        o,
        "  device memory    peak {}{}",
        crate::device::memory::human(s.peak_memory_bytes),
        s.memory_budget_bytes
            .map(|b| format!(" (budget {})", crate::device::memory::human(b)))
            .unwrap_or_default()
    );
    let _ = match (s.target_val_loss, s.time_to_target_s) {
        (None, _) => writeln!(o, "  target           none set for this track"),
        (Some(t), Some(tt)) => writeln!(
            o,
            "  target {t:.4}    reached after {tt:.1} s of training (step {})",
            s.step_of_target.unwrap_or(0)
        ),
        (Some(t), None) => writeln!(o, "  target {t:.4}    not reached"),
    };
    if !s.unofficial_reasons.is_empty() {
        let _ = writeln!(o, "  UNOFFICIAL run: {}", s.unofficial_reasons.join("; "));
    }
    o
}

pub fn throughput(r: &ThroughputReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "track {} ({} parameters, {} tokens/step, {} threads)",
        r.track, r.parameters, r.batch_tokens, r.threads
    );
    let _ = writeln!(
        o,
        "step (median of {}): {:.1} ms = forward {:.1} + backward {:.1} + optimizer {:.1}",
        r.steps_timed,
        r.step_ms_median,
        r.forward_ms_median,
        r.backward_ms_median,
        r.optimizer_ms_median
    );
    let _ = writeln!(o, "tokens/s: {:.0}", r.tokens_per_s);
    let _ = writeln!(
        o,
        "achieved: {:.1} GFLOP/s; {} matmul peak ({}, median of {} between the steps): {:.1} GFLOP/s; fraction {:.1}%",
        r.gflops,
        r.precision.name(),
        r.matmul_kernel,
        r.matmul_peak_samples,
        r.matmul_peak_gflops,
        100.0 * r.fraction_of_peak
    );
    for s in &r.shapes {
        let _ = writeln!(
            o,
            "  {:<14} [{}, {}] @ [{}, {}]: {:.1} GFLOP/s; backward: g wᵀ {:.1}, xᵀ g {:.1}",
            s.name, s.m, s.k, s.k, s.n, s.gflops, s.input_grad_gflops, s.weight_grad_gflops
        );
    }
    let a = &r.attention;
    let _ = writeln!(
        o,
        "  {:<14} [{}, {}, {}], {} heads of {}: forward {:.2} ms ({:.1} GFLOP/s), backward {:.2} ms ({:.1} GFLOP/s, the scores recomputed)",
        "attention",
        a.batch,
        a.seq_len,
        3 * a.heads * a.head_dim,
        a.heads,
        a.head_dim,
        a.forward_ms,
        a.forward_gflops,
        a.backward_ms,
        a.backward_gflops
    );
    o
}

pub fn plugin_overhead(r: &PluginOverheadReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "track {}: {} pairs of steps, alternating order ({} against the built-in stack)",
        r.track,
        r.pairs,
        r.plugins.join(" + ")
    );
    let _ = writeln!(
        o,
        "step:              built-in {:.1} ms, plugins {:.1} ms; ratio of medians {:.4}, median pair ratio {:.4}",
        r.builtin_step_ms,
        r.plugin_step_ms,
        r.plugin_step_ms / r.builtin_step_ms,
        r.step_ratio
    );
    let _ = writeln!(
        o,
        "optimizer:         built-in {:.2} ms, plugins {:.2} ms; median pair ratio {:.3}",
        r.builtin_optimizer_ms, r.plugin_optimizer_ms, r.optimizer_ratio
    );
    let _ = writeln!(
        o,
        "forward+backward:  built-in {:.1} ms, plugins {:.1} ms (untouched code unless they replace model hooks: then the gap is noise)",
        r.builtin_fwd_bwd_ms, r.plugin_fwd_bwd_ms
    );
    let _ = writeln!(
        o,
        "step ratio with the untouched part's noise removed: {:.4}",
        r.isolated_step_ratio
    );
    let _ = writeln!(
        o,
        "forward hooks:     on the host's tape {:.1} ms a step, on candle's graph {:.1} ms; median ratio {:.4}",
        r.plugin_step_ms, r.graph_step_ms, r.tape_ratio
    );
    o
}

pub fn kernel_checks(
    checks: &[speedrun_kernels::check::KernelCheck],
    device: crate::device::DeviceChoice,
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "kernels on {device} against the CPU (relative error: max |a-b| / max |b|)"
    );
    let _ = writeln!(
        o,
        "{:<24} {:<16} {:>10} {:>10} {:>8}  ok",
        "op", "shape", "forward", "backward", "tol"
    );
    for c in checks {
        let bwd = c.backward.map_or("-".into(), |b| format!("{b:.2e}"));
        let _ = writeln!(
            o,
            "{:<24} {:<16} {:>10.2e} {:>10} {:>8.0e}  {}",
            c.op,
            c.shape,
            c.forward,
            bwd,
            c.tolerance,
            if c.ok { "yes" } else { "NO" }
        );
    }
    o
}

pub fn policy(lp: &LoadedPolicy) -> String {
    let p = &lp.policy;
    let mut o = String::new();
    let _ = writeln!(o, "policy {} (sha256 {})", lp.path.display(), lp.sha256);
    let _ = writeln!(o, "  mode   {:?}", p.mode);
    let w = p.wasm;
    let _ = writeln!(
        o,
        "  wasm   fuel/call {}, memory {} pages ({} MiB), live handles {}, tensor bytes {}",
        w.fuel_per_call,
        w.memory_pages,
        w.memory_pages * 64 / 1024,
        w.max_live_handles,
        w.max_tensor_bytes
    );
    for (hook, rule) in &p.hooks {
        let t: Vec<&str> = rule.transports.iter().map(|t| t.name()).collect();
        let _ = writeln!(
            o,
            "  hook   {hook:<16} {:<12} ops {}",
            t.join(","),
            rule.ops.join(",")
        );
    }
    for n in &p.native {
        let _ = writeln!(
            o,
            "  native {} {} sha256 {} hooks {} (approved by {} at {})",
            n.name,
            n.version,
            n.sha256,
            n.hooks.join(","),
            n.approved_by,
            n.approved_at
        );
    }
    o
}

pub fn review(r: &Review, file: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} {} ({}, {}) against {file}:",
        r.name,
        r.version,
        r.transport,
        r.library.display()
    );
    for f in &r.findings {
        let tag = if f.admitted { "ok      " } else { "REFUSED " };
        let _ = writeln!(o, "  {tag} {}", f.detail);
    }
    o
}

pub fn manifest(m: &speedrun_plugin_abi::Manifest, lib: &Path, transport: Transport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{} {} (plugin API {})", m.name, m.version, m.api());
    if !m.description.is_empty() {
        let _ = writeln!(o, "  {}", m.description);
    }
    let _ = writeln!(o, "  library  {} ({transport})", lib.display());
    let _ = writeln!(o, "  hooks    {}", m.hooks.join(", "));
    let _ = writeln!(o, "  config   {}", m.config);
    o
}

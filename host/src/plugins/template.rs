//! `speedrun plugin new`: a ready-to-build plugin crate, one working example per
//! hook family, written with the elementary ops so it shows the API.

use super::build::workspace_root;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The hook families `plugin new --hook` has a template for.
pub const FAMILIES: [&str; 3] = ["optimizer", "schedule", "mlp"];

const OPTIMIZER: &str = r#"//! {name}: SGD with momentum, decoupled weight decay and a gradient-norm clip,
//! written with the plugin API's elementary ops. A starting point: change
//! `step` and run `speedrun run --track smoke --plugin {dir}`.

use speedrun_plugin_api::*;

pub struct Sgd {
    momentum: f64,
    weight_decay: f64,
    grad_clip: f64,
    lr_scale: f64,
    /// One momentum buffer per parameter, in the order `init` saw them.
    buffers: Vec<(Tensor, bool)>,
}

fn number(config: &serde_json::Value, key: &str) -> Result<f64> {
    match config[key].as_f64() {
        Some(v) => Ok(v),
        None => bail!("{name}: configuration key {key} must be a number"),
    }
}

impl Plugin for Sgd {
    /// Keys named like the track's [optimizer] table (weight_decay, grad_clip)
    /// take the track's values; `--plugin-config {name}='{...}'` overrides any.
    /// SGD wants a far larger step than AdamW's peak: `lr_scale` 25 reached a
    /// validation loss of 3.23 on smoke (AdamW: 3.05).
    fn default_config() -> serde_json::Value {
        serde_json::json!({ "momentum": 0.9, "weight_decay": 0.0, "grad_clip": 1.0, "lr_scale": 25.0 })
    }

    fn new(config: &serde_json::Value) -> Result<Self> {
        Ok(Sgd {
            momentum: number(config, "momentum")?,
            weight_decay: number(config, "weight_decay")?,
            grad_clip: number(config, "grad_clip")?,
            lr_scale: number(config, "lr_scale")?,
            buffers: Vec::new(),
        })
    }
}

impl Optimizer for Sgd {
    fn init(&mut self, params: &[ParamRef]) -> Result<()> {
        // State must be kept, or the host releases it when init returns.
        self.buffers = params
            .iter()
            .map(|p| Ok((Tensor::zeros(&p.dims, DType::F32)?.keep()?, p.dims.len() == 2)))
            .collect::<Result<_>>()?;
        Ok(())
    }

    fn step(&mut self, s: &OptimizerStep) -> Result<()> {
        let lr = s.lr * self.lr_scale;
        let clip = (self.grad_clip / (s.grad_norm + 1e-6)).min(1.0);
        let momentum = self.momentum * s.momentum_mult;
        for (pg, &(buf, decays)) in s.params.iter().zip(&self.buffers) {
            // buf = momentum * buf + clip * g
            let next = buf.scale(momentum)?.add(&pg.grad.scale(clip)?)?;
            buf.assign(&next)?;
            // p = p * (1 - lr * wd) - lr * buf
            let wd = if decays { self.weight_decay } else { 0.0 };
            let p = pg.param.scale(1.0 - lr * wd)?.sub(&next.scale(lr)?)?;
            pg.param.assign(&p)?;
        }
        Ok(())
    }
}

export_plugin!(Sgd, hooks: [optimizer]);
"#;

const SCHEDULE: &str = r#"//! {name}: linear warm-up, then a linear decay to zero (a trapezoid without the
//! plateau). Schedules call no tensor op: they answer multipliers.

use speedrun_plugin_api::*;

pub struct Linear {
    warmup_steps: usize,
    lr_scale: f64,
}

impl Plugin for Linear {
    /// `warmup_steps` takes the track's value; `lr_scale` multiplies the track's peak.
    fn default_config() -> serde_json::Value {
        serde_json::json!({ "warmup_steps": 0, "lr_scale": 1.0 })
    }

    fn new(config: &serde_json::Value) -> Result<Self> {
        let Some(w) = config["warmup_steps"].as_u64() else {
            bail!("{name}: warmup_steps must be a non-negative integer");
        };
        let Some(lr_scale) = config["lr_scale"].as_f64() else {
            bail!("{name}: lr_scale must be a number");
        };
        Ok(Linear { warmup_steps: w as usize, lr_scale })
    }
}

impl Schedule for Linear {
    fn at(&mut self, step: usize, total_steps: usize) -> Result<ScheduleOut> {
        let lr_mult = if step < self.warmup_steps {
            (step + 1) as f64 / self.warmup_steps as f64
        } else {
            let left = total_steps.saturating_sub(step) as f64;
            left / total_steps.saturating_sub(self.warmup_steps).max(1) as f64
        };
        Ok(ScheduleOut::new(self.lr_scale * lr_mult, 1.0))
    }
}

export_plugin!(Linear, hooks: [schedule]);
"#;

const MLP: &str = r#"//! {name}: the reference GPT's MLP (Conv1D weights, GELU, width 4x) written
//! with the plugin API's ops: change the activation or the wiring here.

use speedrun_plugin_api::*;

pub struct MyMlp;

impl Plugin for MyMlp {
    fn new(_config: &serde_json::Value) -> Result<Self> {
        Ok(MyMlp)
    }
}

impl Mlp for MyMlp {
    fn mlp(&mut self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor> {
        let w_fc = cx.layer_param(layer, "mlp.c_fc.weight")?;
        let b_fc = cx.layer_param(layer, "mlp.c_fc.bias")?;
        let w_proj = cx.layer_param(layer, "mlp.c_proj.weight")?;
        let b_proj = cx.layer_param(layer, "mlp.c_proj.bias")?;
        let h = linear(x, &w_fc, Some(&b_fc))?.gelu()?;
        linear(&h, &w_proj, Some(&b_proj))
    }
}

export_plugin!(MyMlp, hooks: [mlp]);
"#;

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Writes a new plugin crate `name` for hook family `family` into `dir/name`
/// (default: `plugins/name` of this workspace). Answers the crate's directory.
pub fn new_plugin(family: &str, name: &str, dir: Option<&Path>) -> Result<PathBuf> {
    if !valid_name(name) {
        bail!("plugin name {name:?}: use lowercase letters, digits, '-' and '_', starting with a letter");
    }
    let source = match family {
        "optimizer" => OPTIMIZER,
        "schedule" => SCHEDULE,
        "mlp" => MLP,
        other => bail!(
            "no template for hook {other:?}; templates exist for {}",
            FAMILIES.join(", ")
        ),
    };
    let root = workspace_root();
    let parent = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("plugins"));
    let out = parent.join(name);
    if out.exists() {
        bail!(
            "{} already exists; choose another name or --dir",
            out.display()
        );
    }
    std::fs::create_dir_all(out.join("src"))
        .with_context(|| format!("creating {}", out.display()))?;
    let parent_abs = parent.canonicalize()?;
    // Inside this workspace's plugins/ the crate is a member; anywhere else it is
    // its own workspace, pinned to this workspace's dependency versions so the
    // shared plugin target directory's builds are reused.
    let member = parent_abs == root.join("plugins").canonicalize().unwrap_or_default();
    let api = root.join("plugin-api");
    let mut toml = format!(
        r#"[package]
name = "{name}"
description = "A speedrun plugin ({family})."
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
speedrun-plugin-api = {{ path = "{}" }}
"#,
        api.display()
    );
    if !member {
        toml.push_str("\n[workspace]\n");
        if let Ok(lock) = std::fs::read(root.join("Cargo.lock")) {
            std::fs::write(out.join("Cargo.lock"), lock)?;
        }
    }
    std::fs::write(out.join("Cargo.toml"), toml)?;
    let lib = source
        .replace("{name}", name)
        .replace("{dir}", &out.display().to_string());
    std::fs::write(out.join("src").join("lib.rs"), lib)?;
    Ok(out)
}

//! The training loop's pluggable parts (`Components`) and how plugins compose
//! into them: the reference stack, each hook replaced by the plugin that
//! claims it, `model.params`/`model.init` chained.

use super::*;
use crate::model::ModelHooks;
use crate::optim::adamw::{AdamW, AdamWConfig};
use crate::optim::schedule::WarmupCosine;
use crate::optim::{Optimizer, Schedule};
use crate::record::PolicyRecord;

/// The pluggable parts of the loop; `Components::reference` is the built-in stack.
pub struct Components {
    pub hooks: ModelHooks,
    pub optimizer: Box<dyn Optimizer>,
    pub schedule: Box<dyn Schedule>,
    /// The plugins behind some of the above, for the manifest and telemetry.
    pub plugins: Vec<LoadedPlugin>,
    /// The sandbox policy the stack was admitted under (none: built in code).
    pub policy: Option<PolicyRecord>,
}

impl Components {
    pub fn reference(track: &Track) -> Components {
        let o = &track.optimizer;
        Components {
            hooks: ModelHooks::default(),
            optimizer: Box::new(AdamW::new(AdamWConfig {
                beta1: o.beta1,
                beta2: o.beta2,
                eps: o.eps,
                weight_decay: o.weight_decay,
                grad_clip: o.grad_clip,
            })),
            schedule: Box::new(WarmupCosine {
                warmup_steps: o.warmup_steps,
                min_frac: o.min_lr_frac,
            }),
            plugins: Vec::new(),
            policy: None,
        }
    }
}

/// The configuration a plugin runs with: its declared defaults, then the track's
/// `[optimizer]` values for keys of the same name, then the user's overrides.
/// A key the plugin does not declare is an error.
pub fn resolve_config(
    manifest: &Manifest,
    track: &Track,
    overrides: Option<&serde_json::Value>,
) -> Result<serde_json::Value> {
    let mut config = match &manifest.config {
        serde_json::Value::Object(m) => m.clone(),
        serde_json::Value::Null => serde_json::Map::new(),
        other => bail!(
            "plugin {}: its default configuration must be a JSON object, not {other}",
            manifest.name
        ),
    };
    let track_opt = serde_json::to_value(track.optimizer)?;
    for (k, v) in config.iter_mut() {
        if let Some(tv) = track_opt.get(k) {
            *v = tv.clone();
        }
    }
    if let Some(o) = overrides {
        let Some(o) = o.as_object() else {
            bail!(
                "configuration for plugin {} must be a JSON object",
                manifest.name
            );
        };
        for (k, v) in o {
            if !config.contains_key(k) {
                let known: Vec<&String> = config.keys().collect();
                bail!(
                    "plugin {} has no configuration key {k:?} (it accepts {known:?})",
                    manifest.name
                );
            }
            config.insert(k.clone(), v.clone());
        }
    }
    Ok(serde_json::Value::Object(config))
}

/// The hooks that chain instead of being replaced.
fn chains(h: HookPoint) -> bool {
    matches!(h, HookPoint::ModelParams | HookPoint::ModelInit)
}

/// Puts plugins into the reference stack, in order.
pub fn compose(track: &Track, plugins: Vec<LoadedPlugin>) -> Result<Components> {
    let mut comps = Components::reference(track);
    let mut owner: BTreeMap<HookPoint, String> = BTreeMap::new();
    for p in plugins {
        let manifest = p.manifest();
        let hooks: Vec<HookPoint> = manifest
            .hooks
            .iter()
            .filter_map(|h| HookPoint::from_name(h))
            .collect();
        for &h in &hooks {
            if chains(h) {
                continue;
            }
            if let Some(other) = owner.insert(h, manifest.name.clone()) {
                bail!(
                    "plugins {other} and {} both provide hook {h}: only one plugin may replace it",
                    manifest.name
                );
            }
        }
        let s = &p.session;
        let fwd = || Box::new(PluginForwardHooks(s.clone()));
        for &h in &hooks {
            match h {
                HookPoint::Schedule => comps.schedule = Box::new(PluginSchedule(s.clone())),
                HookPoint::OptimizerInit => {
                    comps.optimizer = Box::new(PluginOptimizer {
                        session: s.clone(),
                        name: manifest.name.clone(),
                    })
                }
                HookPoint::OptimizerStep => {
                    if !hooks.contains(&HookPoint::OptimizerInit) {
                        bail!(
                            "plugin {} provides optimizer.step without optimizer.init",
                            manifest.name
                        );
                    }
                }
                HookPoint::ModelParams => {
                    comps.hooks.params.push(Box::new(PluginParams(s.clone())))
                }
                HookPoint::ModelInit => comps.hooks.init.insert(0, Box::new(PluginInit(s.clone()))),
                HookPoint::ModelEmbed => comps.hooks.embed = fwd(),
                HookPoint::ModelNorm => comps.hooks.norm = fwd(),
                HookPoint::ModelAttention => comps.hooks.attention = fwd(),
                HookPoint::ModelMlp => comps.hooks.mlp = fwd(),
                HookPoint::ModelBlock => comps.hooks.block = fwd(),
                HookPoint::ModelHead => comps.hooks.head = fwd(),
                HookPoint::ModelForward => comps.hooks.forward = fwd(),
                HookPoint::ModelBlockInput => comps.hooks.block_input = Some(fwd()),
                HookPoint::ModelQkv => comps.hooks.qkv = Some(fwd()),
                HookPoint::ModelLogits => comps.hooks.logits = Some(fwd()),
            }
        }
        comps.plugins.push(p);
    }
    Ok(comps)
}

/// Reads a `--plugin-config NAME=JSON` argument.
pub fn parse_config_arg(arg: &str) -> Result<(String, serde_json::Value)> {
    let Some((name, json)) = arg.split_once('=') else {
        bail!("--plugin-config {arg:?}: expected NAME=JSON, e.g. adamw='{{\"beta2\": 0.99}}'");
    };
    let v: serde_json::Value = serde_json::from_str(json)
        .with_context(|| format!("--plugin-config {name}: not valid JSON"))?;
    Ok((name.to_string(), v))
}

/// Loads `--plugin` specs with their `--plugin-config` overrides and composes them
/// into the reference stack. An override for a plugin not in the stack is an error.
pub fn stack(
    track: &Track,
    seed: u64,
    specs: &[PathBuf],
    configs: &[String],
    wasm: bool,
    policy: &LoadedPolicy,
) -> Result<Components> {
    let mut overrides: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for c in configs {
        let (name, v) = parse_config_arg(c)?;
        overrides.insert(name, v);
    }
    let mut loaded = Vec::with_capacity(specs.len());
    for spec in specs {
        let (module, lib) = open(spec, wasm, wasm_limits(policy))?;
        let name = module
            .manifest()
            .with_context(|| format!("plugin {}", lib.display()))?
            .name;
        let p = start(
            module,
            &lib,
            track,
            seed,
            overrides.remove(&name).as_ref(),
            policy,
        )?;
        loaded.push(p);
    }
    if let Some(name) = overrides.keys().next() {
        bail!("--plugin-config names plugin {name}, which is not among the --plugin list");
    }
    let mut comps = compose(track, loaded)?;
    comps.policy = Some(PolicyRecord {
        path: policy.path.display().to_string(),
        sha256: policy.sha256.clone(),
        mode: format!("{:?}", policy.policy.mode).to_lowercase(),
        warnings: comps
            .plugins
            .iter()
            .flat_map(|p| p.warnings.clone())
            .collect(),
    });
    Ok(comps)
}

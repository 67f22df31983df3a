//! Plugins: loading (native libraries, or crate directories built first),
//! configuring, and composing them into the training loop's components.
//!
//! A plugin replaces hooks of the reference stack. `model.params` and
//! `model.init` chain (each plugin sees the previous answer); every other hook
//! is exclusive, and two plugins claiming one is an error naming both.

pub mod adapters;
pub mod build;
pub mod handles;
pub mod host_ops;
pub mod native;
pub mod session;
pub mod template;
pub mod wasm;

use crate::device::memory::MemoryMeter;
use crate::track::Track;
use crate::train::Components;
use adapters::*;
use anyhow::{bail, Context, Result};
use handles::HandleTable;
use native::NativeModule;
use serde::Serialize;
use session::{HookLine, PluginSession, Transport};
use sha2::{Digest, Sha256};
use speedrun_plugin_api::{HookPoint, Manifest};
use speedrun_sandbox_policy::{LoadedPolicy, NativeVerdict, Transport as PolicyTransport};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use wasm::{WasmLimits, WasmModule};

/// What the run manifest records of each plugin.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PluginRecord {
    pub name: String,
    pub version: String,
    pub api_version: u32,
    pub hooks: Vec<String>,
    pub transport: String,
    pub path: String,
    /// SHA-256 of the library file.
    pub sha256: String,
    /// Size of the library file in bytes (what it could bring in as data).
    pub bytes: u64,
    pub config: serde_json::Value,
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

/// The wasm limits a policy sets.
pub fn wasm_limits(policy: &LoadedPolicy) -> WasmLimits {
    let w = policy.policy.wasm;
    WasmLimits {
        fuel_per_call: w.fuel_per_call,
        memory_bytes: (w.memory_pages * 65536) as usize,
        max_live_handles: w.max_live_handles as usize,
        max_tensor_bytes: w.max_tensor_bytes as usize,
        max_module_bytes: w.max_module_bytes as usize,
    }
}

/// The op budgets a policy sets for every plugin.
pub fn input_budget(policy: &LoadedPolicy) -> session::InputBudget {
    let i = policy.policy.inputs;
    session::InputBudget {
        max_ops_per_call: i.max_ops_per_call,
        max_literal_elements: i.max_literal_elements,
    }
}

/// Checks a plugin against the policy at load: every hook it provides must be
/// approved for its transport (in any mode), and a native plugin must be on the
/// allow-list (refused in official mode, a warning in dev mode). Answers the
/// dev-mode warnings.
pub fn admit(
    policy: &LoadedPolicy,
    manifest: &Manifest,
    module: &PluginModule,
    library: &Path,
) -> Result<Vec<String>> {
    let file = policy.path.display();
    let transport = module.policy_transport();
    for h in &manifest.hooks {
        let hook = HookPoint::from_name(h).with_context(|| format!("unknown hook {h}"))?;
        policy.policy.check_hook(hook, transport).map_err(|e| {
            crate::verify::Violation::new(
                crate::verify::Check::Plugins,
                format!("plugin {} refused by policy {file}: {e}", manifest.name),
            )
        })?;
    }
    let mut warnings = Vec::new();
    if transport == PolicyTransport::Native {
        // The hash of what was loaded, not of the file as it is now.
        let sha = match module.loaded_bytes().0 {
            s if !s.is_empty() => s,
            _ if library.is_file() => sha256_file(library)?,
            _ => String::new(),
        };
        if let NativeVerdict::Unapproved(why) =
            policy
                .policy
                .native_verdict(&manifest.name, &manifest.version, &sha, &manifest.hooks)
        {
            match policy.policy.mode {
                speedrun_sandbox_policy::Mode::Official => {
                    return Err(crate::verify::Violation::new(
                        crate::verify::Check::Plugins,
                        format!(
                            "plugin {} refused by policy {file} (official mode): {why}",
                            manifest.name
                        ),
                    )
                    .into())
                }
                speedrun_sandbox_policy::Mode::Dev => {
                    tracing::warn!(
                        "UNOFFICIAL RUN: {why}; policy {file} is in dev mode, so it runs anyway"
                    );
                    warnings.push(why);
                }
            }
        }
    }
    Ok(warnings)
}

/// A plugin ready to run: its session and what to record of it.
pub struct LoadedPlugin {
    pub session: Shared,
    pub record: PluginRecord,
    /// Why the policy did not approve it (dev mode); empty when approved.
    pub warnings: Vec<String>,
}

impl LoadedPlugin {
    pub fn manifest(&self) -> Manifest {
        self.session.borrow().manifest.clone()
    }
}

/// A loaded plugin module, before it has an instance.
pub enum PluginModule {
    Native(NativeModule),
    Wasm(Box<WasmModule>),
}

impl PluginModule {
    pub fn manifest(&self) -> Result<Manifest> {
        match self {
            PluginModule::Native(m) => m.manifest(),
            PluginModule::Wasm(m) => m.manifest(),
        }
    }

    fn create(&self, config: &serde_json::Value) -> Result<u64> {
        match self {
            PluginModule::Native(m) => m.create(config),
            PluginModule::Wasm(m) => m.create(config),
        }
    }

    /// SHA-256 and size of the bytes loaded (what ran), when they came from a file.
    pub fn loaded_bytes(&self) -> (String, u64) {
        match self {
            PluginModule::Native(m) => (m.sha256.clone(), m.bytes),
            PluginModule::Wasm(m) => (m.sha256.clone(), m.bytes as u64),
        }
    }

    /// The transport as the sandbox policy names it.
    pub fn policy_transport(&self) -> PolicyTransport {
        match self {
            PluginModule::Native(_) => PolicyTransport::Native,
            PluginModule::Wasm(_) => PolicyTransport::Wasm,
        }
    }

    pub fn transport_name(&self) -> &'static str {
        match self {
            PluginModule::Native(_) => "native",
            PluginModule::Wasm(_) => "wasm",
        }
    }

    /// A native plugin is trusted code; a wasm plugin's handles and bytes are capped.
    fn handle_table(&self) -> HandleTable {
        match self {
            PluginModule::Native(_) => HandleTable::new(),
            PluginModule::Wasm(m) => {
                let l = m.limits();
                HandleTable::with_caps(l.max_live_handles, l.max_tensor_bytes)
            }
        }
    }

    fn into_transport(self) -> Box<dyn Transport> {
        match self {
            PluginModule::Native(m) => Box::new(m),
            PluginModule::Wasm(m) => m,
        }
    }
}

/// Opens `--plugin SPEC`: a `.wasm` module, a native library, or a plugin crate
/// directory (built first; to wasm when `wasm`). Answers the module and the
/// file it came from.
pub fn open(spec: &Path, wasm: bool, limits: WasmLimits) -> Result<(PluginModule, PathBuf)> {
    let is_wasm_file = spec.extension().is_some_and(|e| e == "wasm");
    if build::is_crate_dir(spec) {
        if wasm {
            let lib = build::build_wasm(spec)?;
            Ok((
                PluginModule::Wasm(Box::new(WasmModule::load(&lib, limits)?)),
                lib,
            ))
        } else {
            let lib = build::build_native(spec)?;
            Ok((PluginModule::Native(NativeModule::load(&lib)?), lib))
        }
    } else if spec.is_file() && is_wasm_file {
        Ok((
            PluginModule::Wasm(Box::new(WasmModule::load(spec, limits)?)),
            spec.to_path_buf(),
        ))
    } else if spec.is_file() {
        if wasm {
            bail!("--wasm with {}: a native library cannot run as wasm; pass the plugin's crate directory or a .wasm file", spec.display());
        }
        Ok((
            PluginModule::Native(NativeModule::load(spec)?),
            spec.to_path_buf(),
        ))
    } else {
        bail!(
            "--plugin {}: no such library, .wasm module or plugin crate directory",
            spec.display()
        )
    }
}

/// SHA-256 of a library file, hex (what the native allow-list records).
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
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

/// Starts an instance of a loaded module as a session of this run.
pub fn start(
    module: PluginModule,
    path: &Path,
    track: &Track,
    seed: u64,
    overrides: Option<&serde_json::Value>,
    policy: &LoadedPolicy,
) -> Result<LoadedPlugin> {
    let where_ = || format!("plugin {}", path.display());
    let manifest = module.manifest().with_context(where_)?;
    let warnings = admit(policy, &manifest, &module, path)?;
    let config = resolve_config(&manifest, track, overrides)?;
    let instance = module
        .create(&config)
        .with_context(|| format!("plugin {}: creating it", manifest.name))?;
    let rng = crate::model::params::param_rng(seed, &format!("plugin:{}", manifest.name));
    let record = PluginRecord {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        api_version: manifest.api_version,
        hooks: manifest.hooks.clone(),
        transport: module.transport_name().into(),
        path: path.display().to_string(),
        sha256: module.loaded_bytes().0,
        bytes: module.loaded_bytes().1,
        config,
    };
    let table = module.handle_table();
    let mut session = PluginSession::new(
        manifest,
        module.into_transport(),
        instance,
        record.config.clone(),
        rng,
        table,
    );
    session.set_budget(input_budget(policy));
    for hook in HookPoint::ALL {
        if let Some(ops) = policy.policy.op_allow_list(hook) {
            session.restrict(hook, ops, policy.path.display().to_string());
        }
    }
    Ok(LoadedPlugin {
        session: Rc::new(RefCell::new(session)),
        record,
        warnings,
    })
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
            }
        }
        comps.plugins.push(p);
    }
    Ok(comps)
}

/// Puts the plugins' ops on the run's device, in the track's precision, and
/// their hooks under the run's memory meter.
pub fn attach_device(
    plugins: &[LoadedPlugin],
    meter: &std::sync::Arc<MemoryMeter>,
    precision: speedrun_kernels::Precision,
) {
    for p in plugins {
        p.session
            .borrow_mut()
            .attach_device(meter.clone(), precision);
    }
}

/// Per-hook accounting of every plugin since the last call.
pub fn take_stats(plugins: &[LoadedPlugin]) -> Vec<HookLine> {
    plugins
        .iter()
        .flat_map(|p| p.session.borrow_mut().take_stats())
        .collect()
}

/// Tells every plugin the document separator as the run's labels spell it.
pub fn set_separator(plugins: &[LoadedPlugin], train: Option<u32>, eval: Option<u32>) {
    for p in plugins {
        p.session.borrow_mut().set_separator(train, eval);
    }
}

/// Every plugin's seeded generator, to restore after a twin forward.
pub fn rng_states(plugins: &[LoadedPlugin]) -> Vec<rand_chacha::ChaCha8Rng> {
    plugins
        .iter()
        .map(|p| p.session.borrow().rng_state())
        .collect()
}

pub fn set_rng_states(plugins: &[LoadedPlugin], states: Vec<rand_chacha::ChaCha8Rng>) {
    for (p, s) in plugins.iter().zip(states) {
        p.session.borrow_mut().set_rng_state(s);
    }
}

/// Every op refusal the plugins' sessions recorded since the last call.
pub fn take_violations(plugins: &[LoadedPlugin]) -> Vec<crate::verify::Violation> {
    plugins
        .iter()
        .flat_map(|p| p.session.borrow_mut().take_violations())
        .collect()
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

/// The policy file used when none is given.
pub fn default_policy_path() -> PathBuf {
    crate::track::project_root()
        .join("sandbox-policy")
        .join("default.toml")
}

//! Plugins: loading (native libraries, or crate directories built first),
//! configuring, and composing them into the training loop's components.
//!
//! A plugin replaces hooks of the reference stack. `model.params` and
//! `model.init` chain (each plugin sees the previous answer); every other hook
//! is exclusive, and two plugins claiming one is an error naming both.

pub mod adapters;
pub mod admission;
pub mod build;
pub mod call_tape;
pub mod components;
pub mod handles;
pub mod host_ops;
pub mod native;
pub mod session;
pub mod snapshot;
pub mod template;
pub mod wasm;

use crate::device::memory::MemoryMeter;
use crate::record::PluginRecord;
use crate::track::Track;
use adapters::*;
pub use admission::{admit, default_policy_path, input_budget, wasm_limits};
use anyhow::{bail, Context, Result};
pub use components::{compose, parse_config_arg, resolve_config, stack, Components};
use handles::HandleTable;
use native::NativeModule;
use session::{HookLine, PluginSession, Transport};
use sha2::{Digest, Sha256};
use speedrun_plugin_abi::{HookPoint, Manifest};
use speedrun_sandbox_policy::{LoadedPolicy, NativeVerdict, Transport as PolicyTransport};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use wasm::{WasmLimits, WasmModule};

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
        api_minor: manifest.api_minor,
        hooks: manifest.hooks.clone(),
        transport: module.policy_transport(),
        path: path.display().to_string(),
        sha256: module.loaded_bytes().0,
        bytes: module.loaded_bytes().1,
        config,
        overrides: overrides
            .and_then(|o| o.as_object())
            .cloned()
            .unwrap_or_default(),
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

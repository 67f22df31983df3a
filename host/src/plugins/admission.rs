//! What the sandbox policy admits: its wasm limits and op budgets, and the
//! check of a plugin against it at load.

use super::*;

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

/// What the policy says of one plugin, judged on the bytes that were loaded:
/// each hook it provides against the hooks' rules and, for a native library,
/// the allow-list's verdict with the hash it was given.
struct Judgement {
    hooks: Vec<(HookPoint, std::result::Result<(), String>)>,
    native: Option<(String, NativeVerdict)>,
}

fn judge(
    policy: &LoadedPolicy,
    manifest: &Manifest,
    module: &PluginModule,
    library: &Path,
) -> Result<Judgement> {
    let transport = module.policy_transport();
    let hooks = manifest
        .hooks
        .iter()
        .map(|h| {
            let hook = HookPoint::from_name(h).with_context(|| format!("unknown hook {h}"))?;
            let ruled = policy.policy.check_hook(hook, transport);
            Ok((hook, ruled.map_err(|e| e.to_string())))
        })
        .collect::<Result<_>>()?;
    let native = if transport == PolicyTransport::Native {
        // The hash of what was loaded, not of the file as it is now.
        let sha = match module.loaded_bytes().0 {
            s if !s.is_empty() => s,
            _ if library.is_file() => sha256_file(library)?,
            _ => String::new(),
        };
        let verdict =
            policy
                .policy
                .native_verdict(&manifest.name, &manifest.version, &sha, &manifest.hooks);
        Some((sha, verdict))
    } else {
        None
    };
    Ok(Judgement { hooks, native })
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
    let judged = judge(policy, manifest, module, library)?;
    let refused = |why: String| crate::verify::Violation::new(crate::verify::Check::Plugins, why);
    for (_, ruled) in judged.hooks {
        ruled.map_err(|e| {
            refused(format!(
                "plugin {} refused by policy {file}: {e}",
                manifest.name
            ))
        })?;
    }
    let mut warnings = Vec::new();
    if let Some((_, NativeVerdict::Unapproved(why))) = judged.native {
        match policy.policy.mode {
            speedrun_sandbox_policy::Mode::Official => {
                return Err(refused(format!(
                    "plugin {} refused by policy {file} (official mode): {why}",
                    manifest.name
                ))
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
    Ok(warnings)
}

/// The policy file used when none is given.
pub fn default_policy_path() -> PathBuf {
    crate::track::project_root()
        .join("sandbox-policy")
        .join("default.toml")
}

/// One finding of a policy review: what was judged, and whether an official
/// run would admit it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub admitted: bool,
    pub detail: String,
}

/// What the policy says of a plugin, every finding listed (not just the first).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Review {
    pub name: String,
    pub version: String,
    pub transport: crate::record::Transport,
    pub library: PathBuf,
    pub findings: Vec<Finding>,
}

impl Review {
    pub fn refused(&self) -> usize {
        self.findings.iter().filter(|f| !f.admitted).count()
    }
}

/// Judges a plugin as an official run would (`admit`'s judgement), listing
/// every finding rather than stopping at the first.
pub fn review(policy: &LoadedPolicy, plugin: &Path, wasm: bool) -> Result<Review> {
    let (module, lib) = open(plugin, wasm, wasm_limits(policy))?;
    let m = module.manifest()?;
    let judged = judge(policy, &m, &module, &lib)?;
    let mut findings: Vec<Finding> = judged
        .hooks
        .into_iter()
        .map(|(hook, ruled)| match ruled {
            Ok(()) => {
                let ops = match policy.policy.op_allow_list(hook) {
                    None => "the hook's whole contract".to_string(),
                    Some(ops) => ops.iter().map(|o| o.name()).collect::<Vec<_>>().join(", "),
                };
                Finding {
                    admitted: true,
                    detail: format!("hook {hook} (ops: {ops})"),
                }
            }
            Err(e) => Finding {
                admitted: false,
                detail: e,
            },
        })
        .collect();
    findings.extend(judged.native.map(|(sha, verdict)| match verdict {
        NativeVerdict::Approved => Finding {
            admitted: true,
            detail: format!("on the native allow-list (sha256 {sha})"),
        },
        NativeVerdict::Unapproved(why) => Finding {
            admitted: false,
            detail: why,
        },
    }));
    Ok(Review {
        name: m.name,
        version: m.version,
        transport: module.policy_transport(),
        library: lib,
        findings,
    })
}

/// Adds a native plugin to the policy file's allow-list with its library's
/// SHA-256, for `hooks` (default: every hook it provides). Answers the entry.
pub fn approve(
    policy: &LoadedPolicy,
    plugin: &Path,
    hooks: Vec<String>,
    by: String,
) -> Result<speedrun_sandbox_policy::NativeApproval> {
    let file = policy.path.display();
    let (module, lib) = open(plugin, false, wasm_limits(policy))?;
    let m = module.manifest()?;
    let hooks = if hooks.is_empty() {
        m.hooks.clone()
    } else {
        hooks
    };
    for h in &m.hooks {
        if !hooks.contains(h) {
            bail!(
                "plugin {} provides hook {h}, which --hooks leaves out",
                m.name
            );
        }
    }
    for h in &hooks {
        let hook =
            HookPoint::from_name(h).with_context(|| format!("--hooks: no such hook {h:?}"))?;
        policy
            .policy
            .check_hook(hook, PolicyTransport::Native)
            .map_err(|e| anyhow::anyhow!("refusing to approve {}: {e} in {file}", m.name))?;
    }
    let approval = speedrun_sandbox_policy::NativeApproval {
        name: m.name.clone(),
        version: m.version.clone(),
        sha256: sha256_file(&lib)?,
        hooks,
        approved_by: by,
        approved_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    let text = std::fs::read_to_string(&policy.path)?;
    std::fs::write(
        &policy.path,
        speedrun_sandbox_policy::with_approval(&text, &approval)?,
    )?;
    Ok(approval)
}

/// Removes every allow-list entry of a plugin, named or given as a library,
/// module or crate path. Answers its name and how many entries went.
pub fn revoke(policy: &LoadedPolicy, plugin: &str) -> Result<(String, usize)> {
    let as_path = Path::new(plugin);
    let name = if as_path.exists() {
        let wasm = as_path.extension().is_some_and(|e| e == "wasm");
        open(as_path, wasm, wasm_limits(policy))?.0.manifest()?.name
    } else {
        plugin.to_string()
    };
    let text = std::fs::read_to_string(&policy.path)?;
    let (new, removed) = speedrun_sandbox_policy::without_approval(&text, &name)?;
    if removed == 0 {
        bail!("{} has no approval of plugin {name}", policy.path.display());
    }
    std::fs::write(&policy.path, new)?;
    Ok((name, removed))
}

/// The policy file at `path`, else the workspace's default.
pub fn load_policy(path: Option<&Path>) -> Result<LoadedPolicy> {
    let path = path
        .map(Path::to_path_buf)
        .unwrap_or_else(default_policy_path);
    LoadedPolicy::load(&path)
}

//! The maintainers' sandbox policy: which hook points plugins may replace, by
//! which transport (native, wasm), with which ops; the wasm resource limits; and
//! the native plugins trusted to run in the host's process (name, version,
//! SHA-256 of the library, the hooks it may use, who approved it and when).
//!
//! This crate is the model and its TOML file format with full validation; a
//! bad file is refused naming the field. It owns no enforcement: the host asks
//! the questions below ([`Policy::check_hook`], [`Policy::op_allowed`],
//! [`Policy::native_verdict`]) at load and at every op.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use speedrun_plugin_abi::{HookPoint, Op};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What happens to a plugin the policy does not approve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// It runs, with a loud warning, and the run is marked unofficial.
    Dev,
    /// It is refused.
    Official,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Native,
    Wasm,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Native => "native",
            Transport::Wasm => "wasm",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Transport, String> {
        match s {
            "native" => Ok(Transport::Native),
            "wasm" => Ok(Transport::Wasm),
            _ => Err(format!("{s:?} is not a transport (native or wasm)")),
        }
    }
}

/// Resource limits of every wasm plugin's hook calls.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmLimits {
    /// Wasm instructions one hook call may execute (the deadline, in fuel).
    pub fuel_per_call: u64,
    /// Linear memory, in 64 KiB pages.
    pub memory_pages: u64,
    /// Tensor handles a plugin may hold at once.
    pub max_live_handles: u64,
    /// Bytes of the tensors those handles name.
    pub max_tensor_bytes: u64,
    /// Size of the module file: its data segments are what a plugin can bring
    /// in wholesale (a checkpoint), so they are bounded before it runs.
    #[serde(default = "default_module_bytes")]
    pub max_module_bytes: u64,
}

fn default_module_bytes() -> u64 {
    1 << 20
}

impl Default for WasmLimits {
    fn default() -> WasmLimits {
        WasmLimits {
            fuel_per_call: 2_000_000_000,
            memory_pages: 4096,
            max_live_handles: 1 << 16,
            max_tensor_bytes: 8 << 30,
            max_module_bytes: default_module_bytes(),
        }
    }
}

/// What any plugin (either transport) may bring into a run through its ops.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputLimits {
    /// Ops one hook call may make.
    pub max_ops_per_call: u64,
    /// Tensor elements a plugin may create from its own constants in one run
    /// (`from_values` and `full`): the channel a smuggled checkpoint would use.
    pub max_literal_elements: u64,
}

impl Default for InputLimits {
    fn default() -> InputLimits {
        InputLimits {
            max_ops_per_call: 8192,
            max_literal_elements: 4096,
        }
    }
}

/// One replaceable hook: by which transports, with which ops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookRule {
    pub transports: Vec<Transport>,
    /// Op names the hook may call, or `["*"]` for everything its contract allows.
    pub ops: Vec<String>,
}

/// A native plugin the maintainers trust.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeApproval {
    pub name: String,
    pub version: String,
    /// SHA-256 of the library file, hex.
    pub sha256: String,
    /// Dotted hook names it may provide.
    pub hooks: Vec<String>,
    pub approved_by: String,
    /// When (RFC 3339).
    pub approved_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub mode: Mode,
    #[serde(default)]
    pub wasm: WasmLimits,
    #[serde(default)]
    pub inputs: InputLimits,
    /// Keyed by dotted hook name; a hook absent here may not be replaced.
    #[serde(default)]
    pub hooks: BTreeMap<String, HookRule>,
    #[serde(default)]
    pub native: Vec<NativeApproval>,
}

/// A policy as loaded: the model, the file it came from and that file's hash.
#[derive(Debug, Clone)]
pub struct LoadedPolicy {
    pub policy: Policy,
    pub path: PathBuf,
    pub sha256: String,
}

/// What the policy says of a native plugin.
#[derive(Debug, Clone, PartialEq)]
pub enum NativeVerdict {
    Approved,
    /// Why not, naming the rule.
    Unapproved(String),
}

const LIMIT_BOUNDS: [(&str, u64, u64); 7] = [
    ("wasm.fuel_per_call", 1_000, 1_000_000_000_000),
    ("wasm.memory_pages", 1, 65_536),
    ("wasm.max_live_handles", 1, 100_000_000),
    ("wasm.max_tensor_bytes", 1 << 10, 1 << 40),
    ("wasm.max_module_bytes", 1 << 10, 1 << 30),
    ("inputs.max_ops_per_call", 1, 100_000_000),
    ("inputs.max_literal_elements", 0, 1 << 40),
];

impl Policy {
    /// Parses and validates a policy; errors name the field.
    pub fn parse(text: &str) -> Result<Policy> {
        let p: Policy = toml::from_str(text).map_err(|e| anyhow!("{}", e.to_string().trim()))?;
        p.validate()?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<()> {
        let (w, i) = (&self.wasm, &self.inputs);
        for (field, lo, hi) in LIMIT_BOUNDS {
            let v = match field {
                "wasm.fuel_per_call" => w.fuel_per_call,
                "wasm.memory_pages" => w.memory_pages,
                "wasm.max_live_handles" => w.max_live_handles,
                "wasm.max_tensor_bytes" => w.max_tensor_bytes,
                "wasm.max_module_bytes" => w.max_module_bytes,
                "inputs.max_ops_per_call" => i.max_ops_per_call,
                _ => i.max_literal_elements,
            };
            if !(lo..=hi).contains(&v) {
                bail!("{field} = {v} is outside the sane range {lo}..={hi}");
            }
        }
        for (name, rule) in &self.hooks {
            let Some(hook) = HookPoint::from_name(name) else {
                bail!("hooks.\"{name}\": no such hook point");
            };
            if rule.transports.is_empty() {
                bail!("hooks.\"{name}\".transports: empty (remove the hook to forbid it)");
            }
            if rule.ops.iter().any(|o| o == "*") {
                if rule.ops.len() > 1 {
                    bail!("hooks.\"{name}\".ops: \"*\" stands alone");
                }
                continue;
            }
            for o in &rule.ops {
                let Some(op) = Op::from_name(o) else {
                    bail!("hooks.\"{name}\".ops: no such op {o:?}");
                };
                if !op.allowed_in(hook) {
                    bail!("hooks.\"{name}\".ops: {o} is outside the hook's contract");
                }
            }
        }
        for (i, n) in self.native.iter().enumerate() {
            let at = format!("native[{i}] ({})", n.name);
            if n.name.trim().is_empty() {
                bail!("native[{i}].name: empty");
            }
            if n.sha256.len() != 64 || !n.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("{at}.sha256: expected 64 hex digits, got {:?}", n.sha256);
            }
            if n.approved_by.trim().is_empty() {
                bail!("{at}.approved_by: empty");
            }
            for h in &n.hooks {
                if HookPoint::from_name(h).is_none() {
                    bail!("{at}.hooks: no such hook point {h:?}");
                }
            }
        }
        Ok(())
    }

    /// May a plugin replace `hook` over `transport`? An error names the rule.
    pub fn check_hook(&self, hook: HookPoint, transport: Transport) -> Result<()> {
        match self.hooks.get(hook.name()) {
            None => bail!("hook {hook} is not approved for replacement (rule hooks.\"{hook}\" is absent)"),
            Some(r) if !r.transports.contains(&transport) => bail!(
                "hook {hook} is not approved for {} plugins (rule hooks.\"{hook}\".transports = {:?})",
                transport.name(),
                r.transports.iter().map(|t| t.name()).collect::<Vec<_>>()
            ),
            Some(_) => Ok(()),
        }
    }

    /// The ops `hook` may call: `None` for its whole contract.
    pub fn op_allow_list(&self, hook: HookPoint) -> Option<Vec<Op>> {
        let rule = self.hooks.get(hook.name())?;
        if rule.ops.iter().any(|o| o == "*") {
            return None;
        }
        Some(rule.ops.iter().filter_map(|o| Op::from_name(o)).collect())
    }

    /// Whether a native plugin (name, version, library hash, hooks) is on the
    /// allow-list.
    pub fn native_verdict(
        &self,
        name: &str,
        version: &str,
        sha256: &str,
        hooks: &[String],
    ) -> NativeVerdict {
        let entries: Vec<&NativeApproval> = self.native.iter().filter(|n| n.name == name).collect();
        if entries.is_empty() {
            return NativeVerdict::Unapproved(format!(
                "native plugin {name} is not on the allow-list (rule native)"
            ));
        }
        let Some(e) = entries.iter().find(|e| e.version == version) else {
            return NativeVerdict::Unapproved(format!(
                "native plugin {name} {version} is not approved; approved versions: {:?} (rule native.version)",
                entries.iter().map(|e| e.version.as_str()).collect::<Vec<_>>()
            ));
        };
        if !e.sha256.eq_ignore_ascii_case(sha256) {
            return NativeVerdict::Unapproved(format!(
                "native plugin {name} {version}: the library's SHA-256 is {sha256}, the approved one {} (rule native.sha256: the library changed after approval)",
                e.sha256
            ));
        }
        if let Some(h) = hooks.iter().find(|h| !e.hooks.contains(h)) {
            return NativeVerdict::Unapproved(format!(
                "native plugin {name} {version} provides hook {h}, which its approval does not cover (rule native.hooks = {:?})",
                e.hooks
            ));
        }
        NativeVerdict::Approved
    }
}

impl LoadedPolicy {
    pub fn load(path: &Path) -> Result<LoadedPolicy> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading policy {}", path.display()))?;
        let policy = Policy::parse(&text).with_context(|| format!("policy {}", path.display()))?;
        Ok(LoadedPolicy {
            policy,
            path: path.to_path_buf(),
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
        })
    }
}

/// Adds (or replaces, by name and version) a native approval in the policy
/// file's text, keeping the rest of the file (comments, order, the other
/// approvals) as written.
pub fn with_approval(text: &str, a: &NativeApproval) -> Result<String> {
    let mut p = Policy::parse(text)?;
    p.native
        .retain(|n| !(n.name == a.name && n.version == a.version));
    p.native.push(a.clone());
    p.validate()?;
    edit_native(text, |tables| {
        tables.retain(|t| !(str_of(t, "name") == a.name && str_of(t, "version") == a.version));
        tables.push(approval_table(a));
    })
}

/// Removes every native approval of plugin `name`; answers the new text and how
/// many entries went.
pub fn without_approval(text: &str, name: &str) -> Result<(String, usize)> {
    Policy::parse(text)?;
    let mut removed = 0;
    let text = edit_native(text, |tables| {
        let before = tables.len();
        tables.retain(|t| str_of(t, "name") != name);
        removed = before - tables.len();
    })?;
    Ok((text, removed))
}

/// The file's text with its `[[native]]` tables edited in place by `edit`
/// (through `toml_edit`, so everything else stays byte for byte).
fn edit_native(text: &str, edit: impl FnOnce(&mut Vec<toml_edit::Table>)) -> Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("the policy file is not TOML")?;
    let mut tables: Vec<toml_edit::Table> = match doc.remove("native") {
        None => Vec::new(),
        Some(toml_edit::Item::ArrayOfTables(a)) => a.into_iter().collect(),
        Some(_) => bail!("`native` must be an array of tables ([[native]])"),
    };
    edit(&mut tables);
    if !tables.is_empty() {
        let mut array = toml_edit::ArrayOfTables::new();
        for t in tables {
            array.push(t);
        }
        doc.insert("native", toml_edit::Item::ArrayOfTables(array));
    }
    Ok(doc.to_string())
}

fn str_of<'a>(t: &'a toml_edit::Table, key: &str) -> &'a str {
    t.get(key).and_then(|v| v.as_str()).unwrap_or_default()
}

fn approval_table(a: &NativeApproval) -> toml_edit::Table {
    let mut t = toml_edit::Table::new();
    t["name"] = toml_edit::value(&a.name);
    t["version"] = toml_edit::value(&a.version);
    t["sha256"] = toml_edit::value(&a.sha256);
    t["hooks"] = toml_edit::value(a.hooks.iter().collect::<toml_edit::Array>());
    t["approved_by"] = toml_edit::value(&a.approved_by);
    t["approved_at"] = toml_edit::value(&a.approved_at);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
mode = "official"

[wasm]
fuel_per_call = 1000000
memory_pages = 16
max_live_handles = 100
max_tensor_bytes = 1048576

[hooks."optimizer.step"]
transports = ["wasm", "native"]
ops = ["adamw_update", "keep"]

[hooks.schedule]
transports = ["wasm"]
ops = ["*"]

[[native]]
name = "adamw"
version = "0.1.0"
sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
hooks = ["optimizer.init", "optimizer.step"]
approved_by = "maintainer"
approved_at = "2026-11-28T00:00:00Z"
"#;

    fn refused(text: &str, needle: &str) {
        let err = format!("{:#}", Policy::parse(text).unwrap_err());
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }

    #[test]
    fn a_good_policy_answers_its_questions() {
        let p = Policy::parse(GOOD).unwrap();
        assert!(p
            .check_hook(HookPoint::OptimizerStep, Transport::Native)
            .is_ok());
        let err = p
            .check_hook(HookPoint::Schedule, Transport::Native)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not approved for native plugins"), "{err}");
        let err = p
            .check_hook(HookPoint::ModelForward, Transport::Wasm)
            .unwrap_err()
            .to_string();
        assert!(err.contains("hooks.\"model.forward\" is absent"), "{err}");
        assert_eq!(p.op_allow_list(HookPoint::Schedule), None);
        assert_eq!(
            p.op_allow_list(HookPoint::OptimizerStep),
            Some(vec![Op::AdamwUpdate, Op::Keep])
        );
        let hooks = vec!["optimizer.init".to_string(), "optimizer.step".to_string()];
        let sha = "a".repeat(64);
        assert_eq!(
            p.native_verdict("adamw", "0.1.0", &sha, &hooks),
            NativeVerdict::Approved
        );
        let NativeVerdict::Unapproved(why) =
            p.native_verdict("adamw", "0.1.0", &"b".repeat(64), &hooks)
        else {
            panic!("a changed library was approved")
        };
        assert!(why.contains("changed after approval"), "{why}");
        assert!(matches!(
            p.native_verdict("other", "0.1.0", &sha, &hooks),
            NativeVerdict::Unapproved(_)
        ));
        let more = vec!["model.mlp".to_string()];
        assert!(matches!(
            p.native_verdict("adamw", "0.1.0", &sha, &more),
            NativeVerdict::Unapproved(_)
        ));
    }

    #[test]
    fn malformed_policies_are_refused_naming_the_field() {
        refused(
            &GOOD.replace("mode = \"official\"", "mode = \"lax\""),
            "mode",
        );
        refused(&format!("{GOOD}\nsurprise = 1\n"), "surprise");
        refused(
            &GOOD.replace("memory_pages = 16", "memory_pages = 16\ncolour = 2"),
            "colour",
        );
        refused(
            &GOOD.replace("sha256 = \"aaaa", "sha256 = \"zzzz"),
            "native[0] (adamw).sha256",
        );
        refused(
            &GOOD.replace("memory_pages = 16", "memory_pages = -1"),
            "memory_pages",
        );
        refused(
            &GOOD.replace("memory_pages = 16", "memory_pages = 10000000"),
            "wasm.memory_pages = 10000000 is outside",
        );
        refused(
            &GOOD.replace("fuel_per_call = 1000000", "fuel_per_call = 0"),
            "wasm.fuel_per_call = 0",
        );
        refused(
            &GOOD.replace("[hooks.schedule]", "[hooks.\"model.everything\"]"),
            "hooks.\"model.everything\": no such hook point",
        );
        refused(
            &GOOD.replace("ops = [\"adamw_update\", \"keep\"]", "ops = [\"param\"]"),
            "param is outside the hook's contract",
        );
        refused(
            &GOOD.replace("ops = [\"adamw_update\", \"keep\"]", "ops = [\"teleport\"]"),
            "no such op \"teleport\"",
        );
        refused(
            &GOOD.replace("transports = [\"wasm\"]", "transports = []"),
            "hooks.\"schedule\".transports: empty",
        );
        refused(
            &GOOD.replace(
                "transports = [\"wasm\"]",
                "transports = [\"carrier-pigeon\"]",
            ),
            "transports",
        );
        refused(
            &GOOD.replace("approved_by = \"maintainer\"", "approved_by = \" \""),
            "approved_by: empty",
        );
    }

    #[test]
    fn approve_and_revoke_keep_the_rest_of_the_file() {
        let a = NativeApproval {
            name: "relu2".into(),
            version: "0.1.0".into(),
            sha256: "c".repeat(64),
            hooks: vec!["optimizer.step".into()],
            approved_by: "me".into(),
            approved_at: "2026-11-28T01:00:00Z".into(),
        };
        let with = with_approval(GOOD, &a).unwrap();
        assert!(with.contains("[hooks.schedule]") && with.contains("max_tensor_bytes = 1048576"));
        let p = Policy::parse(&with).unwrap();
        assert_eq!(p.native.len(), 2);
        assert_eq!(p.native[1], a);
        let (without, removed) = without_approval(&with, "adamw").unwrap();
        assert_eq!(removed, 1);
        let p = Policy::parse(&without).unwrap();
        assert_eq!(p.native, vec![a]);
        assert!(without.contains("[hooks.\"optimizer.step\"]"));
    }
}

//! Building a plugin crate with cargo. Every plugin goes to one shared target
//! directory, so dependencies (the plugin API, abi_stable) compile once and a
//! second run of the same plugin does not rebuild.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where plugin builds go: `$SPEEDRUN_PLUGIN_TARGET_DIR`, else the host
/// workspace's `target/plugins`.
pub fn shared_target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SPEEDRUN_PLUGIN_TARGET_DIR") {
        return PathBuf::from(d);
    }
    workspace_root().join("target").join("plugins")
}

/// The source tree this host was built from (plugin templates point their
/// `speedrun-plugin-api` dependency here).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host crate lives in the workspace")
        .to_path_buf()
}

pub fn is_crate_dir(path: &Path) -> bool {
    path.is_dir() && path.join("Cargo.toml").is_file()
}

/// Builds the plugin crate at `dir` (release) and answers its library's path.
pub fn build_native(dir: &Path) -> Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} is not a plugin crate: it has no Cargo.toml",
            dir.display()
        );
    }
    let manifest = manifest
        .canonicalize()
        .with_context(|| format!("resolving {}", manifest.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    tracing::info!("building plugin {}", dir.display());
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--lib",
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(shared_target_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .context("running cargo to build the plugin (is cargo on PATH?)")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "building plugin {} failed:\n{}",
            dir.display(),
            tail.join("\n")
        );
    }
    // The cdylib artifact of the package whose manifest we built.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let kinds = msg["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !kinds.iter().any(|k| k == "cdylib") {
            continue;
        }
        let same = msg["manifest_path"]
            .as_str()
            .and_then(|p| Path::new(p).canonicalize().ok())
            .is_some_and(|p| p == manifest);
        if !same {
            continue;
        }
        let files = msg["filenames"].as_array().cloned().unwrap_or_default();
        if let Some(lib) = files
            .iter()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(std::env::consts::DLL_SUFFIX))
        {
            return Ok(PathBuf::from(lib));
        }
    }
    bail!(
        "cargo built {} but produced no native library: set `crate-type = [\"cdylib\"]` under [lib] in its Cargo.toml",
        dir.display()
    )
}

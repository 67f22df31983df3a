//! Building a plugin crate with cargo. Plugins go to one shared target
//! directory, so dependencies (the plugin API, abi_stable) compile once and a
//! second run of the same plugin does not rebuild. Two crates of one name (a
//! submission named like the record) share an output file there, so a build
//! holds the directory's lock, rebuilds the crate whenever another folder's
//! crate of that name was built since (`BuildSlot`), and answers a
//! content-addressed copy of its artifact that no later build touches.

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
/// The build runs on a staged copy (`stage`), so the same source gives the
/// same bytes wherever it lies: a submission's snapshot builds to the library
/// a maintainer approved from the plugin's own folder.
pub fn build_native(dir: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--lib"])
        .arg("--target-dir")
        .arg(shared_target_dir())
        .env("RUSTFLAGS", reproducible_rustflags());
    let _slot = BuildSlot::take(&shared_target_dir(), dir)?;
    let staged = stage(dir)?;
    cargo_artifact(&staged, cmd, std::env::consts::DLL_SUFFIX)
}

/// The crate at `dir` copied into a staging workspace at one fixed place,
/// `TARGET/staging/` (`crates/NAME`, with a copy of this host's SDK at
/// `sdk/speedrun-plugin-api`, the host's `Cargo.lock` and its workspace settings and
/// profiles), made standalone the way a submission's snapshot is. Every path
/// cargo hashes is then relative to that workspace, so the library's bytes
/// depend on the source alone: not on its folder, the checkout's, a fresh
/// resolution or a workspace's profile. Left as it is when the same source
/// is already staged, so an unchanged plugin is not rebuilt.
fn stage(dir: &Path) -> Result<PathBuf> {
    use super::snapshot;
    let snap = snapshot::take(dir)?;
    let root = shared_target_dir().join("staging");
    stage_workspace(&root, &snap.crate_name)?;
    let crates = root.join("crates");
    let staged = crates.join(&snap.crate_name);
    let stamp = staged.join(".speedrun-staged");
    // The source's hash, and how it was staged: a change to staging stages again.
    let staged_as = format!("3 {}", snap.sha256);
    if std::fs::read_to_string(&stamp).ok() == Some(staged_as.clone()) {
        return Ok(staged);
    }
    if staged.exists() {
        std::fs::remove_dir_all(&staged)
            .with_context(|| format!("clearing {}", staged.display()))?;
    }
    let out = snapshot::extract(&snap.archive, &snap.crate_name, &crates)?;
    let manifest = out.join("Cargo.toml");
    absolute_path_dependencies(&manifest, dir)?;
    // A member of the staging workspace, against its copy of the SDK.
    let mut toml: toml::Table = toml::from_str(&std::fs::read_to_string(&manifest)?)?;
    toml.remove("workspace");
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(api) = toml
            .get_mut(section)
            .and_then(|d| d.get_mut("speedrun-plugin-api"))
            .and_then(|a| a.as_table_mut())
        {
            api.insert(
                "path".into(),
                toml::Value::String("../../sdk/speedrun-plugin-api".into()),
            );
        }
    }
    std::fs::write(&manifest, toml::to_string(&toml)?)?;
    let _ = std::fs::remove_file(out.join("Cargo.lock"));
    std::fs::write(&stamp, staged_as)?;
    Ok(out)
}

/// The staging workspace with `name` as its one member: its manifest (this
/// host's `[workspace.package]`, `[workspace.dependencies]` and profiles), its
/// `Cargo.lock` (the host's, when it has none) and the SDK's copy, refreshed
/// when this host's SDK differs from it.
fn stage_workspace(root: &Path, name: &str) -> Result<()> {
    let host = workspace_root();
    let ws: toml::Table = toml::from_str(&std::fs::read_to_string(host.join("Cargo.toml"))?)?;
    let mut out = toml::Table::new();
    let mut w = toml::Table::new();
    w.insert("resolver".into(), "2".into());
    w.insert(
        "members".into(),
        toml::Value::Array(vec![format!("crates/{name}").into()]),
    );
    if let Some(host_ws) = ws.get("workspace").and_then(|w| w.as_table()) {
        for key in ["package", "dependencies"] {
            if let Some(v) = host_ws.get(key) {
                w.insert(key.into(), v.clone());
            }
        }
    }
    out.insert("workspace".into(), toml::Value::Table(w));
    if let Some(p) = ws.get("profile") {
        out.insert("profile".into(), p.clone());
    }
    std::fs::create_dir_all(root.join("crates"))?;
    std::fs::write(root.join("Cargo.toml"), toml::to_string(&out)?)?;
    if !root.join("Cargo.lock").exists() {
        std::fs::copy(host.join("Cargo.lock"), root.join("Cargo.lock"))?;
    }
    // The SDK (with its ABI crate inside it), copied when it changed.
    let sdk = super::snapshot::take(&host.join("plugin-api"))?;
    let copy = root.join("sdk");
    let stamp = copy.join(".speedrun-sdk");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(sdk.sha256.as_str()) {
        if copy.exists() {
            std::fs::remove_dir_all(&copy)?;
        }
        super::snapshot::unpack(&sdk.archive, &copy)?;
        std::fs::write(&stamp, &sdk.sha256)?;
    }
    Ok(())
}

/// A staged crate's path dependencies (other than the SDK, which the
/// snapshot points at this host's) made absolute from where the crate came
/// from, so they still resolve.
fn absolute_path_dependencies(manifest: &Path, origin: &Path) -> Result<()> {
    let text = std::fs::read_to_string(manifest)?;
    let mut toml: toml::Table = toml::from_str(&text)?;
    let mut changed = false;
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        let Some(deps) = toml.get_mut(section).and_then(|d| d.as_table_mut()) else {
            continue;
        };
        for (name, spec) in deps.iter_mut() {
            let Some(path) = spec.get("path").and_then(|p| p.as_str()) else {
                continue;
            };
            if name == "speedrun-plugin-api" || Path::new(path).is_absolute() {
                continue;
            }
            let resolved = origin
                .join(path)
                .canonicalize()
                .with_context(|| format!("dependency {name}: {path} from {}", origin.display()))?;
            if let Some(t) = spec.as_table_mut() {
                t.insert(
                    "path".into(),
                    toml::Value::String(resolved.display().to_string()),
                );
                changed = true;
            }
        }
    }
    if changed {
        std::fs::write(manifest, toml::to_string(&toml)?)?;
    }
    Ok(())
}

/// A build of the crate at `dir` in the shared target directory `target`,
/// holding that directory's build lock until the artifact is pinned. A crate
/// name belongs to the folder that built it last: when another folder's crate
/// of the same name was built there since (a submission named like the
/// record), that crate's outputs are removed first, so cargo rebuilds it from
/// this source instead of handing back the other's library as fresh.
struct BuildSlot {
    /// Held for the build and the pin; the lock goes with the file.
    _lock: std::fs::File,
}

impl BuildSlot {
    fn take(target: &Path, dir: &Path) -> Result<BuildSlot> {
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).with_context(|| {
            format!(
                "{} is not a plugin crate: it has no Cargo.toml",
                dir.display()
            )
        })?;
        let toml: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
        let Some(name) = toml
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
        else {
            bail!("{} names no package", manifest.display());
        };
        let source = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?
            .display()
            .to_string();
        let owners = target.join("owners");
        std::fs::create_dir_all(&owners)?;
        let lock = std::fs::File::create(owners.join(".lock"))?;
        // SAFETY: flock on a file we own; released when `lock` is dropped.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            bail!(
                "locking {}: {}",
                owners.display(),
                std::io::Error::last_os_error()
            );
        }
        let owner = owners.join(name);
        if std::fs::read_to_string(&owner).ok().as_deref() != Some(source.as_str()) {
            remove_outputs(target, &name.replace('-', "_"))?;
            std::fs::write(&owner, &source)?;
        }
        Ok(BuildSlot { _lock: lock })
    }
}

/// Removes every output of crate `stem` under `target` (any profile, any
/// target triple): its libraries and modules, not its dependencies'.
fn remove_outputs(target: &Path, stem: &str) -> Result<()> {
    let mut dirs = vec![target.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                // Profile and triple folders, and deps/; not the build caches.
                if !matches!(
                    name.as_str(),
                    "build" | ".fingerprint" | "incremental" | "owners" | "artifacts"
                ) {
                    dirs.push(p);
                }
            } else if [format!("lib{stem}."), format!("{stem}.")]
                .iter()
                .any(|pre| name.starts_with(pre.as_str()))
            {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    Ok(())
}

/// A content-addressed copy of a built artifact under `artifacts/`: what the
/// caller loads and hashes cannot be overwritten by a later build.
fn pin_artifact(built: &Path) -> Result<PathBuf> {
    let bytes = std::fs::read(built).with_context(|| format!("reading {}", built.display()))?;
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let name = built
        .file_name()
        .context("an artifact without a file name")?
        .to_string_lossy();
    let dir = shared_target_dir().join("artifacts").join(&sha[..16]);
    std::fs::create_dir_all(&dir)?;
    let pinned = dir.join(&*name);
    if !pinned.is_file() {
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &pinned)?;
    }
    Ok(pinned)
}

/// Path remapping, so a library's bytes (and the SHA-256 a maintainer approves)
/// do not depend on where the checkout or the cargo home lies.
fn reproducible_rustflags() -> String {
    let mut flags = format!(
        "--remap-path-prefix={}=/speedrun",
        workspace_root().display()
    );
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(h) = cargo_home {
        flags.push_str(&format!(" --remap-path-prefix={}=/cargo", h.display()));
    }
    // Last, so that it wins where it is inside the checkout: native builds
    // compile the staged copies (`stage`), wherever the target directory is.
    flags.push_str(&format!(
        " --remap-path-prefix={}=/staging",
        shared_target_dir().join("staging").display()
    ));
    flags
}

/// How this machine builds wasm32-unknown-unknown.
#[derive(Debug, Clone, PartialEq)]
pub enum WasmRoute {
    /// rustup's toolchain has the target installed.
    Rustup,
    /// Debian's `rustc-web` + `cargo-web` + `rust-web-src` + `lld`: std is
    /// built from source (`-Zbuild-std`), linked with this `wasm-ld`.
    DebianBuildStd { linker: PathBuf },
}

fn find_in_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Picks the route: rustup's target when installed, else Debian's packages.
pub fn wasm_route() -> Result<WasmRoute> {
    let rustup = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if let Ok(o) = rustup {
        if String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim() == "wasm32-unknown-unknown")
        {
            return Ok(WasmRoute::Rustup);
        }
    }
    let std_src = Path::new("/usr/lib/rustlib/src/rust/library/std");
    let linker = find_in_path(&["wasm-ld", "wasm-ld-19", "wasm-ld-16", "wasm-ld-14"]);
    match linker {
        Some(linker) if std_src.is_dir() && Path::new("/usr/bin/cargo").is_file() => {
            Ok(WasmRoute::DebianBuildStd { linker })
        }
        _ => bail!(
            "no way to build wasm32-unknown-unknown here: install rustup's target \
             (`rustup target add wasm32-unknown-unknown`) or Debian's packages \
             (`apt-get install rustc-web cargo-web rust-web-src lld`)"
        ),
    }
}

/// Where wasm plugin builds go (another toolchain may build them: its own directory).
pub fn wasm_target_dir() -> PathBuf {
    shared_target_dir().with_file_name("plugins-wasm")
}

/// Builds the plugin crate at `dir` to a `.wasm` module (release) and answers its path.
pub fn build_wasm(dir: &Path) -> Result<PathBuf> {
    let route = wasm_route()?;
    let mut cmd = match &route {
        WasmRoute::Rustup => {
            Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        }
        WasmRoute::DebianBuildStd { linker } => {
            let mut c = Command::new("/usr/bin/cargo");
            c.env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", linker)
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("RUSTC_WRAPPER");
            c
        }
    };
    cmd.args([
        "build",
        "--release",
        "--lib",
        "--target",
        "wasm32-unknown-unknown",
    ])
    // No debug info in the module: 15x smaller, and quicker for the host to compile.
    .args([
        "--config",
        "profile.release.debug=false",
        "--config",
        "profile.release.strip=true",
    ])
    .arg("--target-dir")
    .arg(wasm_target_dir());
    let _slot = BuildSlot::take(&wasm_target_dir(), dir)?;
    if matches!(route, WasmRoute::DebianBuildStd { .. }) {
        cmd.arg("-Zbuild-std=std,panic_abort");
    }
    cargo_artifact(dir, cmd, ".wasm")
}

/// Runs a prepared `cargo build` on the crate at `dir` and answers the path of
/// its library artifact ending in `suffix`.
fn cargo_artifact(dir: &Path, mut cmd: Command, suffix: &str) -> Result<PathBuf> {
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
    tracing::info!("building plugin {} ({suffix})", dir.display());
    let out = cmd
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(&manifest)
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
            .find(|f| f.ends_with(suffix))
        {
            return pin_artifact(Path::new(lib));
        }
    }
    bail!(
        "cargo built {} but produced no {suffix} library: set `crate-type = [\"cdylib\"]` under [lib] in its Cargo.toml",
        dir.display()
    )
}

//! The native transport: a `cdylib` exporting the plugin API's `abi_stable` root
//! module. Loaded through `lib_header_from_path(..).init_root_module()`, not
//! `RootModule::load_from_file`, which caches one library per root-module type
//! and so could load only one plugin per process.

use super::session::{host_ffi, Transport};
use anyhow::{anyhow, Context, Result};
use speedrun_plugin_abi::ffi::{FfiResult, PluginModRef};
use speedrun_plugin_abi::{Frame, HookPoint, Manifest, API_VERSION};
use std::path::Path;

/// How many of the loader's last lines to show: its layout-mismatch report runs
/// to hundreds of lines and the verdict is at the end.
const VERDICT_LINES: usize = 12;

pub struct NativeModule {
    module: PluginModRef,
    /// SHA-256 of the bytes loaded (empty for a plugin linked into the host).
    pub sha256: String,
    /// Their size.
    pub bytes: u64,
}

fn ffi<T>(r: FfiResult<T>) -> std::result::Result<T, String> {
    r.into_result().map_err(|e| e.into_string())
}

/// The last lines of a long loader message.
fn verdict(msg: &str) -> String {
    let lines: Vec<&str> = msg.lines().filter(|l| !l.trim().is_empty()).collect();
    // abi_stable's verdict is its last "Error:" block; else the last lines.
    let start = match lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("Error:"))
    {
        Some(i) if lines.len() - i <= VERDICT_LINES => i,
        _ => lines.len().saturating_sub(VERDICT_LINES),
    };
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!(
            "[... {start} lines of abi_stable's report cut ...]\n"
        ));
    }
    out.push_str(&lines[start..].join("\n"));
    out
}

impl NativeModule {
    /// Loads the library at `path` and checks its root module's layout and version
    /// against this host's plugin API. The bytes are read once, hashed, and
    /// loaded from a private copy of their own: what is hashed is what runs, a
    /// file replaced on disk afterwards changes nothing, and every load (each
    /// stack instance: the warm-up copy, the timed run, each seed, each rank)
    /// gets fresh statics, so no `static` carries state between them.
    pub fn load(path: &Path) -> Result<NativeModule> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot load plugin {}: reading it", path.display()))?;
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let copy = private_copy(&bytes, &sha256).with_context(|| {
            format!(
                "cannot load plugin {}: making its private copy",
                path.display()
            )
        })?;
        let loaded = NativeModule::load_file(&copy, path);
        // Loaded (or refused): the mapping needs no name on disk.
        let _ = std::fs::remove_file(&copy);
        let module = loaded?;
        Ok(NativeModule {
            module,
            sha256,
            bytes: bytes.len() as u64,
        })
    }

    fn load_file(copy: &Path, path: &Path) -> Result<PluginModRef> {
        let header = speedrun_plugin_abi::ffi::lib_header_from_path(copy).map_err(|e| {
            anyhow!(
                "cannot load plugin {}: {}",
                path.display(),
                verdict(&e.to_string())
            )
        })?;
        header.init_root_module::<PluginModRef>().map_err(|e| {
            anyhow!(
                "plugin {} was built against an incompatible plugin API and is refused:\n{}",
                path.display(),
                verdict(&e.to_string())
            )
        })
    }

    /// A plugin linked into this process (tests, and built-in plugins).
    pub fn in_process(module: PluginModRef) -> NativeModule {
        NativeModule {
            module,
            sha256: String::new(),
            bytes: 0,
        }
    }

    pub fn manifest(&self) -> Result<Manifest> {
        let json =
            ffi((self.module.manifest())()).map_err(|e| anyhow!("reading its manifest: {e}"))?;
        let m: Manifest = serde_json::from_str(&json).context("parsing its manifest")?;
        check_manifest(&m)?;
        Ok(m)
    }

    /// Builds an instance from its JSON configuration.
    pub fn create(&self, config: &serde_json::Value) -> Result<u64> {
        self.create_from(&config.to_string())
    }

    fn create_from(&self, config: &str) -> Result<u64> {
        ffi((self.module.create())(host_ffi(), config.into())).map_err(|e| anyhow!(e))
    }
}

/// Writes `bytes` to a file of its own for one load.
fn private_copy(bytes: &[u8], sha256: &str) -> Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join("speedrun-plugin-loads");
    std::fs::create_dir_all(&dir)?;
    let p = dir.join(format!(
        "{}-{}-{}.so",
        &sha256[..16],
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&p, bytes)?;
    Ok(p)
}

/// What every transport checks of a manifest: an API version this host
/// accepts, and hooks that exist in it.
pub fn check_manifest(m: &Manifest) -> Result<()> {
    m.check_api(API_VERSION)
        .map_err(|why| anyhow!("plugin {} is refused: {why}", m.name))
}

impl Transport for NativeModule {
    fn call(
        &self,
        instance: u64,
        hook: HookPoint,
        args: Frame,
    ) -> std::result::Result<Frame, String> {
        ffi((self.module.call())(
            instance,
            hook.name().into(),
            args.into(),
        ))
        .map(Frame::from)
    }

    /// A new instance for the call, destroyed after it. (Native code is
    /// reviewed: its statics are not reset here, but each stack loads its own
    /// copy of the library, so none outlives the stack.)
    fn call_pristine(
        &self,
        config: &str,
        hook: HookPoint,
        args: Frame,
    ) -> std::result::Result<Frame, String> {
        let instance = self.create_from(config).map_err(|e| format!("{e:#}"))?;
        let out = self.call(instance, hook, args);
        self.destroy(instance);
        out
    }

    fn destroy(&self, instance: u64) {
        (self.module.destroy())(instance)
    }
}

//! The native transport: an `abi_stable` root module. The host loads it with
//! `abi_stable`'s loader, whose layout check refuses a plugin built against an
//! incompatible API. Every function here catches panics inside the plugin and
//! returns them as errors: a panic crossing `extern "C"` aborts the host.

pub use crate::registry::{manifest_of, Instances};
use crate::{Error, Exported, Frame, HookPoint, Op, Result};
use abi_stable::library::RootModule;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RResult, RString, RVec};
use abi_stable::StableAbi;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

#[doc(hidden)]
pub use abi_stable as __abi;

/// A [`Frame`] in `abi_stable` types.
#[repr(C)]
#[derive(StableAbi, Default, Debug)]
pub struct FrameFfi {
    pub tensors: RVec<u64>,
    pub ints: RVec<i64>,
    pub floats: RVec<f64>,
    pub text: RString,
}

impl From<Frame> for FrameFfi {
    fn from(f: Frame) -> FrameFfi {
        FrameFfi {
            tensors: f.tensors.into(),
            ints: f.ints.into(),
            floats: f.floats.into(),
            text: f.text.into(),
        }
    }
}

impl From<FrameFfi> for Frame {
    fn from(f: FrameFfi) -> Frame {
        Frame {
            tensors: f.tensors.into_vec(),
            ints: f.ints.into_vec(),
            floats: f.floats.into_vec(),
            text: f.text.into_string(),
        }
    }
}

pub type FfiResult<T> = RResult<T, RString>;

/// What the host hands a plugin: the one function every op goes through.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct HostFfi {
    pub call_op: extern "C" fn(op: u32, args: FrameFfi) -> FfiResult<FrameFfi>,
}

/// The root module every native plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The plugin's [`Manifest`] as JSON.
    pub manifest: extern "C" fn() -> FfiResult<RString>,
    /// Builds an instance from a JSON configuration; answers its id.
    pub create: extern "C" fn(host: HostFfi, config: RString) -> FfiResult<u64>,
    /// Calls hook `hook` (dotted name) of instance `instance`.
    pub call: extern "C" fn(instance: u64, hook: RString, args: FrameFfi) -> FfiResult<FrameFfi>,
    #[sabi(last_prefix_field)]
    pub destroy: extern "C" fn(instance: u64),
}

impl RootModule for PluginModRef {
    abi_stable::declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "speedrun_plugin";
    const NAME: &'static str = "speedrun_plugin";
    const VERSION_STRINGS: VersionStrings = abi_stable::package_version_strings!();
}

static HOST: OnceLock<HostFfi> = OnceLock::new();

pub(crate) fn call_host(op: Op, args: Frame) -> Result<Frame> {
    let Some(host) = HOST.get() else {
        return Err(Error::new(format!(
            "op {} called outside a hook: tensor ops only work while the host calls the plugin",
            op.name()
        )));
    };
    match (host.call_op)(op.code(), args.into()) {
        RResult::ROk(f) => Ok(f.into()),
        RResult::RErr(e) => Err(Error::new(e.into_string())),
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}

/// Runs `f`, turning an error or a panic into the FFI error.
fn guarded<R>(f: impl FnOnce() -> Result<R>) -> FfiResult<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(r)) => RResult::ROk(r),
        Ok(Err(e)) => RResult::RErr(e.message().into()),
        Err(p) => RResult::RErr(format!("the plugin panicked: {}", panic_message(p)).into()),
    }
}

extern "C" fn manifest<T: Exported>() -> FfiResult<RString> {
    guarded(|| Ok(serde_json::to_string(&manifest_of::<T>())?.into()))
}

extern "C" fn create<T: Exported>(host: HostFfi, config: RString) -> FfiResult<u64> {
    guarded(|| {
        let _ = HOST.set(host);
        let config: serde_json::Value = serde_json::from_str(&config)?;
        let plugin = T::new(&config).map_err(|e| e.context("configuring the plugin"))?;
        Ok(T::instances().insert(plugin))
    })
}

extern "C" fn call<T: Exported>(
    instance: u64,
    hook: RString,
    args: FrameFfi,
) -> FfiResult<FrameFfi> {
    guarded(|| {
        let Some(point) = HookPoint::from_name(&hook) else {
            return Err(Error::new(format!("unknown hook {hook}")));
        };
        let args: Frame = args.into();
        T::instances()
            .with(instance, |p| p.dispatch(point, &args))
            .map(FrameFfi::from)
    })
}

extern "C" fn destroy<T: Exported>(instance: u64) {
    let _ = catch_unwind(|| T::instances().remove(instance));
}

/// The root module of plugin type `T` (what [`crate::export_plugin!`] exports;
/// the host also uses it to run a plugin linked into its own process, in tests).
pub fn module<T: Exported>() -> PluginModRef {
    PluginMod {
        manifest: manifest::<T>,
        create: create::<T>,
        call: call::<T>,
        destroy: destroy::<T>,
    }
    .leak_into_prefix()
}

#[cfg(test)]
mod tests {
    #[test]
    fn export_symbol_is_abi_stables() {
        // `export_plugin!` spells the loader symbol out; it must be the one the loader looks up.
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}

//! The native transport, plugin side: the root module's functions for a plugin
//! type. Every function here catches panics inside the plugin and returns them
//! as errors: a panic crossing `extern "C"` aborts the host.

use crate::{Error, Exported, Frame, HookPoint, Op, Result};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RResult, RString};
pub use speedrun_plugin_abi::ffi::{FfiResult, FrameFfi, HostFfi, PluginMod, PluginModRef};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

/// What `export_plugin!` names `abi_stable` by, so a plugin needs no direct dependency.
pub use abi_stable as __abi;

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
    guarded(|| Ok(serde_json::to_string(&crate::registry::manifest_of::<T>())?.into()))
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

//! The native transport's binary interface: an `abi_stable` root module. The
//! host loads it with `abi_stable`'s loader, whose layout and version checks
//! refuse a library built against an incompatible interface (this crate's
//! version: the interface changes only when a layout here does).

use crate::Frame;
use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RResult, RString, RVec};
use abi_stable::StableAbi;

/// The loader the host opens a plugin's library with (see the host's `plugins::native`).
pub use abi_stable::library::lib_header_from_path;

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
    /// The plugin's [`crate::Manifest`] as JSON.
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
    // This crate's version: API 1.0 plugins were built with 0.1.0 here.
    const VERSION_STRINGS: VersionStrings = abi_stable::package_version_strings!();
}

#[cfg(test)]
mod tests {
    #[test]
    fn export_symbol_is_abi_stables() {
        // The SDK's `export_plugin!` spells the loader symbol out; it must be the one the loader looks up.
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}

//! The export macros: one line turns a plugin type into a loadable plugin.

/// Implements [`crate::Exported`] for a plugin type: its name, version and the
/// hook families it provides (`schedule`, `optimizer`, `params`, `init`,
/// `embed`, `norm`, `attention`, `mlp`, `block`, `head`, `forward`; since 1.1
/// `block_input`, `qkv`, `logits`). Each family requires the matching trait. [`export_plugin!`] calls this; use it directly
/// only to link a plugin into the host's own process (tests), where
/// `name: "..."` sets the name the crate's would otherwise give.
#[doc(hidden)]
#[macro_export]
macro_rules! impl_plugin {
    ($ty:ty, hooks: [$($family:ident),* $(,)?]) => {
        $crate::impl_plugin!($ty, name: env!("CARGO_PKG_NAME"), hooks: [$($family),*]);
    };
    ($ty:ty, name: $name:expr, hooks: [$($family:ident),* $(,)?]) => {
        impl $crate::Exported for $ty {
            const NAME: &'static str = $name;
            const VERSION: &'static str = env!("CARGO_PKG_VERSION");
            const DESCRIPTION: &'static str = env!("CARGO_PKG_DESCRIPTION");

            fn hooks() -> ::std::vec::Vec<$crate::HookPoint> {
                let mut out = ::std::vec::Vec::new();
                $( out.extend_from_slice($crate::dispatch::family_points(stringify!($family))); )*
                out
            }

            fn instances() -> &'static $crate::registry::Instances<Self> {
                static INSTANCES: $crate::registry::Instances<$ty> = $crate::registry::Instances::new();
                &INSTANCES
            }

            fn dispatch(&mut self, hook: $crate::HookPoint, args: &$crate::Frame) -> $crate::Result<$crate::Frame> {
                $( if let Some(answer) = $crate::dispatch::$family(self, hook, args) { return answer; } )*
                Err($crate::Error::new(format!("this plugin does not provide hook {}", hook)))
            }
        }
    };
}

/// Exports a plugin type: `export_plugin!(MyOptimizer, hooks: [optimizer]);`.
/// Natively this is an `abi_stable` root module; on `wasm32` it is the wasm
/// transport's exports (`speedrun_*`). Build the crate as a `cdylib` either way.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty, hooks: [$($family:ident),* $(,)?]) => {
        $crate::impl_plugin!($ty, hooks: [$($family),*]);

        // What `#[abi_stable::export_root_module]` expands to, spelled with this
        // crate's re-export so a plugin needs no direct `abi_stable` dependency.
        #[cfg(not(target_arch = "wasm32"))]
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::native::__abi::library::LibHeader = {
            extern "C" fn __speedrun_root_module() -> $crate::native::__abi::library::RootModuleResult {
                $crate::native::__abi::library::__call_root_module_loader(
                    $crate::native::module::<$ty>,
                )
            }
            unsafe {
                $crate::native::__abi::library::LibHeader::from_constructor::<$crate::native::PluginModRef>(
                    __speedrun_root_module,
                    $crate::native::__abi::library::CheckTypeLayout::Yes,
                )
            }
        };

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[no_mangle]
            pub extern "C" fn speedrun_alloc(len: u32) -> u32 {
                $crate::wasm::alloc(len)
            }
            #[no_mangle]
            pub extern "C" fn speedrun_free(ptr: u32, len: u32) {
                $crate::wasm::free(ptr, len)
            }
            #[no_mangle]
            pub extern "C" fn speedrun_manifest() -> i64 {
                $crate::wasm::manifest::<$ty>()
            }
            #[no_mangle]
            pub extern "C" fn speedrun_panic_message() -> i64 {
                $crate::wasm::panic_message()
            }
            #[no_mangle]
            pub extern "C" fn speedrun_create(ptr: u32, len: u32) -> i64 {
                $crate::wasm::create::<$ty>(ptr, len)
            }
            #[no_mangle]
            pub extern "C" fn speedrun_call(instance: u64, hook_ptr: u32, hook_len: u32, args_ptr: u32, args_len: u32) -> i64 {
                $crate::wasm::call::<$ty>(instance, hook_ptr, hook_len, args_ptr, args_len)
            }
            #[no_mangle]
            pub extern "C" fn speedrun_destroy(instance: u64) {
                $crate::wasm::destroy::<$ty>(instance)
            }
        };
    };
}

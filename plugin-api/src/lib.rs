//! The surface plugin authors depend on, and the only one.
//!
//! A plugin implements one trait per hook point it replaces ([`Optimizer`],
//! [`Schedule`], [`Mlp`], ...; each trait's doc is its contract, with an
//! example), computes with [`Tensor`] handles whose every method is a host op,
//! and exports itself with [`export_plugin!`]. Tensors stay in the host: a
//! plugin never sees data, the clock, the validation set or device memory. The
//! same source builds as a native `cdylib` or, with the wasm transport, as a
//! WebAssembly module.
//!
//! ```
//! use speedrun_plugin_api::*;
//!
//! /// Half the track's learning rate, every step.
//! struct Half;
//! impl Plugin for Half {
//!     fn new(_: &serde_json::Value) -> Result<Self> {
//!         Ok(Half)
//!     }
//! }
//! impl Schedule for Half {
//!     fn at(&mut self, _step: usize, _total: usize) -> Result<ScheduleOut> {
//!         Ok(ScheduleOut::new(0.5, 1.0))
//!     }
//! }
//! export_plugin!(Half, hooks: [schedule]);
//! # assert_eq!(Half.at(3, 10).unwrap().lr_mult, 0.5);
//! ```
//!
//! # Versions
//!
//! This crate's major.minor is the plugin API version ([`API_VERSION`]), which
//! every plugin's manifest carries. Minor versions only add (hooks, ops,
//! helpers), so a host speaking 1.1 runs plugins built for 1.0 and 1.1, and
//! refuses 1.2 and 2.x with a message saying which to rebuild against.
//! `CHANGELOG.md` says what each version added; `docs/plugins.md` has the table
//! of which speedrun accepts which.

#[doc(hidden)]
pub mod dispatch;
mod export;
mod link;
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod native;
#[doc(hidden)]
pub mod registry;
mod tensor;
mod traits;
mod types;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod wasm;

pub use serde_json;
pub use speedrun_plugin_abi::{bail, ApiVersion, DType, Error, Result, API_VERSION};
pub use tensor::{AdamwConfig, AdamwStep, Tensor};
pub use traits::*;
pub use types::*;

/// What the export macro and the transports use; not part of the author API.
#[doc(hidden)]
pub use speedrun_plugin_abi::{Frame, HookPoint, Manifest, Op};

/// What [`export_plugin!`] implements for a plugin type; not written by hand.
#[doc(hidden)]
pub trait Exported: Plugin {
    const NAME: &'static str;
    const VERSION: &'static str;
    const DESCRIPTION: &'static str;
    fn hooks() -> Vec<HookPoint>;
    fn instances() -> &'static registry::Instances<Self>;
    fn dispatch(&mut self, hook: HookPoint, args: &Frame) -> Result<Frame>;
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_crate_version_is_the_api_version() {
        // Bumping one without the other would make manifests lie.
        let v = env!("CARGO_PKG_VERSION");
        let want = format!("{}.{}.", super::API_VERSION.major, super::API_VERSION.minor);
        assert!(
            v.starts_with(&want),
            "crate {v}, API {}",
            super::API_VERSION
        );
    }
}

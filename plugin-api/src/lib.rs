//! The surface plugin authors depend on, and the only one.
//!
//! A plugin implements one trait per hook point it replaces ([`Optimizer`],
//! [`Schedule`], [`Mlp`], ...; each trait's doc is its contract), computes with
//! [`Tensor`] handles whose every method is a host op, and exports itself with
//! [`export_plugin!`]. Tensors stay in the host: a plugin never sees data, the
//! clock, the validation set or device memory. The same source builds as a native
//! `cdylib` (an `abi_stable` root module) or, with the wasm transport, as a
//! WebAssembly module.
//!
//! ```ignore
//! use speedrun_plugin_api::*;
//! struct Half;
//! impl Plugin for Half {
//!     fn new(_: &serde_json::Value) -> Result<Self> { Ok(Half) }
//! }
//! impl Schedule for Half {
//!     fn at(&mut self, _: usize, _: usize) -> Result<ScheduleOut> {
//!         Ok(ScheduleOut::new(0.5, 1.0))
//!     }
//! }
//! export_plugin!(Half, hooks: [schedule]);
//! ```

pub mod dispatch;
mod error;
mod export;
mod frame;
mod hooks;
mod link;
mod manifest;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
mod ops;
#[doc(hidden)]
pub mod registry;
mod tensor;
mod traits;
mod types;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod wasm;
pub mod wire;

pub use error::{Error, Result};
pub use frame::{DType, Frame};
pub use hooks::HookPoint;
pub use manifest::Manifest;
pub use ops::{Op, OpClass};
pub use serde_json;
pub use tensor::{AdamwConfig, AdamwStep, Tensor};
pub use traits::*;
pub use types::*;

/// Version of the plugin API: the hooks, the ops and their frame layouts. A
/// plugin built against another version is refused at load.
pub const PLUGIN_API_VERSION: u32 = 1;

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

//! The plugin boundary as bytes, shared by the host and the SDK and seen by
//! neither a plugin's author nor its docs: the [`Frame`] every call crosses in,
//! each hook's argument layout ([`wire`]), the op codes ([`Op`]), the hook
//! names ([`HookPoint`]), the manifest with its [`ApiVersion`], and the native
//! FFI ([`ffi`]). The plain data types hooks exchange ([`ModelShape`],
//! [`ParamDecl`], [`NormSite`], [`ScheduleOut`]) live here too, so the host and
//! the SDK share one name for each; the SDK re-exports them to authors.

mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod ffi;
mod frame;
mod hooks;
mod manifest;
mod ops;
mod types;
pub mod wire;

pub use error::{Error, Result};
pub use frame::{DType, Frame};
pub use hooks::HookPoint;
pub use manifest::{ApiVersion, Manifest, API_VERSION};
pub use ops::{Op, OpClass};
pub use types::*;

//! How the SDK reaches the host from inside a plugin: one call per op, over the
//! transport the plugin was built for.

use crate::{Frame, Op, Result};

pub(crate) fn call(op: Op, args: Frame) -> Result<Frame> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::native::call_host(op, args)
    }
    #[cfg(target_arch = "wasm32")]
    {
        crate::wasm::call_host(op, args)
    }
}

//! The wasm transport, plugin side. The module's only imports are the host's
//! two functions below; no WASI, no clock, no files. Byte buffers cross as
//! (pointer, length) into the module's memory: the host writes arguments into
//! buffers it gets from `speedrun_alloc`, and reads results from buffers the
//! exports hand back, packed into an i64 (see [`pack`]).

use crate::{Error, Exported, Frame, HookPoint, Op, Result};
use std::sync::Mutex;

#[link(wasm_import_module = "speedrun")]
extern "C" {
    /// Runs op `op` on the frame at (ptr, len). Answers the reply's length
    /// (>= 0) or, on error, -(length of the message) - 1; either is then copied
    /// into the module by `take_reply`.
    fn call_op(op: u32, ptr: u32, len: u32) -> i64;
    /// Copies the pending reply (or error message) to `ptr`.
    fn take_reply(ptr: u32);
}

pub(crate) fn call_host(op: Op, args: Frame) -> Result<Frame> {
    let bytes = args.to_bytes();
    // SAFETY: the host reads `len` bytes at `ptr` from this module's memory.
    let r = unsafe { call_op(op.code(), bytes.as_ptr() as u32, bytes.len() as u32) };
    let len = if r >= 0 { r } else { -r - 1 } as usize;
    let mut reply = vec![0u8; len];
    // SAFETY: the host writes exactly `len` bytes at this buffer.
    unsafe { take_reply(reply.as_mut_ptr() as u32) };
    if r >= 0 {
        Frame::from_bytes(&reply)
    } else {
        Err(Error::new(String::from_utf8_lossy(&reply).into_owned()))
    }
}

/// A buffer handed to the host: ok → `ptr << 32 | len`, error → `-(that) - 1`.
pub fn pack(result: Result<Vec<u8>>) -> i64 {
    let (ok, bytes) = match result {
        Ok(b) => (true, b),
        Err(e) => (false, e.message().as_bytes().to_vec()),
    };
    let b = bytes.into_boxed_slice();
    let len = b.len() as i64;
    let ptr = Box::into_raw(b) as *mut u8 as i64;
    let packed = (ptr << 32) | len;
    if ok {
        packed
    } else {
        -packed - 1
    }
}

pub fn alloc(len: u32) -> u32 {
    let b = vec![0u8; len as usize].into_boxed_slice();
    Box::into_raw(b) as *mut u8 as u32
}

/// Frees a buffer from `alloc` or `pack`.
pub fn free(ptr: u32, len: u32) {
    if ptr != 0 {
        // SAFETY: (ptr, len) came from `alloc` or `pack`, as a boxed slice.
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                ptr as *mut u8,
                len as usize,
            ))
        });
    }
}

fn read(ptr: u32, len: u32) -> Vec<u8> {
    // SAFETY: the host wrote `len` bytes at `ptr`, in a buffer from `alloc`.
    unsafe { std::slice::from_raw_parts(ptr as *const u8, len as usize) }.to_vec()
}

static PANIC: Mutex<String> = Mutex::new(String::new());

/// Keeps the panic message: on wasm a panic aborts (a trap), and the host asks
/// for the message afterwards.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = match (
            info.payload().downcast_ref::<&str>(),
            info.payload().downcast_ref::<String>(),
        ) {
            (Some(s), _) => s.to_string(),
            (_, Some(s)) => s.clone(),
            _ => "a panic with a non-text payload".to_string(),
        };
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        *PANIC.lock().unwrap_or_else(|e| e.into_inner()) = format!("{msg}{at}");
    }));
}

pub fn panic_message() -> i64 {
    pack(Ok(PANIC
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_bytes()
        .to_vec()))
}

pub fn manifest<T: Exported>() -> i64 {
    pack(serde_json::to_vec(&crate::registry::manifest_of::<T>()).map_err(Error::from))
}

pub fn create<T: Exported>(ptr: u32, len: u32) -> i64 {
    install_panic_hook();
    pack((|| {
        let config: serde_json::Value = serde_json::from_slice(&read(ptr, len))?;
        let plugin = T::new(&config).map_err(|e| e.context("configuring the plugin"))?;
        Ok(T::instances().insert(plugin).to_le_bytes().to_vec())
    })())
}

pub fn call<T: Exported>(
    instance: u64,
    hook_ptr: u32,
    hook_len: u32,
    args_ptr: u32,
    args_len: u32,
) -> i64 {
    pack((|| {
        let hook = String::from_utf8_lossy(&read(hook_ptr, hook_len)).into_owned();
        let Some(point) = HookPoint::from_name(&hook) else {
            return Err(Error::new(format!("unknown hook {hook}")));
        };
        let args = Frame::from_bytes(&read(args_ptr, args_len))?;
        T::instances()
            .with(instance, |p| p.dispatch(point, &args))
            .map(|f| f.to_bytes())
    })())
}

pub fn destroy<T: Exported>(instance: u64) {
    T::instances().remove(instance)
}

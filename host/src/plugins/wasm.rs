//! The wasm transport: a plugin as a WebAssembly module run under wasmtime. Its
//! only imports are the host's `call_op` and `take_reply`; every hook call runs
//! under a fuel deadline, a linear-memory cap, and the session's caps on live
//! handles and tensor bytes. A trap, an exhausted deadline or a refused memory
//! growth is an error naming what happened; the host keeps running.

use super::session::{dispatch_op, Transport};
use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use speedrun_plugin_abi::{Frame, HookPoint, Manifest};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use wasmtime::{
    Caller, Engine, Extern, Instance, InstancePre, Linker, Memory, Module, Store, StoreLimits,
    StoreLimitsBuilder, Trap, TypedFunc,
};

/// What one wasm plugin may use. Defaults suit the shipped tracks; the
/// maintainers' policy sets them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct WasmLimits {
    /// Wasm instructions one hook call may execute (fuel).
    pub fuel_per_call: u64,
    /// Cap on the module's linear memory.
    pub memory_bytes: usize,
    /// Cap on the tensor handles the plugin holds at once.
    pub max_live_handles: usize,
    /// Cap on the bytes of the tensors those handles name.
    pub max_tensor_bytes: usize,
    /// Cap on the module file's size: what a plugin can bring in as data.
    pub max_module_bytes: usize,
}

impl Default for WasmLimits {
    fn default() -> WasmLimits {
        WasmLimits {
            fuel_per_call: 2_000_000_000,
            memory_bytes: 256 << 20,
            max_live_handles: 1 << 16,
            max_tensor_bytes: 8 << 30,
            max_module_bytes: 1 << 20,
        }
    }
}

/// The only imports a plugin module may have: (module, name).
const OFFERED: [(&str, &str); 2] = [("speedrun", "call_op"), ("speedrun", "take_reply")];

/// wasmtime's error as ours.
fn wt(e: wasmtime::Error) -> anyhow::Error {
    anyhow!("{e:#}")
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        // Fuel, not epochs: a deadline in instructions is the same on every machine.
        config.consume_fuel(true);
        Engine::new(&config).expect("wasmtime engine with fuel")
    })
}

/// Compiles a module, or takes it from the in-process cache by content hash.
/// (No disk cache: deserialising machine code from a file is only as safe as
/// that file.)
fn compile(bytes: &[u8]) -> Result<(Module, String)> {
    static CACHE: OnceLock<Mutex<HashMap<String, Module>>> = OnceLock::new();
    let sha = hex::encode(Sha256::digest(bytes));
    let cache = CACHE.get_or_init(Default::default);
    if let Some(m) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&sha) {
        return Ok((m.clone(), sha));
    }
    let module =
        Module::new(engine(), bytes).map_err(|e| anyhow!("not a valid wasm module: {e:#}"))?;
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(sha.clone(), module.clone());
    Ok((module, sha))
}

struct WasmState {
    limits: StoreLimits,
    /// The reply (or error message) of the last `call_op`, for `take_reply`.
    pending: Vec<u8>,
    /// The last op that failed during the current hook call.
    last_op_error: Option<String>,
}

fn memory(caller: &mut Caller<'_, WasmState>) -> std::result::Result<Memory, String> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err("the module exports no memory".into()),
    }
}

/// `call_op(op, ptr, len) -> i64`: the frame at (ptr, len) through the host's op
/// dispatch; the reply waits in `pending` for `take_reply`.
fn call_op(mut caller: Caller<'_, WasmState>, op: u32, ptr: u32, len: u32) -> i64 {
    let result = (|| {
        let mem = memory(&mut caller)?;
        let end = ptr as usize + len as usize;
        if end > mem.data_size(&caller) {
            return Err(format!(
                "op frame at {ptr}..{end} lies outside the module's memory"
            ));
        }
        let mut buf = vec![0u8; len as usize];
        mem.read(&caller, ptr as usize, &mut buf)
            .map_err(|e| e.to_string())?;
        let frame = Frame::from_bytes(&buf).map_err(|e| e.to_string())?;
        dispatch_op(op, frame)
    })();
    let state = caller.data_mut();
    match result {
        Ok(f) => {
            state.pending = f.to_bytes();
            state.pending.len() as i64
        }
        Err(e) => {
            state.last_op_error = Some(e.clone());
            state.pending = e.into_bytes();
            -(state.pending.len() as i64) - 1
        }
    }
}

fn take_reply(mut caller: Caller<'_, WasmState>, ptr: u32) -> wasmtime::Result<()> {
    let mem = memory(&mut caller).map_err(wasmtime::Error::msg)?;
    let pending = std::mem::take(&mut caller.data_mut().pending);
    mem.write(&mut caller, ptr as usize, &pending).map_err(|_| {
        wasmtime::Error::msg("take_reply: the buffer lies outside the module's memory")
    })
}

struct Exports {
    alloc: TypedFunc<u32, u32>,
    free: TypedFunc<(u32, u32), ()>,
    manifest: TypedFunc<(), i64>,
    panic_message: Option<TypedFunc<(), i64>>,
    create: TypedFunc<(u32, u32), i64>,
    call: TypedFunc<(u64, u32, u32, u32, u32), i64>,
    destroy: TypedFunc<u64, ()>,
}

/// One instantiation of the module: its store (memory, globals, tables), its
/// exports and its memory.
struct Live {
    store: Store<WasmState>,
    exports: Exports,
    memory: Memory,
    limits: WasmLimits,
}

pub struct WasmModule {
    /// The instance that serves the stateful hooks (optimizer, schedule).
    main: RefCell<Live>,
    /// Linked and ready to instantiate again: every forward-hook call gets a
    /// fresh instance of its own (`Transport::call_pristine`).
    pre: InstancePre<WasmState>,
    limits: WasmLimits,
    pub sha256: String,
    /// The module's size in bytes, for the verdict.
    pub bytes: usize,
}

fn unpack(packed: i64) -> (bool, u32, u32) {
    let (ok, p) = if packed >= 0 {
        (true, packed)
    } else {
        (false, -(packed + 1))
    };
    (ok, (p >> 32) as u32, (p & 0xffff_ffff) as u32)
}

fn instantiate(pre: &InstancePre<WasmState>, limits: WasmLimits) -> Result<Live> {
    let mut store = Store::new(
        engine(),
        WasmState {
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .instances(1)
                .memories(1)
                .tables(4)
                .table_elements(1 << 16)
                .trap_on_grow_failure(true)
                .build(),
            pending: Vec::new(),
            last_op_error: None,
        },
    );
    store.limiter(|s| &mut s.limits);
    store.set_fuel(limits.fuel_per_call).map_err(wt)?;
    let instance: Instance = pre
        .instantiate(&mut store)
        .map_err(|e| anyhow!("instantiating: {e:#}"))?;
    fn get<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        store: &mut Store<WasmState>,
        instance: &Instance,
        name: &str,
    ) -> Result<TypedFunc<P, R>> {
        instance.get_typed_func::<P, R>(&mut *store, name).map_err(|e| {
            anyhow!("the module lacks export {name} of the right type ({e}); is it built with export_plugin!?")
        })
    }
    let exports = Exports {
        alloc: get(&mut store, &instance, "speedrun_alloc")?,
        free: get(&mut store, &instance, "speedrun_free")?,
        manifest: get(&mut store, &instance, "speedrun_manifest")?,
        panic_message: get(&mut store, &instance, "speedrun_panic_message").ok(),
        create: get(&mut store, &instance, "speedrun_create")?,
        call: get(&mut store, &instance, "speedrun_call")?,
        destroy: get(&mut store, &instance, "speedrun_destroy")?,
    };
    let memory = instance
        .get_memory(&mut store, "memory")
        .context("the module exports no memory")?;
    Ok(Live {
        store,
        exports,
        memory,
        limits,
    })
}

impl WasmModule {
    /// Loads a plugin module: validates it, refuses imports the host does not
    /// offer, and instantiates it under `limits`.
    pub fn load(path: &Path, limits: WasmLimits) -> Result<WasmModule> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        WasmModule::from_bytes(&bytes, limits)
            .with_context(|| format!("wasm plugin {}", path.display()))
    }

    pub fn from_bytes(bytes: &[u8], limits: WasmLimits) -> Result<WasmModule> {
        // What a module brings in is bounded before anything of it runs: its
        // data segments could otherwise carry a whole checkpoint.
        if bytes.len() > limits.max_module_bytes {
            return Err(crate::verify::Violation::new(
                crate::verify::Check::PluginInputs,
                format!(
                    "the module is {} bytes, over the policy's cap of {} bytes (wasm.max_module_bytes)",
                    bytes.len(),
                    limits.max_module_bytes
                ),
            )
            .into());
        }
        let (module, sha256) = compile(bytes)?;
        for import in module.imports() {
            if !OFFERED.contains(&(import.module(), import.name())) {
                bail!(
                    "the module imports {}::{}, which the host does not offer (a plugin may import only speedrun::call_op and speedrun::take_reply: no WASI, no clock, no files)",
                    import.module(),
                    import.name()
                );
            }
        }
        let mut linker = Linker::new(engine());
        linker
            .func_wrap("speedrun", "call_op", call_op)
            .map_err(wt)?;
        linker
            .func_wrap("speedrun", "take_reply", take_reply)
            .map_err(wt)?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| anyhow!("linking: {e:#}"))?;
        let main = instantiate(&pre, limits)?;
        Ok(WasmModule {
            main: RefCell::new(main),
            pre,
            limits,
            sha256,
            bytes: bytes.len(),
        })
    }

    pub fn limits(&self) -> WasmLimits {
        self.limits
    }

    fn run<R>(
        &self,
        f: impl FnOnce(&mut Live) -> std::result::Result<i64, String>,
        read: impl FnOnce(Vec<u8>) -> std::result::Result<R, String>,
    ) -> std::result::Result<R, String> {
        let mut live = self
            .main
            .try_borrow_mut()
            .map_err(|_| "the wasm plugin was re-entered".to_string())?;
        live.run(f, read)
    }

    pub fn manifest(&self) -> Result<Manifest> {
        let m: Manifest = self
            .run(
                |live| {
                    let r = live.exports.manifest.call(&mut live.store, ());
                    r.map_err(|e| live.explain(e))
                },
                |b| serde_json::from_slice(&b).map_err(|e| e.to_string()),
            )
            .map_err(|e| anyhow!("reading its manifest: {e}"))?;
        super::native::check_manifest(&m)?;
        Ok(m)
    }

    pub fn create(&self, config: &serde_json::Value) -> Result<u64> {
        self.main
            .try_borrow_mut()
            .map_err(|_| anyhow!("the wasm plugin was re-entered"))?
            .create(&config.to_string())
            .map_err(|e| anyhow!(e))
    }
}

impl Live {
    /// Why a call failed, in words: the trap, the deadline, the panic message.
    fn explain(&mut self, e: wasmtime::Error) -> String {
        let mut msg = match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => format!(
                "exceeded its deadline of {} wasm instructions in one hook call",
                self.limits.fuel_per_call
            ),
            Some(Trap::StackOverflow) => {
                "exhausted its call stack (unbounded recursion?)".to_string()
            }
            // Rust's wasm stack lives in linear memory and grows down past 0.
            Some(Trap::MemoryOutOfBounds) => {
                "trapped: out of bounds memory access; a Rust plugin's stack overflow ends this way (its stack lives in linear memory): unbounded recursion, or a large value on the stack?".to_string()
            }
            Some(Trap::UnreachableCodeReached) => {
                let panic = self.panic_message().filter(|m| !m.is_empty());
                match panic {
                    Some(p) => format!("the plugin panicked: {p}"),
                    None => "trapped: wasm `unreachable` executed".to_string(),
                }
            }
            Some(t) => format!("trapped: {t}"),
            None => format!("trapped: {e:#}"),
        };
        if let Some(op) = self.store.data_mut().last_op_error.take() {
            msg.push_str(&format!(" (its last failed op: {op})"));
        }
        msg
    }

    fn panic_message(&mut self) -> Option<String> {
        let f = self.exports.panic_message.clone()?;
        self.store.set_fuel(1_000_000).ok()?;
        let packed = f.call(&mut self.store, ()).ok()?;
        self.take(packed)
            .ok()
            .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
    }

    /// Copies bytes into a fresh buffer in the module's memory.
    fn put(&mut self, bytes: &[u8]) -> std::result::Result<(u32, u32), String> {
        let len = u32::try_from(bytes.len()).map_err(|_| "argument too large".to_string())?;
        let r = self.exports.alloc.call(&mut self.store, len);
        let ptr = r.map_err(|e| self.explain(e))?;
        self.memory
            .write(&mut self.store, ptr as usize, bytes)
            .map_err(|_| {
                format!("speedrun_alloc({len}) answered a buffer outside the module's memory")
            })?;
        Ok((ptr, len))
    }

    /// Reads (and frees) a result buffer the module handed back.
    fn take(&mut self, packed: i64) -> std::result::Result<(bool, Vec<u8>), String> {
        let (ok, ptr, len) = unpack(packed);
        let end = ptr as usize + len as usize;
        if end > self.memory.data_size(&self.store) {
            return Err(format!(
                "the module answered a result at {ptr}..{end}, outside its memory"
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.memory
            .read(&self.store, ptr as usize, &mut buf)
            .map_err(|e| e.to_string())?;
        let _ = self.exports.free.call(&mut self.store, (ptr, len));
        Ok((ok, buf))
    }

    /// Runs `f` with a fresh deadline; a module error comes back as its text.
    fn run<R>(
        &mut self,
        f: impl FnOnce(&mut Live) -> std::result::Result<i64, String>,
        read: impl FnOnce(Vec<u8>) -> std::result::Result<R, String>,
    ) -> std::result::Result<R, String> {
        self.store
            .set_fuel(self.limits.fuel_per_call)
            .map_err(|e| e.to_string())?;
        self.store.data_mut().last_op_error = None;
        let packed = f(self)?;
        let (ok, bytes) = self.take(packed)?;
        if ok {
            read(bytes)
        } else {
            Err(String::from_utf8_lossy(&bytes).into_owned())
        }
    }

    fn create(&mut self, cfg: &str) -> std::result::Result<u64, String> {
        self.run(
            |live| {
                let (p, l) = live.put(cfg.as_bytes())?;
                let r = live.exports.create.call(&mut live.store, (p, l));
                let r = r.map_err(|e| live.explain(e));
                let _ = live.exports.free.call(&mut live.store, (p, l));
                r
            },
            |b| {
                let id: [u8; 8] = b
                    .try_into()
                    .map_err(|_| "create answered no instance id".to_string())?;
                Ok(u64::from_le_bytes(id))
            },
        )
    }

    fn call(
        &mut self,
        instance: u64,
        hook: HookPoint,
        args: Frame,
    ) -> std::result::Result<Frame, String> {
        let args = args.to_bytes();
        self.run(
            |live| {
                let (hp, hl) = live.put(hook.name().as_bytes())?;
                let (ap, al) = live.put(&args)?;
                let r = live
                    .exports
                    .call
                    .call(&mut live.store, (instance, hp, hl, ap, al));
                let r = r.map_err(|e| live.explain(e));
                if r.is_ok() {
                    let _ = live.exports.free.call(&mut live.store, (hp, hl));
                    let _ = live.exports.free.call(&mut live.store, (ap, al));
                }
                r
            },
            |b| Frame::from_bytes(&b).map_err(|e| e.to_string()),
        )
    }
}

impl Transport for WasmModule {
    fn call(
        &self,
        instance: u64,
        hook: HookPoint,
        args: Frame,
    ) -> std::result::Result<Frame, String> {
        self.main
            .try_borrow_mut()
            .map_err(|_| "the wasm plugin was re-entered".to_string())?
            .call(instance, hook, args)
    }

    /// A fresh instance from the compiled module, created from `config`, called
    /// once and dropped: memory, globals and tables as after initialisation, so
    /// nothing can be counted, memorised or replayed between calls.
    fn call_pristine(
        &self,
        config: &str,
        hook: HookPoint,
        args: Frame,
    ) -> std::result::Result<Frame, String> {
        let mut live = instantiate(&self.pre, self.limits).map_err(|e| format!("{e:#}"))?;
        let instance = live.create(config)?;
        live.call(instance, hook, args)
    }

    fn destroy(&self, instance: u64) {
        if let Ok(mut live) = self.main.try_borrow_mut() {
            let _ = live.store.set_fuel(self.limits.fuel_per_call);
            let Live { store, exports, .. } = &mut *live;
            let _ = exports.destroy.call(store, instance);
        }
    }
}

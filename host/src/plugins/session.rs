//! One loaded plugin instance during a run: its transport, its handle table, its
//! seeded generator and its per-hook accounting. `PluginSession::call` is the
//! only way the host calls into a plugin; while it runs, the plugin's op calls
//! reach `host_call_op` through a thread-local pointer to the call's context.

use super::call_tape::CallTape;
use super::handles::HandleTable;
use super::host_ops::{self, OpEnv};
use crate::device::clock::Span;
use crate::device::memory::MemoryMeter;
use crate::model::params::ParamStore;
use crate::verify::{Check, Violation};
use anyhow::{anyhow, Result};
use candle_core::Device;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use speedrun_kernels::Precision;
use speedrun_plugin_abi::ffi::{FfiResult, FrameFfi, HostFfi};
use speedrun_plugin_abi::{Frame, HookPoint, Manifest, Op};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// How the host reaches a plugin instance (a native library, or a wasm module).
pub trait Transport {
    /// Calls one hook on the stateful instance; an `Err` is the plugin's error
    /// text (a panic included).
    fn call(
        &self,
        instance: u64,
        hook: HookPoint,
        args: Frame,
    ) -> std::result::Result<Frame, String>;
    /// Calls one hook on an instance in its post-initialisation state, made
    /// from `config` for this call alone: the model hooks are pure by
    /// construction, so nothing is counted, memorised or replayed between them.
    fn call_pristine(
        &self,
        config: &str,
        hook: HookPoint,
        args: Frame,
    ) -> std::result::Result<Frame, String>;
    fn destroy(&self, instance: u64);
}

/// The model hooks run pristine; optimizer and schedule keep their instance.
pub fn is_pristine(hook: HookPoint) -> bool {
    !matches!(
        hook,
        HookPoint::Schedule | HookPoint::OptimizerInit | HookPoint::OptimizerStep
    )
}

/// What a plugin may bring in through its ops (the policy's `[inputs]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputBudget {
    pub max_ops_per_call: u64,
    pub max_literal_elements: u64,
}

impl Default for InputBudget {
    fn default() -> InputBudget {
        let d = speedrun_sandbox_policy::InputLimits::default();
        InputBudget {
            max_ops_per_call: d.max_ops_per_call,
            max_literal_elements: d.max_literal_elements,
        }
    }
}

/// What a plugin brought in over a run, for the `plugin_inputs` check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct InputUse {
    /// Elements created from the plugin's own constants (`from_values`, `full`).
    pub literal_elements: u64,
    /// The most ops one hook call made.
    pub max_ops_in_a_call: u64,
    /// Ops over all calls.
    pub ops: u64,
    /// Hook calls.
    pub calls: u64,
}

/// Time, calls and ops inside one hook of one plugin.
#[derive(Default)]
pub struct HookStats {
    pub calls: u64,
    /// Calls recorded on the host's tape (`call_tape`).
    pub taped: u64,
    pub ops: u64,
    /// One span per call; read when the stats are taken, after the step has synchronised.
    pub spans: Vec<Span>,
}

/// Per-step telemetry line for one plugin hook.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HookLine {
    pub plugin: String,
    pub hook: String,
    pub calls: u64,
    /// Calls whose backward the host ran on its own tape (`call_tape`).
    pub taped: u64,
    pub ops: u64,
    pub ms: f64,
    /// Handles alive after the step (state kept across calls).
    pub live_handles: usize,
    /// Bytes those handles name.
    pub bytes: usize,
}

pub struct PluginSession {
    pub manifest: Manifest,
    transport: Box<dyn Transport>,
    instance: u64,
    table: HandleTable,
    rng: ChaCha8Rng,
    device: Device,
    /// The dtype of the plugin's products (the track's `train.precision`).
    precision: Precision,
    /// The run's memory meter: checked after every hook call.
    meter: Option<Arc<MemoryMeter>>,
    stats: BTreeMap<HookPoint, HookStats>,
    /// Per hook, the ops the policy allows (absent: the hook's whole contract),
    /// and the policy file that says so.
    allow: BTreeMap<HookPoint, (Vec<Op>, String)>,
    /// The next call runs in eval mode (the host is validating); reset after it.
    eval: bool,
    /// The token ids of the forward pass the next call is part of; reset after it.
    tokens: Option<candle_core::Tensor>,
    /// Ops the host refused, for the verdict (the plugin may have swallowed the error).
    violations: Vec<Violation>,
    /// The configuration the instance was created from, as JSON text once:
    /// every pristine call recreates the instance from it.
    config: String,
    budget: InputBudget,
    inputs: InputUse,
    /// The document separator under the training and the validation labels.
    separator: (Option<u32>, Option<u32>),
    /// The tape the next call records its ops on, if the host runs its backward.
    tape: Option<CallTape>,
}

/// The context of the hook call in progress on this thread, for `host_call_op`.
struct Active<'a> {
    env: OpEnv<'a>,
    ops: u64,
    max_ops: u64,
}

thread_local! {
    static ACTIVE: Cell<*mut Active<'static>> = const { Cell::new(std::ptr::null_mut()) };
}

/// Installs `active` for the duration of `f`, restoring the previous one after
/// (also on unwind).
fn with_active<R>(active: &mut Active<'_>, f: impl FnOnce() -> R) -> R {
    struct Restore(*mut Active<'static>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(self.0));
        }
    }
    // The pointer only lives while `active` is borrowed here.
    let ptr: *mut Active<'static> = std::ptr::from_mut(active).cast();
    let _restore = Restore(ACTIVE.with(|a| a.replace(ptr)));
    f()
}

/// Runs one op for the plugin whose hook call is in progress on this thread;
/// every transport's op entry point comes here. Never panics.
pub fn dispatch_op(op: u32, args: Frame) -> std::result::Result<Frame, String> {
    let result = catch_unwind(AssertUnwindSafe(
        || -> std::result::Result<Frame, String> {
            let op = Op::from_code(op).map_err(|e| e.to_string())?;
            let ptr = ACTIVE.with(|a| a.get());
            if ptr.is_null() {
                return Err(format!(
                    "op {} called outside a hook call (from another thread?)",
                    op.name()
                ));
            }
            // SAFETY: set by `with_active` on this thread for the duration of the
            // hook call that is running this op; cleared when it returns.
            let active = unsafe { &mut *ptr };
            active.ops += 1;
            if active.ops > active.max_ops {
                let detail = format!(
                    "more than {} ops in one call of hook {} (the policy's inputs.max_ops_per_call)",
                    active.max_ops, active.env.hook
                );
                active
                    .env
                    .violations
                    .push(Violation::new(Check::PluginInputs, detail.clone()));
                return Err(detail);
            }
            let refused_before = active.env.violations.len();
            let out = host_ops::execute(&mut active.env, op, &args)
                .map_err(|e| format!("op {}: {e:#}", op.name()));
            // In eval mode an error is information about validation data the
            // plugin could branch on (an index out of range, a shape): any
            // failed op there is a violation, even if the plugin survives it.
            // A `param` lookup is the exception: whether a name exists is fixed
            // by the model's declarations, never by data (the SDK's
            // `head_weight` asks for `lm_head.weight` first).
            if let Err(e) = &out {
                if active.env.eval
                    && op != Op::Param
                    && active.env.violations.len() == refused_before
                {
                    active.env.violations.push(Violation::new(
                        Check::EvalIsolation,
                        format!("{e} while the host validates: any op error in eval mode is a violation"),
                    ));
                }
            }
            out
        },
    ));
    result.unwrap_or_else(|_| Err("the host panicked running this op (a host bug)".into()))
}

/// The native transport's op entry point.
pub extern "C" fn host_call_op(op: u32, args: FrameFfi) -> FfiResult<FrameFfi> {
    match dispatch_op(op, args.into()) {
        Ok(f) => FfiResult::ROk(f.into()),
        Err(e) => FfiResult::RErr(e.into()),
    }
}

pub fn host_ffi() -> HostFfi {
    HostFfi {
        call_op: host_call_op,
    }
}

impl PluginSession {
    pub fn new(
        manifest: Manifest,
        transport: Box<dyn Transport>,
        instance: u64,
        config: serde_json::Value,
        rng: ChaCha8Rng,
        table: HandleTable,
    ) -> PluginSession {
        PluginSession {
            manifest,
            transport,
            instance,
            config: config.to_string(),
            budget: InputBudget::default(),
            inputs: InputUse::default(),
            separator: (None, None),
            table,
            rng,
            device: Device::Cpu,
            precision: Default::default(),
            meter: None,
            stats: BTreeMap::new(),
            allow: BTreeMap::new(),
            eval: false,
            tokens: None,
            violations: Vec::new(),
            tape: None,
        }
    }

    /// Runs the plugin's ops on the meter's device, its products in `precision`,
    /// and checks the meter's budget after each hook.
    pub fn attach_device(&mut self, meter: Arc<MemoryMeter>, precision: Precision) {
        self.device = meter.device().clone();
        self.precision = precision;
        self.meter = Some(meter);
    }

    /// Bounds what the plugin may bring in through its ops (the policy's `[inputs]`).
    pub fn set_budget(&mut self, budget: InputBudget) {
        self.budget = budget;
    }

    /// What the plugin brought in so far.
    pub fn inputs(&self) -> InputUse {
        self.inputs
    }

    pub fn budget(&self) -> InputBudget {
        self.budget
    }

    /// The document separator as training and validation tokens spell it.
    pub fn set_separator(&mut self, train: Option<u32>, eval: Option<u32>) {
        self.separator = (train, eval);
    }

    /// The plugin's seeded generator (forward hooks' draws), to save and restore
    /// around the host's twin forwards so they leave the run's randomness as it was.
    pub fn rng_state(&self) -> ChaCha8Rng {
        self.rng.clone()
    }

    pub fn set_rng_state(&mut self, rng: ChaCha8Rng) {
        self.rng = rng;
    }

    /// Narrows the ops `hook` may call to `ops` (a policy's allow-list).
    pub fn restrict(&mut self, hook: HookPoint, ops: Vec<Op>, policy_file: String) {
        self.allow.insert(hook, (ops, policy_file));
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// Calls `hook`: `make_args` may put handles into the table for the call,
    /// `read` turns the reply into a host value while the call's handles are
    /// still alive. Every handle the call made is released after, unless kept.
    pub fn call<R>(
        &mut self,
        hook: HookPoint,
        params: Option<&ParamStore>,
        rng: Option<&mut ChaCha8Rng>,
        make_args: impl FnOnce(&mut HandleTable) -> Result<Frame>,
        read: impl FnOnce(&Frame, &HandleTable) -> Result<R>,
    ) -> Result<R> {
        let mut span = Span::start(&self.device);
        let mut ops = 0;
        let live_before = self.table.live();
        let refused_before = self.violations.len();
        let taped = self.tape.is_some();
        let mut out = self.call_inner(hook, params, rng, make_args, read, &mut ops);
        span.stop();
        if let Some(m) = &self.meter {
            let site = format_args!("hook {hook}");
            // Sampled per hook only under a budget: the step's phases feed the peak.
            out = match (m.budget(), out) {
                (Some(_), out) => m.guard(site, out),
                (None, Err(e)) => Err(m.explain(e, site)),
                (None, ok) => ok,
            };
        }
        self.table.end_call();
        self.tokens = None;
        for v in &mut self.violations[refused_before..] {
            v.detail = format!("plugin {}, hook {hook}: {}", self.manifest.name, v.detail);
        }
        if std::mem::take(&mut self.eval) && self.table.live() > live_before {
            self.violations.push(Violation::new(
                Check::EvalIsolation,
                format!(
                    "plugin {}, hook {hook}: holds {} more handles after an eval-mode call",
                    self.manifest.name,
                    self.table.live() - live_before
                ),
            ));
        }
        let s = self.stats.entry(hook).or_default();
        s.calls += 1;
        s.taped += taped as u64;
        s.ops += ops;
        self.inputs.calls += 1;
        self.inputs.ops += ops;
        self.inputs.max_ops_in_a_call = self.inputs.max_ops_in_a_call.max(ops);
        s.spans.push(span);
        out.map_err(|e| anyhow!("plugin {}, hook {hook}: {e:#}", self.manifest.name))
    }

    fn call_inner<R>(
        &mut self,
        hook: HookPoint,
        params: Option<&ParamStore>,
        rng: Option<&mut ChaCha8Rng>,
        make_args: impl FnOnce(&mut HandleTable) -> Result<Frame>,
        read: impl FnOnce(&Frame, &HandleTable) -> Result<R>,
        ops: &mut u64,
    ) -> Result<R> {
        let args = make_args(&mut self.table)?;
        let mut active = Active {
            env: OpEnv {
                hook,
                allow: self
                    .allow
                    .get(&hook)
                    .map(|(ops, file)| (ops.as_slice(), file.as_str())),
                table: &mut self.table,
                params,
                rng: match rng {
                    Some(r) => r,
                    None => &mut self.rng,
                },
                device: &self.device,
                precision: self.precision,
                eval: self.eval,
                tokens: self.tokens.as_ref(),
                violations: &mut self.violations,
                separator: if self.eval {
                    self.separator.1
                } else {
                    self.separator.0
                },
                tape: self.tape.as_mut(),
                literal_elements: &mut self.inputs.literal_elements,
                max_literal_elements: self.budget.max_literal_elements,
            },
            ops: 0,
            max_ops: self.budget.max_ops_per_call,
        };
        let (transport, instance, config) = (&self.transport, self.instance, &self.config);
        let reply = with_active(&mut active, || {
            if is_pristine(hook) {
                transport.call_pristine(config, hook, args)
            } else {
                transport.call(instance, hook, args)
            }
        });
        *ops = active.ops;
        read(&reply.map_err(|e| anyhow!(e))?, &self.table)
    }

    /// The accounting since the last call of this, one line per hook used.
    pub fn take_stats(&mut self) -> Vec<HookLine> {
        let (live, bytes) = (self.table.live(), self.table.bytes());
        std::mem::take(&mut self.stats)
            .into_iter()
            .map(|(hook, s)| HookLine {
                plugin: self.manifest.name.clone(),
                hook: hook.name().to_string(),
                calls: s.calls,
                taped: s.taped,
                ops: s.ops,
                ms: s.spans.iter().map(Span::ms).sum(),
                live_handles: live,
                bytes,
            })
            .collect()
    }

    /// The next hook call is part of the forward pass over `tokens`.
    pub fn set_tokens(&mut self, tokens: Option<candle_core::Tensor>) {
        self.tokens = tokens;
    }

    /// The next hook call records its ops on a tape of its own (see
    /// `call_tape`), which `take_tape` hands back after it.
    pub fn start_tape(&mut self) -> &mut CallTape {
        self.tape.insert(CallTape::new(self.precision))
    }

    pub fn take_tape(&mut self) -> Option<CallTape> {
        self.tape.take()
    }

    /// Runs the next hook call in eval mode: the host is validating.
    pub fn set_eval(&mut self, eval: bool) {
        self.eval = eval;
    }

    /// The refusals recorded since the last call of this.
    pub fn take_violations(&mut self) -> Vec<Violation> {
        std::mem::take(&mut self.violations)
    }

    pub fn live_handles(&self) -> usize {
        self.table.live()
    }
}

impl Drop for PluginSession {
    fn drop(&mut self) {
        self.transport.destroy(self.instance);
    }
}

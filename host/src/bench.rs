//! `speedrun bench throughput`: tokens/s of the training step on a track's model,
//! its split (forward, backward, optimizer), achieved GFLOP/s, and the fraction
//! of this machine's f32 matmul peak measured in the same process.

use crate::data::loader::{TrackData, TrainStream};
use crate::plugins::Components;
use crate::stats::median;
use crate::track::LoadedTrack;
use crate::train::{SplitTimes, Stack, StepAt};
use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::Serialize;
use speedrun_kernels::Precision;
use std::path::Path;
use std::time::Instant;

/// A `[r, c]` f32 matrix of small repeating values.
fn sample_matrix(r: usize, c: usize, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..r * c).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    Ok(Tensor::from_vec(v, (r, c), dev)?)
}

/// Median GFLOP/s of `product` (`flops` a call) over `reps` calls after two.
fn median_gflops(
    flops: f64,
    reps: usize,
    dev: &Device,
    product: impl Fn() -> candle_core::Result<Tensor>,
) -> Result<f64> {
    for _ in 0..2 {
        product()?;
    }
    let times = (0..reps)
        .map(|_| timed_call(dev, &product))
        .collect::<Result<Vec<_>>>()?;
    Ok(flops / median(times) / 1e9)
}

/// Seconds of one call of `product`, the device synchronised on both sides.
fn timed_call(dev: &Device, product: impl Fn() -> candle_core::Result<Tensor>) -> Result<f64> {
    dev.synchronize()?;
    let t = Instant::now();
    let c = product()?;
    dev.synchronize()?;
    drop(c);
    Ok(t.elapsed().as_secs_f64())
}

/// An `n`³ product through the model's own linear layer (the path its
/// products take, in the track's precision), timed one call at a time.
struct PeakProbe {
    a: Tensor,
    b: Tensor,
    precision: Precision,
    flops: f64,
    times: Vec<f64>,
}

impl PeakProbe {
    /// The product's operands, and two untimed calls.
    fn new(n: usize, dev: &Device, precision: Precision) -> Result<Self> {
        let (a, b) = (sample_matrix(n, n, dev)?, sample_matrix(n, n, dev)?);
        for _ in 0..2 {
            precision.linear(&a, &b, None)?;
        }
        let flops = 2.0 * (n * n * n) as f64;
        Ok(PeakProbe {
            a,
            b,
            precision,
            flops,
            times: vec![],
        })
    }

    fn sample(&mut self, dev: &Device) -> Result<()> {
        let t = timed_call(dev, || self.precision.linear(&self.a, &self.b, None))?;
        self.times.push(t);
        Ok(())
    }

    /// GFLOP/s at the median call's time.
    fn gflops(&self) -> f64 {
        self.flops / median(self.times.clone()) / 1e9
    }
}

/// The side of the peak's square product: a GPU needs a bigger one to reach it.
fn peak_size(dev: &Device) -> usize {
    match dev {
        Device::Cpu => 1024,
        _ => 8192,
    }
}

/// One of the model's products at its real size, with the two its backward
/// runs.
#[derive(Debug, Clone, Serialize)]
pub struct ShapeRate {
    pub name: &'static str,
    /// `[m, k] @ [k, n]`.
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// The forward product `x @ w`.
    pub gflops: f64,
    /// The input gradient `g wᵀ` (`[m, n] @ [n, k]`).
    pub input_grad_gflops: f64,
    /// The weight gradient `xᵀ g` (`[k, m] @ [m, n]`): a reduction over all m rows.
    pub weight_grad_gflops: f64,
}

/// The products of one step (a block's four, and the head), each timed alone
/// through the kernels the trainer calls: where the matmul path is fast and
/// where it is not.
fn model_shapes(track: &crate::track::Track, dev: &Device) -> Result<Vec<ShapeRate>> {
    let m = &track.model;
    let rows = track.train.batch_tokens;
    let (d, v) = (m.width, m.vocab);
    let p = track.train.precision;
    [
        ("qkv", d, 3 * d),
        ("attention out", d, d),
        ("mlp up", d, 4 * d),
        ("mlp down", 4 * d, d),
        ("head", d, v),
    ]
    .into_iter()
    .map(|(name, k, n)| {
        let (x, w, g) = (
            sample_matrix(rows, k, dev)?,
            sample_matrix(k, n, dev)?,
            sample_matrix(rows, n, dev)?,
        );
        let flops = 2.0 * (rows * n * k) as f64;
        Ok(ShapeRate {
            name,
            m: rows,
            n,
            k,
            gflops: median_gflops(flops, 5, dev, || p.linear(&x, &w, None))?,
            input_grad_gflops: median_gflops(flops, 5, dev, || p.linear_input_grad(&g, &w))?,
            weight_grad_gflops: median_gflops(flops, 5, dev, || p.linear_weight_grad(&x, &g))?,
        })
    })
    .collect()
}

/// The causal attention at the track's size, timed alone on the packed
/// `[B, T, 3D]` projection: what the model's products leave of the step.
#[derive(Debug, Clone, Serialize)]
pub struct AttentionRate {
    pub batch: usize,
    pub seq_len: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub forward_ms: f64,
    /// The backward from an output gradient (`causal_attention_packed_grad`),
    /// the scores' recompute included.
    pub backward_ms: f64,
    /// The causal products' useful work (the T(T+1)/2 query-key pairs of each
    /// head, not the masked square) a second: 2 products forward, 5 backward
    /// (the scores again, dP, dQ, dK, dV).
    pub forward_gflops: f64,
    pub backward_gflops: f64,
}

fn attention_rate(track: &crate::track::Track, dev: &Device) -> Result<AttentionRate> {
    let m = &track.model;
    let (t, d, heads) = (m.seq_len, m.width, m.heads);
    let b = track.train.batch_tokens / t;
    let hd = d / heads;
    let qkv = sample_matrix(b * t, 3 * d, dev)?.reshape((b, t, 3 * d))?;
    let dy = sample_matrix(b * t, d, dev)?.reshape((b, t, d))?;
    // One causal product of a head: its T(T+1)/2 pairs, hd multiply-adds each.
    let product = 2.0 * (b * heads * hd * t * (t + 1) / 2) as f64;
    let forward_gflops = median_gflops(2.0 * product, 5, dev, || {
        speedrun_kernels::causal_attention_packed(&qkv, heads)
    })?;
    let backward_gflops = median_gflops(5.0 * product, 5, dev, || {
        speedrun_kernels::causal_attention_packed_grad(&qkv, &dy, heads)
    })?;
    Ok(AttentionRate {
        batch: b,
        seq_len: t,
        heads,
        head_dim: hd,
        forward_ms: 2.0 * product / forward_gflops / 1e6,
        backward_ms: 5.0 * product / backward_gflops / 1e6,
        forward_gflops,
        backward_gflops,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    pub track: String,
    pub parameters: usize,
    pub batch_tokens: usize,
    pub steps_timed: usize,
    pub step_ms_median: f64,
    pub forward_ms_median: f64,
    pub backward_ms_median: f64,
    pub optimizer_ms_median: f64,
    pub tokens_per_s: f64,
    pub gflops: f64,
    /// The device's matmul rate in the track's precision (`precision`),
    /// through the same matmul path the trainer takes: the median of one
    /// square product timed after each timed step (and at least 10).
    pub matmul_peak_gflops: f64,
    /// The calls that median is over: one a timed step, then more up to 10.
    pub matmul_peak_samples: usize,
    /// That path: gemm's microkernels on the CPU (`speedrun_kernels::matmul_kernel`),
    /// cuBLAS on a GPU.
    pub matmul_kernel: String,
    /// The model's products at their real sizes, on that path.
    pub shapes: Vec<ShapeRate>,
    /// One layer's attention at its real size.
    pub attention: AttentionRate,
    pub fraction_of_peak: f64,
    /// The track's `train.precision`: the dtype of the model's products.
    pub precision: Precision,
    pub threads: usize,
    /// The device stepped on (the GPU's name on a GPU).
    pub device: crate::device::DeviceInfo,
    /// The most memory the device held while stepping (`device::memory`).
    pub peak_memory_bytes: u64,
}

/// One training stack stepping on a track through the training loop's own
/// step (`train::Stack::step`), timing each step's parts.
struct Stepper<'a> {
    track: &'a crate::track::Track,
    stack: Stack,
    stream: TrainStream<'a>,
    step: usize,
    total: usize,
}

impl<'a> Stepper<'a> {
    fn new(
        track: &'a crate::track::Track,
        data: &'a TrackData,
        comps: Components,
        total: usize,
        device: &Device,
    ) -> Result<Stepper<'a>> {
        let meter = std::sync::Arc::new(crate::device::memory::MemoryMeter::new(device, None));
        let stack = Stack::assemble(track, comps, 0, meter, None)?;
        let stream = TrainStream::new(&data.train, track.batch_size(), track.model.seq_len, 0);
        Ok(Stepper {
            track,
            stack,
            stream,
            step: 0,
            total,
        })
    }

    fn step(&mut self) -> Result<SplitTimes> {
        let mut times = SplitTimes::default();
        let at = StepAt {
            step: self.step,
            steps: self.total,
            group: None,
        };
        self.stack
            .step(self.track, &mut self.stream, at, None, Some(&mut times))?;
        self.stack.meter.sample();
        self.step += 1;
        Ok(times)
    }
}

/// The fewest calls the peak's median is taken over.
const PEAK_REPS: usize = 10;

/// Times `steps` training steps after `warmup` untimed ones (reference components).
pub fn throughput(
    lt: &LoadedTrack,
    data_dir: Option<&Path>,
    warmup: usize,
    steps: usize,
    device: &Device,
) -> Result<ThroughputReport> {
    let track = &lt.track;
    let data = TrackData::open(lt, data_dir)?;
    let comps = Components::reference(track);
    let mut s = Stepper::new(track, &data, comps, warmup + steps, device)?;
    // The peak is sampled between the timed steps, one product after each, so
    // that it sees the machine the steps saw: on a shared machine whose speed
    // drifts by tens of percent, a peak timed apart from the steps (in a slow
    // moment, say) put the fraction above 1.
    let mut peak = PeakProbe::new(peak_size(device), device, track.train.precision)?;
    let (mut fwd, mut bwd, mut optim, mut total) = (vec![], vec![], vec![], vec![]);
    for step in 0..warmup + steps {
        let t = s.step()?;
        if step >= warmup {
            fwd.push(t.forward);
            bwd.push(t.backward);
            optim.push(t.optimizer);
            total.push(t.forward + t.backward + t.optimizer);
            peak.sample(device)?;
        }
    }
    while peak.times.len() < PEAK_REPS {
        peak.sample(device)?;
    }
    let parameters = s.stack.model.params.numel();
    let step_s = median(total);
    let tokens_per_s = track.train.batch_tokens as f64 / step_s;
    let gflops = track.flops_per_token(parameters) * tokens_per_s / 1e9;
    let peak_samples = peak.times.len();
    let peak = peak.gflops();
    Ok(ThroughputReport {
        track: track.name.clone(),
        parameters,
        batch_tokens: track.train.batch_tokens,
        steps_timed: steps,
        step_ms_median: step_s * 1e3,
        forward_ms_median: median(fwd) * 1e3,
        backward_ms_median: median(bwd) * 1e3,
        optimizer_ms_median: median(optim) * 1e3,
        tokens_per_s,
        gflops,
        matmul_peak_gflops: peak,
        matmul_peak_samples: peak_samples,
        matmul_kernel: match device {
            Device::Cpu => speedrun_kernels::matmul_kernel().into(),
            _ => "cuBLAS".into(),
        },
        shapes: model_shapes(track, device)?,
        attention: attention_rate(track, device)?,
        fraction_of_peak: gflops / peak,
        precision: track.train.precision,
        threads: candle_core::utils::get_num_threads(),
        device: crate::device::describe(device),
        peak_memory_bytes: s.stack.meter.peak(),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct PluginOverheadReport {
    pub track: String,
    pub plugins: Vec<String>,
    /// Pairs of steps timed: one built-in, one with plugins, in alternating order.
    pub pairs: usize,
    pub builtin_step_ms: f64,
    pub plugin_step_ms: f64,
    /// Median over pairs of (plugin step / built-in step).
    pub step_ratio: f64,
    pub builtin_optimizer_ms: f64,
    pub plugin_optimizer_ms: f64,
    /// Median over pairs of (plugin optimizer / built-in optimizer).
    pub optimizer_ratio: f64,
    /// Forward + backward medians: code the plugins do not touch when they replace
    /// only the optimizer and schedule, so their gap is this machine's noise.
    pub builtin_fwd_bwd_ms: f64,
    pub plugin_fwd_bwd_ms: f64,
    /// The step ratio with the untouched part's noise taken out, from medians:
    /// (built-in fwd+bwd + plugin optimizer) / (built-in fwd+bwd + built-in optimizer).
    pub isolated_step_ratio: f64,
    /// The plugin stack again, its forward hooks on candle's graph instead of
    /// the host's tape (`plugins::call_tape`): a third step in each round.
    pub graph_step_ms: f64,
    /// Median over rounds of (plugin step on the tape / on candle's graph).
    pub tape_ratio: f64,
}

/// The built-in stack and the stack with `plugins`, each on its own model built
/// from the same seed, stepping in one process: `pairs` pairs of one step each,
/// the order flipping every pair, after one warm-up step each. A third copy of
/// the plugin stack steps with its forward hooks on candle's graph, after each
/// pair, for the tape's own ratio.
pub fn plugin_overhead(
    lt: &LoadedTrack,
    data_dir: Option<&Path>,
    plugins: &[std::path::PathBuf],
    wasm: bool,
    policy: &speedrun_sandbox_policy::LoadedPolicy,
    pairs: usize,
) -> Result<PluginOverheadReport> {
    let track = &lt.track;
    let data = TrackData::open(lt, data_dir)?;
    let total = 1 + pairs;
    let with = crate::plugins::stack(track, 0, plugins, &[], wasm, policy)?;
    let graph = crate::plugins::stack(track, 0, plugins, &[], wasm, policy)?;
    let names = with.plugins.iter().map(|p| p.record.name.clone()).collect();
    let mut stacks = [
        Stepper::new(
            track,
            &data,
            Components::reference(track),
            total,
            &Device::Cpu,
        )?,
        Stepper::new(track, &data, with, total, &Device::Cpu)?,
        Stepper::new(track, &data, graph, total, &Device::Cpu)?,
    ];
    let step = |s: &mut Stepper, i: usize| match i {
        2 => crate::plugins::call_tape::without(|| s.step()),
        _ => s.step(),
    };
    for (i, s) in stacks.iter_mut().enumerate() {
        step(s, i)?;
    }
    let mut times: [Vec<SplitTimes>; 3] = [vec![], vec![], vec![]];
    for pair in 0..pairs {
        let order = if pair % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for i in order {
            times[i].push(step(&mut stacks[i], i)?);
        }
    }
    let total_ms = |t: &SplitTimes| (t.forward + t.backward + t.optimizer) * 1e3;
    let ratios = |f: &dyn Fn(&SplitTimes) -> f64| -> f64 {
        median(
            times[0]
                .iter()
                .zip(&times[1])
                .map(|(b, p)| f(p) / f(b))
                .collect(),
        )
    };
    let med = |i: usize, f: &dyn Fn(&SplitTimes) -> f64| median(times[i].iter().map(f).collect());
    let opt = |t: &SplitTimes| t.optimizer * 1e3;
    let fb = |t: &SplitTimes| (t.forward + t.backward) * 1e3;
    let (fb_b, opt_b, opt_p) = (med(0, &fb), med(0, &opt), med(1, &opt));
    Ok(PluginOverheadReport {
        track: track.name.clone(),
        plugins: names,
        pairs,
        builtin_step_ms: med(0, &total_ms),
        plugin_step_ms: med(1, &total_ms),
        step_ratio: ratios(&total_ms),
        builtin_optimizer_ms: opt_b,
        plugin_optimizer_ms: opt_p,
        optimizer_ratio: ratios(&opt),
        builtin_fwd_bwd_ms: fb_b,
        plugin_fwd_bwd_ms: med(1, &fb),
        isolated_step_ratio: (fb_b + opt_p) / (fb_b + opt_b),
        graph_step_ms: med(2, &total_ms),
        tape_ratio: median(
            times[1]
                .iter()
                .zip(&times[2])
                .map(|(t, g)| total_ms(t) / total_ms(g))
                .collect(),
        ),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct WasmLoadReport {
    pub module: String,
    pub bytes: usize,
    /// Compile (cranelift) + instantiate, first load in the process.
    pub cold_ms: f64,
    /// Instantiate from the in-process compiled-module cache: median of `reps`.
    pub cached_ms_median: f64,
    pub reps: usize,
}

/// Load time of a wasm plugin module: cold (compile + instantiate), then from
/// the content-hash cache.
pub fn wasm_load(path: &Path, reps: usize) -> Result<WasmLoadReport> {
    use crate::plugins::wasm::{WasmLimits, WasmModule};
    let bytes = std::fs::read(path)?;
    let t = Instant::now();
    WasmModule::from_bytes(&bytes, WasmLimits::default())?;
    let cold = t.elapsed().as_secs_f64();
    let mut cached = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        WasmModule::from_bytes(&bytes, WasmLimits::default())?;
        cached.push(t.elapsed().as_secs_f64());
    }
    Ok(WasmLoadReport {
        module: path.display().to_string(),
        bytes: bytes.len(),
        cold_ms: cold * 1e3,
        cached_ms_median: median(cached) * 1e3,
        reps,
    })
}

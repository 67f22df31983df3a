//! `speedrun bench throughput`: tokens/s of the training step on a track's model,
//! its split (forward, backward, optimizer), achieved GFLOP/s, and the fraction
//! of this machine's f32 matmul peak measured in the same process.

use crate::data::loader::{TrackData, TrainStream};
use crate::model::Model;
use crate::optim::{Grads, StepInput};
use crate::track::LoadedTrack;
use crate::train::validate::{batch_loss, batch_tensors};
use crate::train::{flops_per_token, Components};
use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// Median GFLOP/s of an `n`³ f32 matmul on this machine through candle.
pub fn matmul_peak_gflops(n: usize, reps: usize) -> Result<f64> {
    let dev = Device::Cpu;
    let a = Tensor::from_vec(
        (0..n * n)
            .map(|i| ((i % 7) as f32 - 3.0) * 0.1)
            .collect::<Vec<_>>(),
        (n, n),
        &dev,
    )?;
    let b = a.t()?.contiguous()?;
    for _ in 0..2 {
        a.matmul(&b)?;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        drop(c);
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / median(times) / 1e9)
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
    pub matmul_peak_gflops: f64,
    pub fraction_of_peak: f64,
    pub threads: usize,
}

/// Times `steps` training steps after `warmup` untimed ones (reference components).
pub fn throughput(
    lt: &LoadedTrack,
    data_dir: Option<&Path>,
    warmup: usize,
    steps: usize,
) -> Result<ThroughputReport> {
    let track = &lt.track;
    let dev = Device::Cpu;
    let data = TrackData::open(lt, data_dir)?;
    let comps = Components::reference(track);
    let model = Model::build(&track.model, comps.hooks, 0, &dev)?;
    let mut opt = comps.optimizer;
    opt.init(&model.params)?;
    let mut stream = TrainStream::new(&data.train, track.batch_size(), track.model.seq_len, 0);
    let (mut fwd, mut bwd, mut optim, mut total) = (vec![], vec![], vec![], vec![]);
    for step in 0..warmup + steps {
        let batch = stream.next_batch();
        let (x, y) = batch_tensors(&batch, &dev)?;
        let t0 = Instant::now();
        let loss = batch_loss(&model, &x, &y, true)?;
        let _ = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = Grads::collect(&model.params, &loss.backward()?)?;
        let grad_norm = grads.global_norm()?;
        let t2 = Instant::now();
        let lr = track.optimizer.lr * comps.schedule.at(step, warmup + steps).lr_mult;
        opt.step(
            &model.params,
            &grads,
            &StepInput {
                step,
                lr,
                momentum_mult: 1.0,
                grad_norm,
            },
        )?;
        let t3 = Instant::now();
        if step >= warmup {
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
            optim.push((t3 - t2).as_secs_f64());
            total.push((t3 - t0).as_secs_f64());
        }
    }
    let step_s = median(total);
    let tokens_per_s = track.train.batch_tokens as f64 / step_s;
    let gflops = flops_per_token(track, model.params.numel()) * tokens_per_s / 1e9;
    let peak = matmul_peak_gflops(1024, 10)?;
    Ok(ThroughputReport {
        track: track.name.clone(),
        parameters: model.params.numel(),
        batch_tokens: track.train.batch_tokens,
        steps_timed: steps,
        step_ms_median: step_s * 1e3,
        forward_ms_median: median(fwd) * 1e3,
        backward_ms_median: median(bwd) * 1e3,
        optimizer_ms_median: median(optim) * 1e3,
        tokens_per_s,
        gflops,
        matmul_peak_gflops: peak,
        fraction_of_peak: gflops / peak,
        threads: candle_core::utils::get_num_threads(),
    })
}

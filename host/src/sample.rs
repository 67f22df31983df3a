//! `speedrun sample`: text from a checkpoint. The prompt is tokenized like a
//! training document (GPT-2's start with end-of-text), the model runs on the
//! last `seq_len` tokens, and the next token is the likeliest (temperature 0)
//! or drawn from the softmax at the temperature with a seeded generator.
//! Checkpoints hold the real token ids (saved un-permuted), so no labels apply.

use crate::data::tokenizer::Tokenizer;
use crate::model::{Model, ModelHooks};
use crate::track::Track;
use anyhow::{bail, Result};
use candle_core::{Device, IndexOp, Tensor};
use rand::{Rng, SeedableRng};
use std::path::Path;

pub struct SampleOptions<'a> {
    pub track: &'a Track,
    pub checkpoint: &'a Path,
    /// The model hooks of the plugins it was trained with.
    pub hooks: ModelHooks,
    pub prompt: &'a str,
    pub tokens: usize,
    pub temperature: f64,
    pub seed: u64,
    pub device: &'a Device,
}

/// The index of the largest value (the first of equals).
pub fn argmax(xs: &[f32]) -> usize {
    xs.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// A draw from softmax(logits / temperature).
fn draw(logits: &[f32], temperature: f64, rng: &mut rand_chacha::ChaCha8Rng) -> usize {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / temperature).exp())
        .collect();
    let mut u = rng.random::<f64>() * weights.iter().sum::<f64>();
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.len() - 1
}

/// The generated text (without the prompt).
pub fn sample(o: SampleOptions) -> Result<String> {
    let t = o.track;
    if !(o.temperature >= 0.0 && o.temperature.is_finite()) {
        bail!(
            "--temperature must be 0 (greedy) or a positive number, not {}",
            o.temperature
        );
    }
    let tokenizer = Tokenizer::new(t.data.tokenizer)?;
    let mut ids: Vec<u32> = tokenizer
        .encode_document(o.prompt)
        .into_iter()
        .map(u32::from)
        .collect();
    if ids.is_empty() {
        bail!("the prompt is empty: give --prompt with some text to continue");
    }
    let model = Model::build(&t.model, o.hooks, 0, o.device)?.with_precision(t.train.precision);
    crate::checkpoint::load_into(&model, o.checkpoint, o.device)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(o.seed);
    let first = ids.len();
    for _ in 0..o.tokens {
        let context = &ids[ids.len().saturating_sub(t.model.seq_len)..];
        let x = Tensor::from_vec(context.to_vec(), (1, context.len()), o.device)?;
        let logits = model.forward(&x, false)?;
        let last: Vec<f32> = logits
            .i((0, context.len() - 1))?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        let next = if o.temperature == 0.0 {
            argmax(&last)
        } else {
            draw(&last, o.temperature, &mut rng)
        };
        ids.push(next as u32);
    }
    let generated: Vec<u16> = ids[first..].iter().map(|&i| i as u16).collect();
    Ok(String::from_utf8_lossy(&tokenizer.decode(&generated)?).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_largest_and_draws_follow_the_softmax() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), 1);
        // Temperature → 0 approaches greedy; a huge logit gap is always drawn.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert!((0..100).all(|_| draw(&[0.0, 40.0, 0.0], 1.0, &mut rng) == 1));
        // Two equal logits: each drawn about half the time.
        let ones = (0..4000)
            .filter(|_| draw(&[2.0, 2.0], 0.7, &mut rng) == 1)
            .count();
        assert!((1800..2200).contains(&ones), "{ones}");
    }
}

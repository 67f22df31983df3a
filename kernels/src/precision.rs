//! Mixed precision: the dtype the gemm-shaped ops multiply in.
//!
//! `Bf16` is PyTorch's autocast as the speedrun uses it: linear layers,
//! attention's two products, plugin matmuls and Newton–Schulz take bf16 inputs
//! (tensor cores on a GPU, f32 accumulation) and hand back the caller's dtype.
//! Parameters, gradients, optimizer state, norms, the softmax, the loss and the
//! residual stream stay f32, and a bias is added after the product, in f32.
//! The casts are candle ops, so autograd returns f32 gradients to the f32 master
//! weights, and the fused elementwise kernels only ever see f32.

use crate::{gemm_ops, NsCoefficients};
use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (the fused CPU kernels, TF32-free cuBLAS on a GPU).
    #[default]
    F32,
    /// Products in bf16, everything else f32.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// `x @ w + b` for `x` `[..., in]`, `w` `[in, out]`, `b` `[out]`.
    pub fn linear(self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Precision::F32 => crate::linear(x, w, b),
            Precision::Bf16 => {
                let y = gemm_ops::linear(&bf16(x)?, &bf16(w)?, None)?.to_dtype(x.dtype())?;
                match b {
                    Some(b) => crate::add_rows(&y, b),
                    None => Ok(y),
                }
            }
        }
    }

    /// `g wᵀ`, the input gradient of `linear`, as its backward computes it.
    pub fn linear_input_grad(self, g: &Tensor, w: &Tensor) -> Result<Tensor> {
        match self {
            Precision::F32 => crate::linear::input_grad(g, w),
            Precision::Bf16 => bf16(g)?.matmul(&bf16(w)?.t()?)?.to_dtype(g.dtype()),
        }
    }

    /// `xᵀ g`, the weight gradient of `linear`, as its backward computes it.
    pub fn linear_weight_grad(self, x: &Tensor, g: &Tensor) -> Result<Tensor> {
        match self {
            Precision::F32 => crate::linear::weight_grad(x, g),
            Precision::Bf16 => bf16(x)?.t()?.matmul(&bf16(g)?)?.to_dtype(x.dtype()),
        }
    }

    /// `r + x @ w + b`: one fused node in f32, the add after the bf16 product otherwise.
    pub fn linear_residual(self, x: &Tensor, w: &Tensor, b: &Tensor, r: &Tensor) -> Result<Tensor> {
        match self {
            Precision::F32 => crate::linear_residual(x, w, b, r),
            Precision::Bf16 => r + self.linear(x, w, Some(b))?,
        }
    }

    /// `gelu(x @ w + b)`: one fused node in f32, the activation after the
    /// bf16 product otherwise.
    pub fn linear_gelu(self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        match self {
            Precision::F32 => crate::linear_gelu(x, w, b),
            Precision::Bf16 => crate::gelu(&self.linear(x, w, Some(b))?),
        }
    }

    /// `a @ b` with candle's broadcasting of the leading dimensions.
    pub fn matmul(self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        match self {
            Precision::F32 => a.broadcast_matmul(b),
            Precision::Bf16 => bf16(a)?.broadcast_matmul(&bf16(b)?)?.to_dtype(a.dtype()),
        }
    }

    /// Causal attention from a packed `[B, T, 3·D]` projection to `[B, T, D]`.
    /// Causal attention of the packed projection `x @ w + b`: one fused node in
    /// f32, the bf16 projection then the attention otherwise.
    pub fn projected_causal_attention(
        self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        heads: usize,
    ) -> Result<Tensor> {
        match self {
            Precision::F32 => crate::projected_causal_attention(x, w, b, heads),
            Precision::Bf16 => self.causal_attention_packed(&self.linear(x, w, Some(b))?, heads),
        }
    }

    pub fn causal_attention_packed(self, qkv: &Tensor, heads: usize) -> Result<Tensor> {
        match self {
            Precision::F32 => crate::causal_attention_packed(qkv, heads),
            Precision::Bf16 => {
                gemm_ops::causal_attention_packed(&bf16(qkv)?, heads)?.to_dtype(qkv.dtype())
            }
        }
    }

    /// softmax(q kᵀ · scale + causal mask) v on contiguous `[.., T, hd]` heads.
    pub fn causal_attention(
        self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
    ) -> Result<Tensor> {
        match self {
            Precision::F32 => gemm_ops::causal_attention(q, k, v, scale),
            Precision::Bf16 => gemm_ops::causal_attention(&bf16(q)?, &bf16(k)?, &bf16(v)?, scale)?
                .to_dtype(q.dtype()),
        }
    }

    /// Muon's orthogonalisation (see `newton_schulz`); in bf16 the iteration's
    /// products are bf16, as in the speedrun, and the norm is taken in f32.
    pub fn newton_schulz(
        self,
        g: &Tensor,
        coefficients: &[NsCoefficients],
        norm_scale: f32,
        eps: f32,
    ) -> Result<Tensor> {
        match self {
            Precision::F32 => crate::newton_schulz(g, coefficients, norm_scale, eps),
            Precision::Bf16 => gemm_ops::newton_schulz(&bf16(g)?, coefficients, norm_scale, eps)?
                .to_dtype(g.dtype()),
        }
    }
}

fn bf16(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::BF16)
}

#[cfg(test)]
mod tests {
    //! The bf16 paths against an independent emulation: round the inputs to bf16,
    //! multiply in f32, round the product to bf16 (what a bf16 GEMM with f32
    //! accumulation returns). Gradients must come back as f32 to the f32 inputs.
    use super::*;
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn round(t: &Tensor) -> Tensor {
        t.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn bf16_linear_is_a_rounded_product_plus_an_f32_bias() {
        let (x, w, b) = (randn(&[2, 5, 16], 1), randn(&[16, 8], 2), randn(&[8], 3));
        let got = Precision::Bf16.linear(&x, &w, Some(&b)).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        let want = round(&round(&x).broadcast_matmul(&round(&w)).unwrap())
            .broadcast_add(&b)
            .unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-6);
        // And it is not the f32 product: the rounding is really there.
        let exact = Precision::F32.linear(&x, &w, Some(&b)).unwrap();
        let d = max_abs_diff(&got, &exact);
        assert!(d > 1e-4 && d < 0.1, "bf16 vs f32 differ by {d}");
    }

    #[test]
    fn bf16_linear_hands_f32_gradients_to_f32_weights() {
        let (x, w) = (
            Var::from_tensor(&randn(&[4, 16], 4)).unwrap(),
            randn(&[16, 8], 5),
        );
        let w = Var::from_tensor(&w).unwrap();
        let loss = |p: Precision| {
            let y = p.linear(x.as_tensor(), w.as_tensor(), None).unwrap();
            let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            (
                g.get(x.as_tensor()).unwrap().clone(),
                g.get(w.as_tensor()).unwrap().clone(),
            )
        };
        let (dx16, dw16) = loss(Precision::Bf16);
        let (dx32, dw32) = loss(Precision::F32);
        assert_eq!((dx16.dtype(), dw16.dtype()), (DType::F32, DType::F32));
        // d/dw Σ y² = 2 xᵀ y: bf16 rounding of y, x and the products, so a few
        // per cent of the gradient's scale at most.
        let scale: f32 = dw32
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(max_abs_diff(&dw16, &dw32) < 0.03 * scale);
        assert!(max_abs_diff(&dx16, &dx32) > 0.0);
    }

    #[test]
    fn bf16_attention_matches_the_f32_path_to_bf16_accuracy() {
        let qkv = randn(&[2, 6, 3 * 8], 6);
        let got = Precision::Bf16.causal_attention_packed(&qkv, 2).unwrap();
        let want = Precision::F32.causal_attention_packed(&qkv, 2).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        let d = max_abs_diff(&got, &want);
        assert!(d > 0.0 && d < 0.02, "bf16 vs f32 attention differ by {d}");
        // The 4-d form agrees with the packed one in bf16 too.
        let head = |i: usize| {
            qkv.narrow(2, i * 8, 8)
                .unwrap()
                .reshape((2, 6, 2, 4))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let four = Precision::Bf16
            .causal_attention(&head(0), &head(1), &head(2), 0.5)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((2, 6, 8))
            .unwrap();
        assert!(max_abs_diff(&four, &got) < 1e-6);
    }

    #[test]
    fn bf16_newton_schulz_stays_near_the_f32_iteration() {
        let g = randn(&[12, 20], 7);
        let coeffs = [(3.4445, -4.7750, 2.0315); 5];
        let got = Precision::Bf16
            .newton_schulz(&g, &coeffs, 1.0, 1e-7)
            .unwrap();
        let want = Precision::F32
            .newton_schulz(&g, &coeffs, 1.0, 1e-7)
            .unwrap();
        assert_eq!(got.dtype(), DType::F32);
        let d = max_abs_diff(&got, &want);
        assert!(
            d > 0.0 && d < 0.05,
            "bf16 vs f32 Newton–Schulz differ by {d}"
        );
    }
}

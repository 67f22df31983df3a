//! Elementwise loops at the CPU's full vector width, chosen at run time.
//!
//! The binary is built for baseline x86-64 (SSE2, 4 f32 lanes) so that one build
//! runs on every development machine. A function defined with [`wide_fn!`] is compiled a
//! second time with AVX-512 (16 lanes) and once more with AVX2 (8), and the copy
//! the CPU can run is the one that runs. There is no fast-math: each lane does
//! the same IEEE operations in the same order and no sum is reassociated, so
//! every copy gives the same bits (tested against the baseline copy).
//!
//! Call such a function inside each parallel task: a closure handed to rayon is
//! compiled on its own, without the features.

#[cfg(test)]
thread_local! {
    /// Set by the tests to run the baseline copy on any CPU.
    static FORCE_BASELINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes this thread's [`wide_fn!`] functions (and the tiled products) run
/// their baseline copy on any CPU, or stops it.
#[cfg(test)]
pub(crate) fn force_baseline(on: bool) {
    FORCE_BASELINE.with(|f| f.set(on));
}

/// Which copy [`wide_fn!`] functions run on this CPU.
pub fn width() -> &'static str {
    match level() {
        Level::Avx512 => "avx512",
        Level::Avx2 => "avx2",
        Level::Baseline => "baseline",
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Level {
    Avx512,
    Avx2,
    Baseline,
}

/// Whether `T` is f32 on a CPU that runs the hand-written AVX-512 kernels
/// (the tiled products, the attention's transposes).
#[inline(always)]
pub(crate) fn f32_avx512<T: 'static>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && level() == Level::Avx512
}

#[inline(always)]
pub(crate) fn level() -> Level {
    #[cfg(test)]
    if FORCE_BASELINE.with(|f| f.get()) {
        return Level::Baseline;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // Each is a cached flag after the first call: one load and a test.
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
            return Level::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

/// Defines `fn NAME<T: Bound>(args) -> R { body }` three times over (AVX-512,
/// AVX2 + FMA, baseline) and a `NAME` that runs the copy this CPU has.
/// The body is pasted into each copy, so every loop and every `#[inline(always)]`
/// function in it is compiled for that copy's vectors; closures passed in as
/// arguments are inlined into it when small.
macro_rules! wide_fn {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident<$T:ident: $bound:path>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
        $body:block
    ) => {
        $(#[$meta])*
        #[inline(always)]
        $vis fn $name<$T: $bound>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512<$T: $bound>($($arg: $ty),*) $(-> $ret)? $body
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<$T: $bound>($($arg: $ty),*) $(-> $ret)? $body
                match $crate::wide::level() {
                    // SAFETY: each copy runs only where the CPU reported its features.
                    $crate::wide::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::wide::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::wide::Level::Baseline => {}
                }
            }
            #[inline(always)]
            fn baseline<$T: $bound>($($arg: $ty),*) $(-> $ret)? $body
            baseline($($arg),*)
        }
    };
}
pub(crate) use wide_fn;

use crate::real::Real;

/// Lanes of [`sum`] and [`dot`]: one AVX-512 register of f32.
const LANES: usize = 16;

/// The sum of `xs` in 16 running lanes, folded pairwise at the end: a fixed
/// order on every machine and thread count, but no chain of dependent adds
/// (a serial sum is one add latency an element; this vectorises).
#[inline(always)]
pub fn sum<T: Real>(xs: &[T]) -> T {
    sum_by(xs, |v| v)
}

/// `Σ a[i]·b[i]` in the order of [`sum`].
#[inline(always)]
pub fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    sum_by2(a, b, |x, y| x * y)
}

/// `Σ f(x[i])`, accumulated in `A` (f64 for the norms' row statistics), in the
/// order of [`sum`].
#[inline(always)]
pub fn sum_by<T: Copy, A: Real>(xs: &[T], f: impl Fn(T) -> A) -> A {
    let mut lanes = [A::ZERO; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f(v);
        }
    }
    fold(lanes, chunks.remainder().iter().map(|&v| f(v)))
}

/// `Σ f(a[i], b[i])` over the shorter length, in the order of [`sum`].
#[inline(always)]
pub fn sum_by2<T: Copy, A: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> A) -> A {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [A::ZERO; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((l, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *l += f(x, y);
        }
    }
    let tail = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| f(x, y));
    fold(lanes, tail)
}

/// The lanes folded in halves (8 + 8, 4 + 4, ...), then the tail in order.
#[inline(always)]
fn fold<T: Real>(mut lanes: [T; LANES], tail: impl Iterator<Item = T>) -> T {
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            lanes[i] += lanes[i + w];
        }
        w /= 2;
    }
    let mut s = lanes[0];
    for v in tail {
        s += v;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::real::{exp_f32, tanh_f32};

    wide_fn! {
        /// Transcendentals, products and a serial sum: where a contracted FMA
        /// or a reordered sum would change a bit.
        fn sample<T: Real>(x: &[T], y: &mut [T]) -> T {
            let mut s = T::ZERO;
            for (o, &v) in y.iter_mut().zip(x) {
                *o = (v * T::of(0.1)).exp() * v.tanh() + v * v * T::of(0.5);
            }
            for &v in y.iter() {
                s += v;
            }
            s
        }
    }

    #[test]
    fn the_widest_copy_gives_the_baseline_bits() {
        let x: Vec<f32> = (0..4099).map(|i| (i as f32 - 2000.0) * 0.0137).collect();
        let run = || {
            let mut y = vec![0.0f32; x.len()];
            let s = sample(&x, &mut y);
            (y, s)
        };
        let wide = run();
        force_baseline(true);
        let base = run();
        force_baseline(false);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&wide.0), bits(&base.0), "on {}", width());
        assert_eq!(wide.1.to_bits(), base.1.to_bits(), "on {}", width());
        // The kernel is the one the model uses.
        assert_eq!(base.0[7].to_bits(), {
            let v = x[7];
            (exp_f32(v * 0.1) * tanh_f32(v) + v * v * 0.5).to_bits()
        });
        assert!(["avx512", "avx2", "baseline"].contains(&width()));
    }

    #[test]
    fn lane_sums_match_an_exact_sum_at_every_length() {
        for n in 0..70 {
            let a: Vec<f64> = (0..n)
                .map(|i| ((i * 37 % 23) as f64 - 11.0) * 0.25)
                .collect();
            let b: Vec<f64> = (0..n).map(|i| ((i * 17 % 13) as f64 - 6.0) * 0.5).collect();
            // Quarters and halves of small integers: every partial sum is exact.
            let want: f64 = a.iter().sum();
            let want_dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert_eq!(sum(&a), want, "length {n}");
            assert_eq!(dot(&a, &b), want_dot, "length {n}");
        }
        // The fold is the stated order: lanes in halves, then the tail.
        let x: Vec<f32> = (0..19).map(|i| 1.0 + i as f32 * 1e-7).collect();
        let mut lanes: Vec<f32> = x[..16].to_vec();
        for w in [8, 4, 2, 1] {
            for i in 0..w {
                lanes[i] += lanes[i + w];
            }
        }
        let want = lanes[0] + x[16] + x[17] + x[18];
        assert_eq!(sum(&x).to_bits(), want.to_bits());
    }
}

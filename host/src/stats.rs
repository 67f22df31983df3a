//! The statistics the benchmark's claims rest on: sample summaries, the
//! one-sided one-sample t-test (is the mean validation loss below the target?),
//! Welch's unequal-variance t-test (is the candidate faster than the baseline?),
//! and 95% confidence intervals for a difference of means and for a speedup
//! ratio. Student's t comes from `statrs`; the formulas are scipy's
//! (`ttest_1samp`, `ttest_ind(equal_var=False)`), and the tests check them
//! against scipy's output.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Mean, sample standard deviation (n − 1) and size of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub std: f64,
}

impl Summary {
    pub fn of(xs: &[f64]) -> Summary {
        let n = xs.len();
        let mean = xs.iter().sum::<f64>() / n.max(1) as f64;
        let var = if n > 1 {
            xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Summary {
            n,
            mean,
            std: var.sqrt(),
        }
    }

    fn var_of_mean(&self) -> f64 {
        self.std * self.std / self.n as f64
    }
}

/// A p-value for a person: three decimals down to 0.001 (`0.853`, `1.000`),
/// then two significant digits in scientific form (`5.0e-4`), `-` if undefined.
pub fn format_p(p: f64) -> String {
    if !p.is_finite() {
        "-".into()
    } else if p >= 1e-3 {
        format!("{p:.3}")
    } else {
        format!("{p:.1e}")
    }
}

fn student(df: f64) -> Option<StudentsT> {
    StudentsT::new(0.0, 1.0, df).ok()
}

/// A t statistic, its degrees of freedom and p-value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TTest {
    pub t: f64,
    pub df: f64,
    pub p_value: f64,
}

/// One-sided one-sample t-test of H1: mean < `target`. `None` with fewer than two
/// values or none of spread (the test is undefined).
pub fn mean_below(xs: &[f64], target: f64) -> Option<TTest> {
    let s = Summary::of(xs);
    if s.n < 2 || s.std == 0.0 || !s.std.is_finite() {
        return None;
    }
    let df = (s.n - 1) as f64;
    let t = (s.mean - target) / s.var_of_mean().sqrt();
    Some(TTest {
        t,
        df,
        p_value: student(df)?.cdf(t),
    })
}

/// Welch's test of `a` against `b`: the statistic for mean(a) − mean(b), the
/// Welch–Satterthwaite degrees of freedom, and both p-values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Welch {
    pub t: f64,
    pub df: f64,
    /// H1: mean(a) ≠ mean(b).
    pub p_two_sided: f64,
    /// H1: mean(a) < mean(b).
    pub p_less: f64,
}

pub fn welch(a: &[f64], b: &[f64]) -> Option<Welch> {
    let (sa, sb) = (Summary::of(a), Summary::of(b));
    if sa.n < 2 || sb.n < 2 {
        return None;
    }
    let (va, vb) = (sa.var_of_mean(), sb.var_of_mean());
    if va + vb == 0.0 {
        return None;
    }
    let t = (sa.mean - sb.mean) / (va + vb).sqrt();
    let df = welch_df(&sa, &sb);
    let dist = student(df)?;
    Some(Welch {
        t,
        df,
        p_two_sided: 2.0 * dist.cdf(-t.abs()),
        p_less: dist.cdf(t),
    })
}

fn welch_df(a: &Summary, b: &Summary) -> f64 {
    let (va, vb) = (a.var_of_mean(), b.var_of_mean());
    (va + vb).powi(2) / (va * va / (a.n - 1) as f64 + vb * vb / (b.n - 1) as f64)
}

/// A point estimate with a two-sided 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

/// mean(a) − mean(b) with Welch's 95% interval (scipy's `confidence_interval`).
pub fn mean_difference(a: &[f64], b: &[f64]) -> Option<Interval> {
    let (sa, sb) = (Summary::of(a), Summary::of(b));
    if sa.n < 2 || sb.n < 2 {
        return None;
    }
    let se = (sa.var_of_mean() + sb.var_of_mean()).sqrt();
    let d = sa.mean - sb.mean;
    if se == 0.0 {
        return Some(Interval {
            estimate: d,
            low: d,
            high: d,
        });
    }
    let q = student(welch_df(&sa, &sb))?.inverse_cdf(0.975);
    Some(Interval {
        estimate: d,
        low: d - q * se,
        high: d + q * se,
    })
}

/// The speedup mean(baseline) / mean(candidate) with a 95% interval by the delta
/// method: se(r) = r · sqrt(var_b / (n_b m_b²) + var_c / (n_c m_c²)), t quantile
/// at the Welch degrees of freedom.
pub fn speedup(baseline: &[f64], candidate: &[f64]) -> Option<Interval> {
    let (b, c) = (Summary::of(baseline), Summary::of(candidate));
    if b.n < 2 || c.n < 2 || b.mean <= 0.0 || c.mean <= 0.0 {
        return None;
    }
    let r = b.mean / c.mean;
    let rel = b.var_of_mean() / (b.mean * b.mean) + c.var_of_mean() / (c.mean * c.mean);
    if rel == 0.0 {
        return Some(Interval {
            estimate: r,
            low: r,
            high: r,
        });
    }
    let q = student(welch_df(&b, &c))?.inverse_cdf(0.975);
    let se = r * rel.sqrt();
    Some(Interval {
        estimate: r,
        low: r - q * se,
        high: r + q * se,
    })
}

/// The median of `xs` (the mean of the middle two for an even count); NaN if empty.
pub fn median(xs: Vec<f64>) -> f64 {
    use statrs::statistics::{Data, Median};
    Data::new(xs).median()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_values_read_as_decimals_until_they_are_small() {
        assert_eq!(format_p(1.0), "1.000");
        assert_eq!(format_p(0.85312), "0.853");
        assert_eq!(format_p(0.001), "0.001");
        assert_eq!(format_p(0.000512), "5.1e-4");
        assert_eq!(format_p(f64::NAN), "-");
    }

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol * b.abs().max(1e-300), "{a} vs {b}");
    }

    // Reference values: scipy 1.17.1,
    //   a = [3.21, 3.18, 3.24, 3.20, 3.19]
    //   stats.ttest_1samp(a, 3.25, alternative='less')
    //     -> statistic -4.467914966843346, pvalue 0.005546232163095066, df 4
    //   stats.ttest_1samp([2.0, 2.5], 3.0, alternative='less')
    //     -> statistic -3.0, pvalue 0.10241638234956672
    #[test]
    fn one_sample_t_test_matches_scipy() {
        let r = mean_below(&[3.21, 3.18, 3.24, 3.20, 3.19], 3.25).unwrap();
        close(r.t, -4.467914966843346, 1e-12);
        close(r.p_value, 0.005546232163095066, 1e-9);
        assert_eq!(r.df, 4.0);
        let r = mean_below(&[2.0, 2.5], 3.0).unwrap();
        close(r.t, -3.0, 1e-12);
        close(r.p_value, 0.10241638234956672, 1e-9);
        // Undefined: one value, or no spread.
        assert!(mean_below(&[3.0], 3.25).is_none());
        assert!(mean_below(&[3.0, 3.0], 3.25).is_none());
    }

    // Reference values: scipy 1.17.1,
    //   x = [10.2, 11.1, 9.8, 10.5]; y = [12.0, 12.9, 11.7, 12.4, 13.1]
    //   r = stats.ttest_ind(x, y, equal_var=False)
    //     -> statistic -5.31578947368421, pvalue 0.0012283879749665574, df 6.77192287331647
    //   r.confidence_interval(0.95) -> (-2.9247286728230546, -1.1152713271769445)
    //   stats.ttest_ind(x, y, equal_var=False, alternative='less').pvalue
    //     -> 0.0006141939874832787
    #[test]
    fn welch_test_and_interval_match_scipy() {
        let x = [10.2, 11.1, 9.8, 10.5];
        let y = [12.0, 12.9, 11.7, 12.4, 13.1];
        let w = welch(&x, &y).unwrap();
        close(w.t, -5.31578947368421, 1e-12);
        close(w.df, 6.77192287331647, 1e-12);
        close(w.p_two_sided, 0.0012283879749665574, 1e-8);
        close(w.p_less, 0.0006141939874832787, 1e-8);
        let ci = mean_difference(&x, &y).unwrap();
        close(ci.low, -2.9247286728230546, 1e-9);
        close(ci.high, -1.1152713271769445, 1e-9);
        close(ci.estimate, 10.4 - 12.42, 1e-12);
    }

    #[test]
    fn speedup_interval_by_the_delta_method() {
        let base = [12.0, 12.9, 11.7, 12.4, 13.1];
        let cand = [10.2, 11.1, 9.8, 10.5];
        let s = speedup(&base, &cand).unwrap();
        // By hand: r = 12.42 / 10.4; rel = var_b/(n_b m_b^2) + var_c/(n_c m_c^2).
        let (b, c) = (Summary::of(&base), Summary::of(&cand));
        close(b.std, 0.5890670590009258, 1e-12); // numpy.std(base, ddof=1)
        let r = 12.42 / 10.4;
        let rel =
            b.std.powi(2) / (5.0 * 12.42f64.powi(2)) + c.std.powi(2) / (4.0 * 10.4f64.powi(2));
        // t(0.975) at the Welch df 6.77192287331647: scipy stats.t.ppf(0.975, df) -> 2.3808649284817243
        let half = 2.3808649284817243 * r * rel.sqrt();
        close(s.estimate, r, 1e-12);
        close(s.low, r - half, 1e-9);
        close(s.high, r + half, 1e-9);
        assert!(s.low > 1.0, "clearly faster: {s:?}");
    }

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}

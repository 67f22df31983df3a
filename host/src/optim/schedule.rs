//! The reference schedule: linear warm-up, then cosine decay to a fraction of the peak.

use super::{Schedule, ScheduleOut};

#[derive(Debug, Clone, Copy)]
pub struct WarmupCosine {
    pub warmup_steps: usize,
    /// Final learning rate as a fraction of the peak (0.1 in the reference).
    pub min_frac: f64,
}

impl Schedule for WarmupCosine {
    /// llm.c's `get_lr`: `(step + 1) / warmup` during warm-up, then
    /// `min + 0.5 (1 + cos(pi r)) (1 - min)` with `r` going 0 → 1 over the rest.
    fn at(&self, step: usize, total_steps: usize) -> anyhow::Result<ScheduleOut> {
        let lr_mult = if step < self.warmup_steps {
            (step + 1) as f64 / self.warmup_steps as f64
        } else {
            let span = total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
            let r = ((step - self.warmup_steps) as f64 / span).min(1.0);
            let coeff = 0.5 * (1.0 + (std::f64::consts::PI * r).cos());
            self.min_frac + coeff * (1.0 - self.min_frac)
        };
        Ok(ScheduleOut::new(lr_mult, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_values() {
        let s = WarmupCosine {
            warmup_steps: 4,
            min_frac: 0.1,
        };
        // Warm-up: 1/4, 2/4, 3/4, 4/4.
        assert_eq!(s.at(0, 14).unwrap().lr_mult, 0.25);
        assert_eq!(s.at(3, 14).unwrap().lr_mult, 1.0);
        // Decay over 10 steps: r = 0 → 1.0; r = 0.5 → 0.1 + 0.5*0.9 = 0.55; r = 1 → 0.1.
        assert!((s.at(4, 14).unwrap().lr_mult - 1.0).abs() < 1e-12);
        assert!((s.at(9, 14).unwrap().lr_mult - 0.55).abs() < 1e-12);
        // Step 6: r = 0.2; 0.1 + 0.5 (1 + cos(0.2 pi)) 0.9 = 0.1 + 0.45 * 1.8090169943749475
        assert!((s.at(6, 14).unwrap().lr_mult - (0.1 + 0.45 * 1.8090169943749475)).abs() < 1e-12);
        assert!((s.at(14, 14).unwrap().lr_mult - 0.1).abs() < 1e-12);
        assert_eq!(s.at(5, 14).unwrap().momentum_mult, 1.0);
    }
}

//! Warm-up, stable, decay (the speedrun's trapezoid): a linear warm-up over
//! `warmup_steps`, the peak until the last `cooldown_frac` of the run, then a
//! linear cool-down to `min_lr_frac` of the peak at the last step, as
//! modded-nanogpt's `get_lr`: with x = step / total, w = (1 − x) / cooldown_frac,
//! lr_mult = w + (1 − w) · min_lr_frac.
//!
//! Momentum warm-up (modded-nanogpt's, for Muon): over `momentum_warmup_steps`
//! the momentum goes linearly from `momentum_start` to `momentum_end`; the
//! schedule answers it as a multiplier of `momentum_end` (the optimizer's own
//! momentum), so 0.85 → 0.95 is a multiplier 0.8947 → 1.

use speedrun_plugin_api::*;

#[derive(Debug, Clone, PartialEq)]
pub struct Wsd {
    pub warmup_steps: usize,
    pub cooldown_frac: f64,
    pub min_lr_frac: f64,
    pub momentum_warmup_steps: usize,
    pub momentum_start: f64,
    pub momentum_end: f64,
}

fn number(config: &serde_json::Value, k: &str) -> Result<f64> {
    match config.get(k).and_then(|v| v.as_f64()) {
        Some(v) => Ok(v),
        None => bail!("wsd-schedule: configuration key {k} must be a number"),
    }
}

impl Plugin for Wsd {
    /// `warmup_steps` and `min_lr_frac` take the track's values.
    fn default_config() -> serde_json::Value {
        serde_json::json!({
            "warmup_steps": 0, "cooldown_frac": 0.4, "min_lr_frac": 0.1,
            "momentum_warmup_steps": 0, "momentum_start": 0.85, "momentum_end": 0.95
        })
    }

    fn new(config: &serde_json::Value) -> Result<Self> {
        let w = Wsd {
            warmup_steps: number(config, "warmup_steps")? as usize,
            cooldown_frac: number(config, "cooldown_frac")?,
            min_lr_frac: number(config, "min_lr_frac")?,
            momentum_warmup_steps: number(config, "momentum_warmup_steps")? as usize,
            momentum_start: number(config, "momentum_start")?,
            momentum_end: number(config, "momentum_end")?,
        };
        if !(0.0..=1.0).contains(&w.cooldown_frac) {
            bail!(
                "wsd-schedule: cooldown_frac must be in [0, 1], got {}",
                w.cooldown_frac
            );
        }
        if w.momentum_end <= 0.0 {
            bail!("wsd-schedule: momentum_end must be positive");
        }
        Ok(w)
    }
}

impl Schedule for Wsd {
    fn at(&mut self, step: usize, total_steps: usize) -> Result<ScheduleOut> {
        let x = step as f64 / total_steps.max(1) as f64;
        let mut lr_mult = if x < 1.0 - self.cooldown_frac || self.cooldown_frac == 0.0 {
            1.0
        } else {
            let w = (1.0 - x) / self.cooldown_frac;
            w + (1.0 - w) * self.min_lr_frac
        };
        if step < self.warmup_steps {
            lr_mult = lr_mult.min((step + 1) as f64 / self.warmup_steps as f64);
        }
        let momentum = if self.momentum_warmup_steps == 0 {
            self.momentum_end
        } else {
            let f = (step as f64 / self.momentum_warmup_steps as f64).min(1.0);
            (1.0 - f) * self.momentum_start + f * self.momentum_end
        };
        Ok(ScheduleOut::new(lr_mult, momentum / self.momentum_end))
    }
}

export_plugin!(Wsd, hooks: [schedule]);

#[cfg(test)]
mod tests {
    use super::*;

    fn wsd(warmup: usize, momentum_warmup: usize) -> Wsd {
        Wsd {
            warmup_steps: warmup,
            cooldown_frac: 0.4,
            min_lr_frac: 0.1,
            momentum_warmup_steps: momentum_warmup,
            momentum_start: 0.85,
            momentum_end: 0.95,
        }
    }

    #[test]
    fn trapezoid_matches_hand_computed_values() {
        let mut s = wsd(4, 0);
        let lr = |s: &mut Wsd, step| s.at(step, 100).unwrap().lr_mult;
        // Warm-up: 1/4, 2/4, 3/4, then the plateau.
        assert_eq!(lr(&mut s, 0), 0.25);
        assert_eq!(lr(&mut s, 2), 0.75);
        assert_eq!(lr(&mut s, 4), 1.0);
        assert_eq!(lr(&mut s, 59), 1.0);
        // Cool-down from x = 0.6: at step 60, w = 1 -> 1.0; at 80, w = 0.5 -> 0.55;
        // at 99, w = 0.025 -> 0.025 + 0.975 * 0.1 = 0.1225.
        assert!((lr(&mut s, 60) - 1.0).abs() < 1e-12);
        assert!((lr(&mut s, 80) - 0.55).abs() < 1e-12);
        assert!((lr(&mut s, 99) - 0.1225).abs() < 1e-12);
        assert_eq!(s.at(50, 100).unwrap().momentum_mult, 1.0);
    }

    #[test]
    fn momentum_warms_up_from_start_to_end() {
        let mut s = wsd(0, 10);
        let m = |s: &mut Wsd, step| s.at(step, 100).unwrap().momentum_mult * 0.95;
        assert!((m(&mut s, 0) - 0.85).abs() < 1e-12);
        assert!((m(&mut s, 5) - 0.90).abs() < 1e-12);
        assert!((m(&mut s, 10) - 0.95).abs() < 1e-12);
        assert!((m(&mut s, 50) - 0.95).abs() < 1e-12);
    }

    #[test]
    fn bad_configuration_is_refused() {
        let mut c = Wsd::default_config();
        c["cooldown_frac"] = serde_json::json!(1.5);
        assert!(Wsd::new(&c).is_err());
        c["cooldown_frac"] = serde_json::json!("x");
        assert!(Wsd::new(&c).is_err());
    }
}

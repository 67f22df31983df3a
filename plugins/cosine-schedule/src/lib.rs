//! The reference schedule as a plugin: llm.c's `get_lr`, a linear warm-up of
//! `warmup_steps`, then a cosine from the peak down to `min_lr_frac` of it.

use speedrun_plugin_api::*;

pub struct Cosine {
    warmup_steps: usize,
    min_lr_frac: f64,
}

impl Plugin for Cosine {
    fn default_config() -> serde_json::Value {
        serde_json::json!({ "warmup_steps": 0, "min_lr_frac": 0.1 })
    }

    fn new(config: &serde_json::Value) -> Result<Self> {
        let Some(warmup_steps) = config["warmup_steps"].as_u64() else {
            bail!("cosine-schedule: warmup_steps must be a non-negative integer");
        };
        let Some(min_lr_frac) = config["min_lr_frac"].as_f64() else {
            bail!("cosine-schedule: min_lr_frac must be a number");
        };
        if !(0.0..=1.0).contains(&min_lr_frac) {
            bail!("cosine-schedule: min_lr_frac must lie in [0, 1], got {min_lr_frac}");
        }
        Ok(Cosine {
            warmup_steps: warmup_steps as usize,
            min_lr_frac,
        })
    }
}

impl Schedule for Cosine {
    fn at(&mut self, step: usize, total_steps: usize) -> Result<ScheduleOut> {
        let lr_mult = if step < self.warmup_steps {
            (step + 1) as f64 / self.warmup_steps as f64
        } else {
            let span = total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
            let r = ((step - self.warmup_steps) as f64 / span).min(1.0);
            let coeff = 0.5 * (1.0 + (std::f64::consts::PI * r).cos());
            self.min_lr_frac + coeff * (1.0 - self.min_lr_frac)
        };
        Ok(ScheduleOut::new(lr_mult, 1.0))
    }
}

export_plugin!(Cosine, hooks: [schedule]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_the_floor() {
        let mut s = Cosine {
            warmup_steps: 4,
            min_lr_frac: 0.1,
        };
        assert_eq!(s.at(0, 14).unwrap().lr_mult, 0.25);
        assert_eq!(s.at(3, 14).unwrap().lr_mult, 1.0);
        // Halfway through the decay: 0.1 + 0.5 * 0.9.
        assert!((s.at(9, 14).unwrap().lr_mult - 0.55).abs() < 1e-12);
        assert!((s.at(14, 14).unwrap().lr_mult - 0.1).abs() < 1e-12);
    }

    #[test]
    fn refuses_a_floor_outside_zero_one() {
        let err = Cosine::new(&serde_json::json!({"warmup_steps": 1, "min_lr_frac": 2.0}))
            .err()
            .unwrap();
        assert!(err.message().contains("min_lr_frac"), "{err}");
    }
}

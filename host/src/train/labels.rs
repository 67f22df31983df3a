//! How a run labels its tokens: the secret vocabulary permutation of its
//! training and validation streams (`data::permutation`), or the real ids, or
//! the null-data control's independent validation labels.

use super::*;

/// How a run labels its tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VocabMode {
    /// Training and validation under the run's secret permutation (every run).
    #[default]
    Secret,
    /// The real token ids: for calibration only; the run is unofficial.
    Identity,
    /// The null-data control: trained under the run's permutation, validated
    /// under an independent one, so an honest stack can learn nothing of use.
    NullControl,
}

/// The run's permutations: what training sees, and what validation sees.
pub struct Labels {
    pub train: std::sync::Arc<VocabPermutation>,
    pub val: std::sync::Arc<VocabPermutation>,
    /// The secret seeds they were drawn from, hex (the private manifest).
    pub seeds: (String, String),
}

impl Labels {
    pub fn of(
        track: &Track,
        seed: u64,
        mode: VocabMode,
        nonce: Option<[u8; 32]>,
    ) -> Result<Labels> {
        let vocab = track.model.vocab;
        let real = track.data.tokenizer.vocab_size().min(vocab);
        let mut key = crate::data::permutation::host_key()?;
        if let Some(n) = nonce {
            use sha2::Digest;
            key = sha2::Sha256::digest([key, n].concat()).into();
        }
        let draw = |purpose: &str| {
            let s = crate::data::permutation::secret_seed(&key, purpose, &track.name, seed);
            (
                std::sync::Arc::new(VocabPermutation::draw(real, vocab, s)),
                hex::encode(s),
            )
        };
        let ((train, ts), (val, vs)) = match mode {
            VocabMode::Identity => {
                let id = std::sync::Arc::new(VocabPermutation::identity(vocab));
                ((id.clone(), String::new()), (id, String::new()))
            }
            VocabMode::Secret => {
                let t = draw("vocab");
                (t.clone(), t)
            }
            VocabMode::NullControl => (draw("vocab"), draw("null-control validation")),
        };
        Ok(Labels {
            train,
            val,
            seeds: (ts, vs),
        })
    }

    /// Gives the plugins the document separator under these labels.
    pub(super) fn tell_separator(&self, track: &Track, plugins: &[LoadedPlugin]) {
        let sep = track.data.tokenizer.separator();
        crate::plugins::set_separator(
            plugins,
            sep.map(|s| self.train.map(s)),
            sep.map(|s| self.val.map(s)),
        );
    }

    /// What `private.json` keeps of them (mode 0600: the seeds are secret).
    pub(super) fn private_record(&self, mode: VocabMode) -> serde_json::Value {
        serde_json::json!({
            "vocab": mode,
            "train_permutation_seed": self.seeds.0,
            "train_permutation_sha256": self.train.sha256(),
            "val_permutation_seed": self.seeds.1,
            "val_permutation_sha256": self.val.sha256(),
        })
    }
}

//! The run's secret vocabulary permutation. The host relabels every token of
//! the training and validation streams through a permutation of the real
//! vocabulary (ids past it, the model's padding rows, stay), drawn from the
//! host's secret key and the seed. With the reference's i.i.d. initialisation
//! the relabelled problem is the same problem in distribution, while anything
//! tied to token identities — a smuggled checkpoint, a memorised table, an
//! n-gram cache built elsewhere — stops working. Checkpoints are saved under
//! the real labels (`unpermute_rows`), so `eval` and PyTorch read them as is.

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::OnceLock;

/// `forward[real] = the id the model sees`; identity past the real vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocabPermutation {
    forward: Vec<u32>,
    /// How many ids are permuted (the tokenizer's vocabulary within the model's).
    real: usize,
}

impl VocabPermutation {
    pub fn identity(vocab: usize) -> VocabPermutation {
        VocabPermutation {
            forward: (0..vocab as u32).collect(),
            real: vocab,
        }
    }

    /// A uniformly random permutation of ids `0..real`, identity on `real..vocab`.
    pub fn draw(real: usize, vocab: usize, seed: [u8; 32]) -> VocabPermutation {
        let real = real.min(vocab);
        let mut ids: Vec<u32> = (0..real as u32).collect();
        ids.shuffle(&mut ChaCha8Rng::from_seed(seed));
        ids.extend(real as u32..vocab as u32);
        VocabPermutation { forward: ids, real }
    }

    pub fn is_identity(&self) -> bool {
        self.forward.iter().enumerate().all(|(i, &v)| i as u32 == v)
    }

    /// Ids the table covers (the model's vocabulary).
    pub fn len(&self) -> usize {
        self.forward.len()
    }

    pub fn is_empty(&self) -> bool {
        self.forward.is_empty()
    }

    /// Ids that are permuted (and so the range a twin forward draws from).
    pub fn real(&self) -> usize {
        self.real
    }

    /// Relabels tokens in place; an id past the table is left as it is (the
    /// shard loader has already refused ids past the model's vocabulary).
    pub fn apply(&self, tokens: &mut [u32]) {
        for t in tokens {
            if let Some(&p) = self.forward.get(*t as usize) {
                *t = p;
            }
        }
    }

    /// The permuted id of a real one (special tokens handed to plugins).
    pub fn map(&self, real_id: u32) -> u32 {
        self.forward
            .get(real_id as usize)
            .copied()
            .unwrap_or(real_id)
    }

    /// A token-indexed table `[vocab, ...]` trained under this permutation,
    /// back under the real labels: row `t` of the result is row `forward[t]`.
    pub fn unpermute_rows(&self, t: &Tensor) -> Result<Tensor> {
        if t.dim(0)? != self.forward.len() {
            bail!(
                "a token-indexed table of {} rows under a permutation of {} ids",
                t.dim(0)?,
                self.forward.len()
            );
        }
        let ids = Tensor::from_slice(&self.forward, self.forward.len(), t.device())?;
        Ok(t.index_select(&ids, 0)?)
    }

    /// A short fingerprint for the private manifest.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        for v in &self.forward {
            h.update(v.to_le_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// The host's secret: 32 bytes no plugin can read (wasm has no files; native
/// code is reviewed). Read from `$SPEEDRUN_HOST_KEY` (64 hex digits), else the
/// key file (`$SPEEDRUN_HOST_KEY_FILE`, default `~/.local/share/speedrun/host.key`),
/// created from OS entropy on first use. One key per machine keeps the same
/// seed's curve reproducible there; `secret_seed` is recorded in each run's
/// private manifest so a run can be replayed elsewhere.
pub fn host_key() -> Result<[u8; 32]> {
    static KEY: OnceLock<std::result::Result<[u8; 32], String>> = OnceLock::new();
    KEY.get_or_init(|| load_or_create_key().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn parse_key(text: &str, from: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(text.trim()).with_context(|| format!("{from}: not hex"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{from}: expected 64 hex digits (32 bytes)"))
}

fn key_file() -> PathBuf {
    if let Some(p) = std::env::var_os("SPEEDRUN_HOST_KEY_FILE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".local/share/speedrun/host.key")
}

fn load_or_create_key() -> Result<[u8; 32]> {
    if let Ok(k) = std::env::var("SPEEDRUN_HOST_KEY") {
        return parse_key(&k, "$SPEEDRUN_HOST_KEY");
    }
    let path = key_file();
    let from = path.display().to_string();
    if let Ok(text) = std::fs::read_to_string(&path) {
        return parse_key(&text, &from);
    }
    let dir = path.parent().context("the host key file has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut key = [0u8; 32];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut key)
        .map_err(|e| anyhow::anyhow!("the OS gave no entropy for the host key: {e}"))?;
    // Written aside and linked into place: of two processes creating it at
    // once, one link wins and both read the winner's key.
    let tmp = dir.join(format!(".host.key.{}", std::process::id()));
    std::fs::write(&tmp, hex::encode(key)).with_context(|| format!("writing {}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    }
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(_) => parse_key(&std::fs::read_to_string(&path)?, &from),
    }
}

/// A 32-byte seed for `purpose` of run seed `seed`, from the host key.
pub fn secret_seed(key: &[u8; 32], purpose: &str, track: &str, seed: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"speedrun secret v1\0");
    h.update(key);
    for part in [purpose, track] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(seed.to_le_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permutation_is_a_bijection_on_the_real_ids_and_identity_past_them() {
        let p = VocabPermutation::draw(250, 256, [7; 32]);
        let mut seen = vec![false; 256];
        for t in 0..256u32 {
            let m = p.map(t);
            assert!(!seen[m as usize]);
            seen[m as usize] = true;
            if t >= 250 {
                assert_eq!(m, t);
            } else {
                assert!(m < 250);
            }
        }
        assert!(!p.is_identity());
        assert_eq!(p, VocabPermutation::draw(250, 256, [7; 32]));
        assert_ne!(p, VocabPermutation::draw(250, 256, [8; 32]));
        assert!(VocabPermutation::identity(10).is_identity());
    }

    #[test]
    fn unpermuting_rows_undoes_the_relabelling() {
        // A table trained under p holds the real token t's row at p(t).
        let p = VocabPermutation::draw(6, 6, [1; 32]);
        let real: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let mut trained = vec![0f32; 12];
        for t in 0..6 {
            let at = p.map(t as u32) as usize;
            trained[2 * at..2 * at + 2].copy_from_slice(&real[2 * t..2 * t + 2]);
        }
        let trained = Tensor::from_vec(trained, (6, 2), &candle_core::Device::Cpu).unwrap();
        let back = p.unpermute_rows(&trained).unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), real);
    }

    #[test]
    fn secret_seeds_differ_by_purpose_track_and_seed() {
        let k = [3u8; 32];
        let a = secret_seed(&k, "vocab", "smoke", 0);
        assert_eq!(a, secret_seed(&k, "vocab", "smoke", 0));
        assert_ne!(a, secret_seed(&k, "null", "smoke", 0));
        assert_ne!(a, secret_seed(&k, "vocab", "cpu", 0));
        assert_ne!(a, secret_seed(&k, "vocab", "smoke", 1));
        assert_ne!(a, secret_seed(&[4; 32], "vocab", "smoke", 0));
    }
}

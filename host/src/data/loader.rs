//! What the trainer reads: the track's shards opened and checked, a stream of
//! training batches, and the fixed validation set (with its decoded byte count,
//! so every loss can also be given in bits per byte).

use super::manifest::{check_shard, sha256_file, DataManifest};
use super::shard::Shard;
use super::tokenizer::Tokenizer;
use crate::track::LoadedTrack;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A shard a run used, as recorded in its manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ShardRecord {
    pub path: String,
    pub tokens: usize,
    /// SHA-256, when it was checked (always for manifest-backed tracks).
    pub sha256: Option<String>,
}

/// The track's data, opened and verified.
pub struct TrackData {
    pub train: Vec<Shard>,
    pub val: Shard,
    pub records: Vec<ShardRecord>,
    pub dir: PathBuf,
}

/// Matches a file name against a pattern with at most one `*`.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((pre, post)) => {
            name.len() >= pre.len() + post.len() && name.starts_with(pre) && name.ends_with(post)
        }
    }
}

fn expand(dir: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    if !pattern.contains('*') {
        return Ok(vec![dir.join(pattern)]);
    }
    let (sub, file_pat) = match pattern.rsplit_once('/') {
        Some((s, f)) => (dir.join(s), f),
        None => (dir.to_path_buf(), pattern),
    };
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&sub) {
        for e in rd {
            let p = e?.path();
            if p.file_name()
                .is_some_and(|n| matches(file_pat, &n.to_string_lossy()))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

impl TrackData {
    /// Opens the track's shards from `dir`, checks them against the manifest when the
    /// track has one, and checks the validation prefix fits.
    pub fn open(lt: &LoadedTrack, dir_override: Option<&Path>) -> Result<TrackData> {
        let spec = &lt.track.data;
        let dir = lt.data_dir(dir_override);
        let hint = || {
            spec.missing_hint
                .clone()
                .unwrap_or_else(|| "rebuild the shipped data with `speedrun data prepare`".into())
        };
        if !dir.is_dir() {
            bail!(
                "track {}: data folder {} does not exist; {}",
                lt.track.name,
                dir.display(),
                hint()
            );
        }
        let mut train_paths = Vec::new();
        for pat in &spec.train {
            let found = expand(&dir, pat)?;
            if found.is_empty() || !found.iter().all(|p| p.exists()) {
                bail!(
                    "track {}: no training shard matches {} in {}; {}",
                    lt.track.name,
                    pat,
                    dir.display(),
                    hint()
                );
            }
            train_paths.extend(found);
        }
        let val_path = dir.join(&spec.val);
        if !val_path.exists() {
            bail!(
                "track {}: validation shard {} is missing; {}",
                lt.track.name,
                val_path.display(),
                hint()
            );
        }
        let manifest = match &spec.manifest {
            Some(m) => Some(DataManifest::load(&dir.join(m))?),
            None => None,
        };
        let mut records = Vec::new();
        let mut open_checked = |path: &Path, hash_without_manifest: bool| -> Result<Shard> {
            let rel = path
                .strip_prefix(&dir)
                .unwrap_or(path)
                .to_string_lossy()
                .replace('\\', "/");
            let sha = match &manifest {
                Some(m) => {
                    let entry = m.shard(&rel).with_context(|| {
                        format!(
                            "shard {} is not listed in the data manifest",
                            path.display()
                        )
                    })?;
                    check_shard(&dir, entry)?;
                    Some(entry.sha256.clone())
                }
                // User-supplied shards (FineWeb): hash the validation shard; the training
                // shards are checked for format only (hashing 10 GB would dwarf a short run).
                None if hash_without_manifest => Some(sha256_file(path)?),
                None => None,
            };
            let shard = Shard::open(path)?;
            records.push(ShardRecord {
                path: rel,
                tokens: shard.len(),
                sha256: sha,
            });
            Ok(shard)
        };
        let train = train_paths
            .iter()
            .map(|p| open_checked(p, false))
            .collect::<Result<Vec<_>>>()?;
        let val = open_checked(&val_path, true)?;
        let need = lt.track.validation.tokens + 1;
        if val.len() < need {
            bail!(
                "track {}: validation.tokens = {} needs {} tokens but {} holds {}",
                lt.track.name,
                lt.track.validation.tokens,
                need,
                val_path.display(),
                val.len()
            );
        }
        let seq = lt.track.model.seq_len;
        if let Some(s) = train.iter().find(|s| s.len() < seq + 1) {
            bail!("shard {} is shorter than one sequence", s.path().display());
        }
        let vocab = lt.track.model.vocab;
        for s in train.iter().chain(std::iter::once(&val)) {
            // A cheap sanity probe: the first tokens must fit the model's vocabulary.
            for i in 0..s.len().min(4096) {
                if s.token(i) as usize >= vocab {
                    bail!(
                        "shard {}: token {} at position {i} is outside the model's vocabulary of {vocab}",
                        s.path().display(),
                        s.token(i)
                    );
                }
            }
        }
        Ok(TrackData {
            train,
            val,
            records,
            dir,
        })
    }
}

/// One batch: `inputs[b*T + t]` predicts `targets[b*T + t]`.
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch: usize,
    pub seq: usize,
}

impl Batch {
    /// Rank `rank`'s share of the sequences when `world` ranks split the batch
    /// (the caller checks `world` divides it).
    pub fn shard(&self, rank: usize, world: usize) -> Batch {
        let per = self.batch / world;
        let span = rank * per * self.seq..(rank + 1) * per * self.seq;
        Batch {
            inputs: self.inputs[span.clone()].to_vec(),
            targets: self.targets[span].to_vec(),
            batch: per,
            seq: self.seq,
        }
    }
}

/// Training batches: each sequence is a window of T + 1 tokens at a random offset
/// in the training shards, drawn from the run's seed. (The speedrun reads FineWeb
/// sequentially because its documents are short and shuffled; ours are whole
/// plays of ~130k tokens, and reading them in order made the model chase one
/// play at a time, so the validation loss swung by ~0.07 within 20 steps.)
pub struct TrainStream<'a> {
    shards: &'a [Shard],
    /// Valid window starts per shard, cumulated, for picking a shard by its size.
    cumulative: Vec<u64>,
    rng: rand_chacha::ChaCha8Rng,
    batch: usize,
    seq: usize,
    /// Tokens handed out so far (inputs only: the budget's unit).
    pub tokens_consumed: u64,
    /// The run's secret relabelling of the vocabulary (none: the real ids).
    permutation: Option<std::sync::Arc<super::permutation::VocabPermutation>>,
}

impl<'a> TrainStream<'a> {
    pub fn new(shards: &'a [Shard], batch: usize, seq: usize, seed: u64) -> TrainStream<'a> {
        // A stream of its own, apart from the parameters' initialisation streams.
        TrainStream::with_stream(shards, batch, seq, seed, 0x7472_6169_6e5f_6461)
        // "train_da"
    }

    /// As `new`, drawing from random stream `stream` of the seed (the host's
    /// untimed warm-up reads the training shards apart from training).
    pub fn with_stream(
        shards: &'a [Shard],
        batch: usize,
        seq: usize,
        seed: u64,
        stream: u64,
    ) -> TrainStream<'a> {
        use rand::SeedableRng;
        let mut cumulative = Vec::with_capacity(shards.len());
        let mut total = 0u64;
        for s in shards {
            total += s.len().saturating_sub(seq) as u64;
            cumulative.push(total);
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        TrainStream {
            shards,
            cumulative,
            rng,
            batch,
            seq,
            tokens_consumed: 0,
            permutation: None,
        }
    }

    /// The same stream with every token relabelled through `p`.
    pub fn permuted(
        mut self,
        p: std::sync::Arc<super::permutation::VocabPermutation>,
    ) -> TrainStream<'a> {
        self.permutation = Some(p);
        self
    }

    pub fn next_batch(&mut self) -> Batch {
        self.next_batch_of(self.batch)
    }

    /// A batch of `batch` sequences (a schedule may vary the batch size).
    pub fn next_batch_of(&mut self, batch: usize) -> Batch {
        use rand::Rng;
        let total = *self.cumulative.last().expect("at least one training shard");
        let mut buf = Vec::with_capacity(self.seq + 1);
        let mut inputs = Vec::with_capacity(batch * self.seq);
        let mut targets = Vec::with_capacity(batch * self.seq);
        for _ in 0..batch {
            let pick = self.rng.random_range(0..total);
            let shard = self.cumulative.partition_point(|&c| c <= pick);
            let before = if shard == 0 {
                0
            } else {
                self.cumulative[shard - 1]
            };
            let start = (pick - before) as usize;
            buf.clear();
            self.shards[shard].read_into(start, self.seq + 1, &mut buf);
            inputs.extend_from_slice(&buf[..self.seq]);
            targets.extend_from_slice(&buf[1..]);
        }
        self.tokens_consumed += (batch * self.seq) as u64;
        if let Some(p) = &self.permutation {
            p.apply(&mut inputs);
            p.apply(&mut targets);
        }
        Batch {
            inputs,
            targets,
            batch,
            seq: self.seq,
        }
    }
}

/// The fixed validation set: the first `tokens + 1` tokens of the validation shard.
pub struct ValidationSet {
    tokens: Vec<u32>,
    seq: usize,
    /// Bytes of text the scored (target) tokens decode to.
    pub target_bytes: u64,
}

impl ValidationSet {
    pub fn new(
        val: &Shard,
        tokens: usize,
        seq: usize,
        tokenizer: &Tokenizer,
    ) -> Result<ValidationSet> {
        let mut buf = Vec::with_capacity(tokens + 1);
        val.read_into(0, tokens + 1, &mut buf);
        let targets: Vec<u16> = buf[1..].iter().map(|&t| t as u16).collect();
        let target_bytes = tokenizer.decoded_bytes(&targets)?;
        if target_bytes == 0 {
            bail!(
                "validation set of {} decodes to no text",
                val.path().display()
            );
        }
        Ok(ValidationSet {
            tokens: buf,
            seq,
            target_bytes,
        })
    }

    /// Relabels every token through `p` (bits per byte, counted from the real
    /// tokens, stay as they are).
    pub fn permute(&mut self, p: &super::permutation::VocabPermutation) {
        p.apply(&mut self.tokens);
    }

    /// Scored tokens.
    pub fn len(&self) -> usize {
        self.tokens.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batches of at most `batch` sequences covering the whole set, in order.
    pub fn batches(&self, batch: usize) -> Vec<Batch> {
        let n_seq = self.len() / self.seq;
        let mut out = Vec::new();
        let mut s = 0;
        while s < n_seq {
            let b = batch.min(n_seq - s);
            let mut inputs = Vec::with_capacity(b * self.seq);
            let mut targets = Vec::with_capacity(b * self.seq);
            for i in s..s + b {
                let o = i * self.seq;
                inputs.extend_from_slice(&self.tokens[o..o + self.seq]);
                targets.extend_from_slice(&self.tokens[o + 1..o + self.seq + 1]);
            }
            out.push(Batch {
                inputs,
                targets,
                batch: b,
                seq: self.seq,
            });
            s += b;
        }
        out
    }

    /// Bits per byte for a mean loss in nats per token over this set.
    pub fn bits_per_byte(&self, nats_per_token: f64) -> f64 {
        nats_per_token * self.len() as f64 / (self.target_bytes as f64 * std::f64::consts::LN_2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_seeded_in_range_and_cover_every_shard() {
        let dir = tempfile::tempdir().unwrap();
        let mut shards = Vec::new();
        for (i, len) in [50usize, 300].into_iter().enumerate() {
            let p = dir.path().join(format!("s{i}.bin"));
            let toks: Vec<u16> = (0..len).map(|t| (i * 1000 + t) as u16).collect();
            crate::data::shard::write_shard(&p, &toks).unwrap();
            shards.push(Shard::open(&p).unwrap());
        }
        let draw = |seed| {
            let mut s = TrainStream::new(&shards, 4, 8, seed);
            (0..50).map(|_| s.next_batch()).collect::<Vec<_>>()
        };
        let (a, b, c) = (draw(1), draw(1), draw(2));
        assert!(a.iter().zip(&b).all(|(x, y)| x.inputs == y.inputs));
        assert!(a.iter().zip(&c).any(|(x, y)| x.inputs != y.inputs));
        let mut seen = [0usize; 2];
        for batch in &a {
            for s in 0..4 {
                let w = &batch.inputs[s * 8..s * 8 + 8];
                let t = &batch.targets[s * 8..s * 8 + 8];
                // A window lies inside one shard, and targets are inputs shifted by one.
                let shard = (w[0] / 1000) as usize;
                seen[shard] += 1;
                assert!(w.iter().chain(t).all(|&x| x / 1000 == shard as u32));
                assert_eq!(&w[1..], &t[..7]);
                assert!(((t[7] % 1000) as usize) < [50, 300][shard]);
            }
        }
        // Shards are drawn in proportion to their size (42 vs 292 window starts).
        assert!(seen[0] > 0 && seen[1] > 4 * seen[0], "{seen:?}");
    }

    #[test]
    fn pattern_matching() {
        assert!(matches("fineweb_train_*.bin", "fineweb_train_000001.bin"));
        assert!(!matches("fineweb_train_*.bin", "fineweb_val_000000.bin"));
        assert!(matches("a.bin", "a.bin"));
        assert!(!matches("a*b", "ab_"));
    }
}

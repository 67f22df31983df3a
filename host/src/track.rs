//! Track definitions: the files under `tracks/` that fix the data, the model
//! shape, the budget, the validation and the target a run is scored against.
//! Parsing is strict: an unknown key or an impossible value is an error naming
//! the key.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use speedrun_kernels::Precision;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HardwareClass {
    Cpu,
    Gpu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub tokenizer: TokenizerKind,
    /// Folder of the shards, relative to the project root (or absolute).
    pub dir: String,
    /// Manifest file inside `dir`; when given, every shard used must match it.
    #[serde(default)]
    pub manifest: Option<String>,
    /// Training shards inside `dir`: file names, or patterns with one `*`.
    pub train: Vec<String>,
    /// The validation shard inside `dir`; validation is its first `validation.tokens` tokens.
    pub val: String,
    /// What to tell the user when the shards are missing.
    #[serde(default)]
    pub missing_hint: Option<String>,
}

/// The track's `[model]` table is the plugins' `ModelShape`: one name for the
/// model's shape on both sides of the boundary.
pub use speedrun_plugin_abi::ModelShape;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Tokens per optimizer step (a multiple of the sequence length).
    pub batch_tokens: usize,
    /// Training tokens the run may consume; the number of steps follows from it.
    pub token_budget: usize,
    /// Untimed warm-up steps (compilation, caches) on a throwaway copy of the
    /// stack; the timed run then starts from the same initial state.
    #[serde(default)]
    pub warmup_steps: usize,
    /// The dtype of the model's products: `f32` (default) or `bf16` (autocast:
    /// products in bf16, master weights, optimizer state and everything else f32).
    #[serde(default)]
    pub precision: Precision,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    pub lr: f64,
    pub warmup_steps: usize,
    /// The cosine decays to this fraction of the peak learning rate.
    pub min_lr_frac: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip.
    pub grad_clip: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSpec {
    /// Tokens of the validation shard's prefix scored (a multiple of the sequence length).
    pub tokens: usize,
    /// Validate every this many steps (0: only at the end). The end is always validated.
    pub every_steps: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Target validation loss in nats per token; `None` while uncalibrated.
    pub val_loss: Option<f64>,
    /// How the target was measured (command, date, figures).
    #[serde(default)]
    pub calibration: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Track {
    pub name: String,
    pub description: String,
    pub hardware: HardwareClass,
    pub data: DataSpec,
    pub model: ModelShape,
    pub train: TrainSpec,
    pub optimizer: OptimizerSpec,
    pub validation: ValidationSpec,
    pub target: TargetSpec,
}

/// A parsed and validated track, with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedTrack {
    pub track: Track,
    pub path: PathBuf,
    /// SHA-256 of the track file's bytes.
    pub sha256: String,
    /// The project root relative paths in the track resolve against.
    pub root: PathBuf,
    /// `--set SECTION.KEY=VALUE` changes applied to the file (none: the file
    /// as it is). A run on a changed track says so and never scores.
    pub overrides: Vec<String>,
}

impl LoadedTrack {
    /// The track with `sets` (`SECTION.KEY=VALUE`, the value in TOML: `3e-3`,
    /// `true`, `"text"`; a bare word is text) applied to its file's text and
    /// validated again like any track file; its hash is the changed text's.
    pub fn with_settings(mut self, sets: &[String]) -> Result<LoadedTrack> {
        if sets.is_empty() {
            return Ok(self);
        }
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let mut doc: toml_edit::DocumentMut = text
            .parse()
            .with_context(|| format!("parsing {}", self.path.display()))?;
        for set in sets {
            let Some((key, raw)) = set.split_once('=') else {
                bail!("--set {set}: expected SECTION.KEY=VALUE, e.g. --set optimizer.lr=3e-3");
            };
            let path: Vec<&str> = key.trim().split('.').collect();
            if path.len() != 2 || path.iter().any(|p| p.is_empty()) {
                bail!("--set {set}: the key must be SECTION.KEY, e.g. train.batch_tokens");
            }
            let value: toml_edit::Value = raw
                .trim()
                .parse()
                .unwrap_or_else(|_| toml_edit::Value::from(raw.trim()));
            let Some(table) = doc.get_mut(path[0]).and_then(|t| t.as_table_like_mut()) else {
                bail!("--set {set}: the track has no [{}] table", path[0]);
            };
            table.insert(path[1], toml_edit::Item::Value(value));
        }
        let changed = doc.to_string();
        self.track = Track::parse(
            &changed,
            &format!("{} with --set {}", self.path.display(), sets.join(" ")),
        )?;
        self.sha256 = hex::encode(Sha256::digest(changed.as_bytes()));
        self.overrides = sets.to_vec();
        Ok(self)
    }

    /// The folder holding the track's shards, unless overridden.
    pub fn data_dir(&self, override_dir: Option<&Path>) -> PathBuf {
        match override_dir {
            Some(d) => d.to_path_buf(),
            None => self.root.join(&self.track.data.dir),
        }
    }
}

impl Track {
    /// Training FLOPs per token: 6 per matmul weight (forward + backward) plus
    /// attention's 12 · layers · width · T (the speedrun's and PyTorch
    /// reference's estimate).
    pub fn flops_per_token(&self, parameters: usize) -> f64 {
        let m = &self.model;
        let pos = m.seq_len * m.width;
        6.0 * (parameters.saturating_sub(pos)) as f64
            + 12.0 * (m.layers * m.width * m.seq_len) as f64
    }

    /// Optimizer steps of a full run: the token budget in whole batches.
    pub fn steps(&self) -> usize {
        self.train.token_budget / self.train.batch_tokens
    }

    /// Sequences per batch.
    pub fn batch_size(&self) -> usize {
        self.train.batch_tokens / self.model.seq_len
    }

    /// Parses TOML text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Track> {
        let track: Track = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("track file {origin}: {}", e.to_string().trim_end()))?;
        track
            .validate()
            .with_context(|| format!("track file {origin}"))?;
        Ok(track)
    }

    /// Checks every value that parses but cannot work; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        let positive = [
            ("model.layers", m.layers),
            ("model.heads", m.heads),
            ("model.width", m.width),
            ("model.seq_len", m.seq_len),
            ("model.vocab", m.vocab),
            ("train.batch_tokens", self.train.batch_tokens),
            ("train.token_budget", self.train.token_budget),
            ("validation.tokens", self.validation.tokens),
        ];
        for (key, v) in positive {
            if v == 0 {
                bail!("{key} must be positive, got 0");
            }
        }
        if !m.width.is_multiple_of(m.heads) {
            bail!(
                "model.heads = {} does not divide model.width = {}",
                m.heads,
                m.width
            );
        }
        if m.vocab < self.data.tokenizer.vocab_size() {
            bail!(
                "model.vocab = {} is smaller than the {} tokenizer's vocabulary of {}",
                m.vocab,
                self.data.tokenizer.name(),
                self.data.tokenizer.vocab_size()
            );
        }
        if m.vocab > 65536 {
            bail!(
                "model.vocab = {} exceeds the uint16 token format (65536)",
                m.vocab
            );
        }
        if !self.train.batch_tokens.is_multiple_of(m.seq_len) {
            bail!(
                "train.batch_tokens = {} is not a multiple of model.seq_len = {}",
                self.train.batch_tokens,
                m.seq_len
            );
        }
        if self.train.token_budget < self.train.batch_tokens {
            bail!(
                "train.token_budget = {} is less than one batch (train.batch_tokens = {})",
                self.train.token_budget,
                self.train.batch_tokens
            );
        }
        if !self.validation.tokens.is_multiple_of(m.seq_len) {
            bail!(
                "validation.tokens = {} is not a multiple of model.seq_len = {}",
                self.validation.tokens,
                m.seq_len
            );
        }
        let o = &self.optimizer;
        if !(o.lr.is_finite() && o.lr > 0.0 && o.lr < 10.0) {
            bail!("optimizer.lr = {} must be in (0, 10)", o.lr);
        }
        for (key, b) in [("optimizer.beta1", o.beta1), ("optimizer.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&b) {
                bail!("{key} = {b} must be in [0, 1)");
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            bail!("optimizer.eps = {} must be positive", o.eps);
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            bail!("optimizer.weight_decay = {} must be >= 0", o.weight_decay);
        }
        if !(o.grad_clip.is_finite() && o.grad_clip > 0.0) {
            bail!("optimizer.grad_clip = {} must be positive", o.grad_clip);
        }
        if !(0.0..=1.0).contains(&o.min_lr_frac) {
            bail!(
                "optimizer.min_lr_frac = {} must be in [0, 1]",
                o.min_lr_frac
            );
        }
        if o.warmup_steps > self.steps() {
            bail!(
                "optimizer.warmup_steps = {} exceeds the run's {} steps",
                o.warmup_steps,
                self.steps()
            );
        }
        if let Some(t) = self.target.val_loss {
            if !(t.is_finite() && t > 0.0) {
                bail!("target.val_loss = {t} must be a positive number of nats per token");
            }
        }
        if self.data.train.is_empty() {
            bail!("data.train must list at least one shard");
        }
        Ok(())
    }
}

/// Where a track name or path resolves: a `.toml` path as given, else
/// `tracks/NAME.toml` in the working directory or in this source tree.
pub fn resolve_track_path(name_or_path: &str) -> Result<PathBuf> {
    let p = Path::new(name_or_path);
    if name_or_path.ends_with(".toml") || p.components().count() > 1 {
        if p.exists() {
            return Ok(p.to_path_buf());
        }
        bail!("track file {} does not exist", p.display());
    }
    let candidates = [
        PathBuf::from("tracks").join(format!("{name_or_path}.toml")),
        project_root()
            .join("tracks")
            .join(format!("{name_or_path}.toml")),
    ];
    for c in &candidates {
        if c.exists() {
            return Ok(c.clone());
        }
    }
    let known = list_tracks().unwrap_or_default().join(", ");
    bail!("unknown track `{name_or_path}` (known tracks: {known})")
}

/// The source tree this binary was built from (holds `tracks/` and `data/`).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Names of the tracks under the project's `tracks/` folder.
pub fn list_tracks() -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(project_root().join("tracks"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            if let Some(s) = p.file_stem() {
                names.push(s.to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Loads a track by name or path.
pub fn load(name_or_path: &str) -> Result<LoadedTrack> {
    let path = resolve_track_path(name_or_path)?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(bytes.clone())
        .with_context(|| format!("track file {} is not UTF-8", path.display()))?;
    let track = Track::parse(&text, &path.display().to_string())?;
    // A track in a `tracks/` folder resolves data against that folder's parent;
    // a track file anywhere else resolves against this source tree.
    let root = path
        .canonicalize()
        .ok()
        .and_then(|p| {
            let dir = p.parent()?;
            (dir.file_name()? == "tracks").then(|| dir.parent().map(Path::to_path_buf))?
        })
        .unwrap_or_else(project_root);
    Ok(LoadedTrack {
        track,
        sha256: hex::encode(Sha256::digest(&bytes)),
        path,
        root,
        overrides: Vec::new(),
    })
}

/// GPT-2's end-of-text token; the speedrun's data puts it before every document.
pub const GPT2_EOT: u16 = 50256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// One token per UTF-8 byte; documents are concatenated as they are.
    Bytes,
    /// GPT-2 BPE; each document is preceded by the end-of-text token 50256.
    Gpt2,
}

impl TokenizerKind {
    /// Size of the tokenizer's vocabulary (before any padding of the model's).
    pub fn vocab_size(self) -> usize {
        match self {
            TokenizerKind::Bytes => 256,
            TokenizerKind::Gpt2 => 50257,
        }
    }

    /// The document separator's real id, if the tokenizer has one.
    pub fn separator(self) -> Option<u32> {
        match self {
            TokenizerKind::Bytes => None,
            TokenizerKind::Gpt2 => Some(GPT2_EOT as u32),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TokenizerKind::Bytes => "bytes",
            TokenizerKind::Gpt2 => "gpt2",
        }
    }
}

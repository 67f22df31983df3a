//! The data manifest: every shard's SHA-256, token count, decoded byte count and
//! role. Runs check the shards they use against it and refuse a mismatch.

use super::shard::Shard;
use super::tokenizer::TokenizerKind;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Train,
    Val,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Train => "train",
            Role::Val => "val",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceEntry {
    pub file: String,
    pub origin: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocEntry {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// Path relative to the manifest's folder.
    pub path: String,
    pub role: Role,
    pub tokenizer: TokenizerKind,
    pub sha256: String,
    pub tokens: u64,
    /// Bytes of text the shard's tokens decode to (for bits per byte).
    pub text_bytes: u64,
    pub documents: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataManifest {
    pub format: u32,
    pub corpus: String,
    pub sources: Vec<SourceEntry>,
    pub documents: Vec<DocEntry>,
    pub shards: Vec<ShardEntry>,
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

impl DataManifest {
    pub fn load(path: &Path) -> Result<DataManifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading data manifest {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing data manifest {}", path.display()))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    pub fn shard(&self, rel: &str) -> Option<&ShardEntry> {
        self.shards.iter().find(|s| s.path == rel)
    }
}

/// Checks one shard against its entry: format, token count and SHA-256.
pub fn check_shard(dir: &Path, entry: &ShardEntry) -> Result<()> {
    let path = dir.join(&entry.path);
    let shard = Shard::open(&path)?;
    // A mismatch is the data_hashes check failing (the run is invalid, exit 2);
    // a shard that cannot be read is an error of its own.
    let mismatch = |detail: String| -> anyhow::Error {
        crate::verify::Violation::new(crate::verify::Check::DataHashes, detail).into()
    };
    if shard.len() as u64 != entry.tokens {
        return Err(mismatch(format!(
            "shard {}: holds {} tokens but the manifest says {}",
            path.display(),
            shard.len(),
            entry.tokens
        )));
    }
    let sha = sha256_file(&path)?;
    if sha != entry.sha256 {
        return Err(mismatch(format!(
            "shard {}: SHA-256 {sha} does not match the manifest's {}; the file changed \
             (rebuild with `speedrun data prepare`)",
            path.display(),
            entry.sha256
        )));
    }
    Ok(())
}

/// Outcome of checking every shard of a manifest: `(path, None)` when it passed.
pub fn verify_all(manifest_path: &Path) -> Result<Vec<(String, Option<String>)>> {
    let manifest = DataManifest::load(manifest_path)?;
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    Ok(manifest
        .shards
        .iter()
        .map(|e| {
            let outcome = check_shard(dir, e).err().map(|err| format!("{err:#}"));
            (e.path.clone(), outcome)
        })
        .collect())
}

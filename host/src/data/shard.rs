//! The NanoGPT speedrun's token shard format, read and written.
//!
//! Layout: a header of 256 little-endian `i32` (magic 20240520, version 1, token
//! count, the rest zero), then the tokens as little-endian `u16`. Shards are
//! memory-mapped, so a 100M-token FineWeb shard is never copied into memory twice.

use memmap2::Mmap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAGIC: i32 = 20240520;
pub const VERSION: i32 = 1;
pub const HEADER_INTS: usize = 256;
pub const HEADER_BYTES: usize = HEADER_INTS * 4;

/// Why a shard could not be read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("shard {path}: only {size} bytes, shorter than the {HEADER_BYTES}-byte header (truncated or not a shard)")]
    HeaderTruncated { path: PathBuf, size: u64 },
    #[error(
        "shard {path}: bad magic number {found} (expected {MAGIC}); not a speedrun token shard"
    )]
    BadMagic { path: PathBuf, found: i32 },
    #[error("shard {path}: unsupported version {found} (expected {VERSION})")]
    BadVersion { path: PathBuf, found: i32 },
    #[error("shard {path}: negative token count {found} in the header")]
    NegativeCount { path: PathBuf, found: i32 },
    #[error("shard {path}: truncated: the header promises {tokens} tokens ({expected} bytes) but the file has {actual} bytes")]
    Truncated {
        path: PathBuf,
        tokens: u64,
        expected: u64,
        actual: u64,
    },
    #[error("shard {path}: size disagrees with the header: {tokens} tokens means {expected} bytes but the file has {actual} (trailing data)")]
    TrailingData {
        path: PathBuf,
        tokens: u64,
        expected: u64,
        actual: u64,
    },
}

/// A validated, memory-mapped token shard.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    len: usize,
}

impl Shard {
    /// Opens and validates a shard: magic, version, and file size against the header.
    pub fn open(path: impl AsRef<Path>) -> Result<Shard, ShardError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| ShardError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        if size < HEADER_BYTES as u64 {
            return Err(ShardError::HeaderTruncated { path, size });
        }
        // SAFETY: the map is read-only; a shard modified while mapped is outside our contract
        // (the manifest's hash check before a run catches a changed shard).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header_int = |i: usize| i32::from_le_bytes(map[i * 4..i * 4 + 4].try_into().unwrap());
        let (magic, version, count) = (header_int(0), header_int(1), header_int(2));
        if magic != MAGIC {
            return Err(ShardError::BadMagic { path, found: magic });
        }
        if version != VERSION {
            return Err(ShardError::BadVersion {
                path,
                found: version,
            });
        }
        if count < 0 {
            return Err(ShardError::NegativeCount { path, found: count });
        }
        let tokens = count as u64;
        let expected = HEADER_BYTES as u64 + 2 * tokens;
        if size < expected {
            return Err(ShardError::Truncated {
                path,
                tokens,
                expected,
                actual: size,
            });
        }
        if size > expected {
            return Err(ShardError::TrailingData {
                path,
                tokens,
                expected,
                actual: size,
            });
        }
        Ok(Shard {
            path,
            map,
            len: count as usize,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens in the shard.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Token at index `i` (panics when out of range, like slice indexing).
    pub fn token(&self, i: usize) -> u16 {
        assert!(
            i < self.len,
            "token {i} out of range for {}",
            self.path.display()
        );
        let o = HEADER_BYTES + 2 * i;
        u16::from_le_bytes([self.map[o], self.map[o + 1]])
    }

    /// Appends tokens `start..start + len` to `out`.
    pub fn read_into(&self, start: usize, len: usize, out: &mut Vec<u32>) {
        assert!(
            start + len <= self.len,
            "range {start}..{} out of range for {} ({} tokens)",
            start + len,
            self.path.display(),
            self.len
        );
        let bytes = &self.map[HEADER_BYTES + 2 * start..HEADER_BYTES + 2 * (start + len)];
        out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32),
        );
    }

    /// All tokens, copied out (for small shards and tests).
    pub fn to_vec(&self) -> Vec<u16> {
        let mut out = Vec::with_capacity(self.len);
        let body = &self.map[HEADER_BYTES..];
        out.extend(
            body.chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]])),
        );
        out
    }
}

/// The header bytes of a shard holding `tokens` tokens.
pub fn header_bytes(tokens: usize) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&(tokens as i32).to_le_bytes());
    h
}

/// Writes `tokens` as a shard at `path` (atomically: a temporary file, then a rename).
pub fn write_shard(path: impl AsRef<Path>, tokens: &[u16]) -> std::io::Result<()> {
    let path = path.as_ref();
    if tokens.len() > i32::MAX as usize {
        return Err(std::io::Error::other(format!(
            "{}: {} tokens do not fit the header's int32 count",
            path.display(),
            tokens.len()
        )));
    }
    let tmp = path.with_extension("bin.tmp");
    {
        let mut f = std::io::BufWriter::new(File::create(&tmp)?);
        f.write_all(&header_bytes(tokens.len()))?;
        for t in tokens {
            f.write_all(&t.to_le_bytes())?;
        }
        f.flush()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        let toks: Vec<u16> = (0..1000u32).map(|i| (i * 7919 % 65536) as u16).collect();
        write_shard(&p, &toks).unwrap();
        let s = Shard::open(&p).unwrap();
        assert_eq!(s.len(), 1000);
        assert_eq!(s.to_vec(), toks);
        assert_eq!(s.token(999), toks[999]);
        let mut v = Vec::new();
        s.read_into(10, 5, &mut v);
        assert_eq!(
            v,
            toks[10..15].iter().map(|&t| t as u32).collect::<Vec<_>>()
        );
    }
}

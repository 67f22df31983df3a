//! The snapshot of a submitted crate: a deterministic tar.gz of its source
//! (sorted paths, zeroed times and owners, no `target/` or VCS folders) and its
//! SHA-256, the way speedrun logs carry their code. Extracting one gives a
//! crate that builds against this host's plugin API.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// More than this much source is not a plugin crate.
const MAX_BYTES: u64 = 16 << 20;
const MAX_FILES: usize = 2000;
const SKIP: [&str; 4] = ["target", ".git", ".hg", ".jj"];

pub struct Snapshot {
    /// The tar.gz bytes.
    pub archive: Vec<u8>,
    pub sha256: String,
    pub crate_name: String,
    /// The crate's `package.description`.
    pub description: String,
    pub files: usize,
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let ty = e.file_type()?;
        let name = e.file_name();
        if ty.is_dir() {
            if dir == root && SKIP.iter().any(|s| name == *s) {
                continue;
            }
            walk(root, &path, out)?;
        } else if ty.is_file() {
            out.push(path.strip_prefix(root)?.to_path_buf());
        } else {
            bail!(
                "{} is a symbolic link or special file: a submission's source must be plain files",
                path.display()
            );
        }
        if out.len() > MAX_FILES {
            bail!(
                "{} has more than {MAX_FILES} files: not a plugin crate",
                root.display()
            );
        }
    }
    Ok(())
}

/// Archives the crate at `dir`.
pub fn take(dir: &Path) -> Result<Snapshot> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!("{} is not a crate: it has no Cargo.toml", dir.display());
    }
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let toml: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", manifest.display(), e.to_string().trim_end()))?;
    let package = toml.get("package").and_then(|p| p.as_table());
    let Some(crate_name) = package
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string)
    else {
        bail!("{} has no package.name", manifest.display());
    };
    let description = package
        .and_then(|p| p.get("description"))
        .and_then(|d| d.as_str())
        .unwrap_or("")
        .to_string();

    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    let mut total = 0u64;
    let gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for rel in &files {
        let bytes = std::fs::read(dir.join(rel))?;
        total += bytes.len() as u64;
        if total > MAX_BYTES {
            bail!(
                "{} holds more than {MAX_BYTES} bytes of source: not a plugin crate",
                dir.display()
            );
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        // Forward slashes whatever the platform, under the crate's name.
        let name = Path::new(&crate_name).join(rel);
        tar.append_data(&mut h, name, bytes.as_slice())?;
    }
    let archive = tar.into_inner()?.finish()?;
    let sha256 = hex::encode(Sha256::digest(&archive));
    Ok(Snapshot {
        archive,
        sha256,
        crate_name,
        description,
        files: files.len(),
    })
}

/// Unpacks `archive` into `into` (which must not exist yet) and makes the crate
/// build here: its own workspace, the plugin API at this host's path, settings
/// inherited from a workspace filled in. Answers the crate's directory.
/// The archive's files under `into`, as they are (no rewrite).
pub fn unpack(archive: &[u8], into: &Path) -> Result<()> {
    for (path, bytes) in files(archive)? {
        let rel = Path::new(&path);
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            bail!("the archive holds a path outside its folder: {path}");
        }
        let dest = into.join(rel);
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(&dest, bytes)?;
    }
    Ok(())
}

pub fn extract(archive: &[u8], crate_name: &str, into: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for entry in tar.entries()? {
        let mut entry = entry?;
        let rel = entry.path()?.into_owned();
        // Only plain relative paths under the crate's folder.
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
            || rel.components().next().map(|c| c.as_os_str()) != Some(crate_name.as_ref())
        {
            bail!(
                "the archive holds a path outside its crate: {}",
                rel.display()
            );
        }
        let dest = into.join(&rel);
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p)?;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        std::fs::write(&dest, bytes)?;
    }
    let dir = into.join(crate_name);
    standalone_manifest(&dir)?;
    Ok(dir)
}

/// The files of a snapshot's archive, by path, to show (the dashboard).
pub fn files(archive: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut out = Vec::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.display().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        out.push((path, bytes));
    }
    Ok(out)
}

/// Rewrites `dir/Cargo.toml` to build outside any workspace against this host.
fn standalone_manifest(dir: &Path) -> Result<()> {
    let root = crate::plugins::build::workspace_root();
    let path = dir.join("Cargo.toml");
    let mut toml: toml::Table = toml::from_str(&std::fs::read_to_string(&path)?)?;
    let workspace: toml::Table = std::fs::read_to_string(root.join("Cargo.toml"))
        .ok()
        .and_then(|t| toml::from_str(&t).ok())
        .unwrap_or_default();
    let ws = |key: &str| workspace.get("workspace").and_then(|w| w.get(key)).cloned();
    if let Some(pkg) = toml.get_mut("package").and_then(|p| p.as_table_mut()) {
        let inherited: Vec<String> = pkg
            .iter()
            .filter(|(_, v)| v.get("workspace").and_then(|w| w.as_bool()) == Some(true))
            .map(|(k, _)| k.clone())
            .collect();
        let ws_pkg = ws("package");
        for k in inherited {
            match ws_pkg.as_ref().and_then(|p| p.get(&k)) {
                Some(v) => pkg.insert(k, v.clone()),
                None => pkg.remove(&k),
            };
        }
    }
    let ws_deps = ws("dependencies");
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        let Some(deps) = toml.get_mut(section).and_then(|d| d.as_table_mut()) else {
            continue;
        };
        for (name, spec) in deps.iter_mut() {
            if name == "speedrun-plugin-api" {
                let mut t = toml::Table::new();
                t.insert(
                    "path".into(),
                    toml::Value::String(root.join("plugin-api").display().to_string()),
                );
                *spec = toml::Value::Table(t);
            } else if spec.get("workspace").and_then(|w| w.as_bool()) == Some(true) {
                match ws_deps.as_ref().and_then(|d| d.get(name)) {
                    Some(v) => *spec = v.clone(),
                    None => bail!(
                        "dependency {name} inherits from a workspace this host does not have; give its version"
                    ),
                }
            }
        }
    }
    toml.entry("workspace")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    std::fs::write(&path, toml::to_string(&toml)?)?;
    // Pin dependency versions to the host's, unless the crate brought its own lock.
    let lock = dir.join("Cargo.lock");
    if !lock.exists() {
        if let Ok(l) = std::fs::read(root.join("Cargo.lock")) {
            std::fs::write(lock, l)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_deterministic_skip_build_output_and_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let c = tmp.path().join("my-plugin");
        std::fs::create_dir_all(c.join("src")).unwrap();
        std::fs::create_dir_all(c.join("target/release")).unwrap();
        std::fs::write(
            c.join("Cargo.toml"),
            "[package]\nname = \"my-plugin\"\ndescription = \"a test\"\nversion = \"0.1.0\"\nedition.workspace = true\n\n[dependencies]\nspeedrun-plugin-api = { path = \"../../plugin-api\" }\n",
        )
        .unwrap();
        std::fs::write(c.join("src/lib.rs"), "// hi\n").unwrap();
        std::fs::write(c.join("target/release/junk"), "x").unwrap();
        let a = take(&c).unwrap();
        let b = take(&c).unwrap();
        assert_eq!(a.sha256, b.sha256, "same source, same hash");
        assert_eq!(
            (a.files, a.crate_name.as_str(), a.description.as_str()),
            (2, "my-plugin", "a test")
        );
        std::fs::write(c.join("src/lib.rs"), "// changed\n").unwrap();
        assert_ne!(take(&c).unwrap().sha256, a.sha256);

        let out = tmp.path().join("x");
        let dir = extract(&a.archive, "my-plugin", &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("src/lib.rs")).unwrap(),
            "// hi\n"
        );
        assert!(!dir.join("target").exists());
        let m: toml::Table =
            toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
        assert!(m.contains_key("workspace"));
        assert_eq!(m["package"]["edition"].as_str(), Some("2021"));
        let api = m["dependencies"]["speedrun-plugin-api"]["path"]
            .as_str()
            .unwrap();
        assert!(Path::new(api).join("Cargo.toml").is_file(), "{api}");
    }

    #[test]
    fn an_archive_escaping_its_crate_is_refused() {
        let gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, "other/x", &b"x"[..]).unwrap();
        let bytes = tar.into_inner().unwrap().finish().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let e = extract(&bytes, "mine", &tmp.path().join("o")).unwrap_err();
        assert!(e.to_string().contains("outside its crate"), "{e}");
    }
}

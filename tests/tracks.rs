//! Track files: every shipped track parses; each kind of bad value is refused
//! with the key named.

use speedrun::data::loader::TrackData;
use speedrun::track::{self, Track};
use std::path::Path;

fn shipped(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tracks")
        .join(format!("{name}.toml"));
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn every_shipped_track_parses() {
    let names = track::list_tracks().unwrap();
    for want in ["smoke", "cpu", "gpt2-cpu", "gpt2-fineweb"] {
        assert!(
            names.iter().any(|n| n == want),
            "tracks/{want}.toml missing"
        );
    }
    for n in &names {
        let lt = track::load(n).unwrap_or_else(|e| panic!("track {n}: {e:#}"));
        assert_eq!(&lt.track.name, n);
        assert_eq!(lt.sha256.len(), 64);
    }
    // The cpu target is calibrated, not a placeholder.
    let cpu = track::load("cpu").unwrap().track;
    assert!(cpu.target.val_loss.is_some_and(|t| t > 1.0 && t < 3.3));
    assert!(cpu
        .target
        .calibration
        .as_deref()
        .unwrap_or("")
        .contains("median"));
    let fw = track::load("gpt2-fineweb").unwrap().track;
    assert_eq!(fw.model.vocab, 50304);
    assert_eq!(fw.validation.tokens, 10_485_760);
    assert_eq!(fw.target.val_loss, Some(3.28));
    // The GPU race trains in bf16 autocast; a track that says nothing is f32.
    assert_eq!(fw.train.precision, speedrun_kernels::Precision::Bf16);
    let smoke = track::load("smoke").unwrap().track;
    assert_eq!(smoke.train.precision, speedrun_kernels::Precision::F32);
}

fn refused(text: &str, key_and_fault: &str) {
    let err = Track::parse(text, "test.toml")
        .err()
        .unwrap_or_else(|| panic!("bad track accepted (expected `{key_and_fault}`)"));
    let msg = format!("{err:#}");
    assert!(
        msg.contains("test.toml"),
        "error does not name the file: {msg}"
    );
    assert!(
        msg.contains(key_and_fault),
        "error does not say `{key_and_fault}`: {msg}"
    );
}

#[test]
fn each_kind_of_bad_value_is_refused_naming_the_key() {
    let base = shipped("smoke");
    let edit = |from: &str, to: &str| {
        assert!(base.contains(from), "fixture lost `{from}`");
        base.replace(from, to)
    };
    refused(
        &edit("layers = 2", "layers = 2\nlayerz = 3"),
        "unknown field `layerz`",
    );
    refused(
        &edit("heads = 2", "heads = 3"),
        "model.heads = 3 does not divide model.width = 32",
    );
    refused(
        &edit("batch_tokens = 512", "batch_tokens = 500"),
        "train.batch_tokens = 500 is not a multiple of model.seq_len = 32",
    );
    refused(
        &edit("vocab = 256", "vocab = 100"),
        "model.vocab = 100 is smaller than the bytes tokenizer's vocabulary of 256",
    );
    refused(
        &edit("layers = 2", "layers = 0"),
        "model.layers must be positive",
    );
    refused(&edit("layers = 2", "layers = -2"), "layers");
    refused(
        &edit("lr = 2e-3", "lr = -1.0"),
        "optimizer.lr = -1 must be in (0, 10)",
    );
    refused(
        &edit("beta2 = 0.95", "beta2 = 1.5"),
        "optimizer.beta2 = 1.5 must be in [0, 1)",
    );
    refused(
        &edit("tokens = 4096", "tokens = 4010"),
        "validation.tokens = 4010 is not a multiple of model.seq_len = 32",
    );
    refused(
        &edit("tokenizer = \"bytes\"", "tokenizer = \"chars\""),
        "unknown variant `chars`",
    );
    refused(
        &edit("hardware = \"cpu\"", "hardware = \"tpu\""),
        "unknown variant `tpu`",
    );
    refused(
        &edit("val_loss = 3.25", "val_loss = -3.0"),
        "target.val_loss = -3 must be a positive number",
    );
    refused(
        &edit("token_budget = 102400", "token_budget = 100"),
        "train.token_budget = 100 is less than one batch",
    );
    refused(
        &edit("warmup_steps = 10", "warmup_steps = 1000"),
        "optimizer.warmup_steps = 1000 exceeds the run's 200 steps",
    );
    refused(
        &edit(
            "token_budget = 102400",
            "token_budget = 102400\nprecision = \"fp8\"",
        ),
        "unknown variant `fp8`, expected `f32` or `bf16`",
    );
    refused(&base.replace("[target]", "[targets]"), "targets");
}

#[test]
fn validation_larger_than_the_validation_shard_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tracks = dir.path().join("tracks");
    std::fs::create_dir_all(&tracks).unwrap();
    // 600,000 tokens: a multiple of 32, more than the shipped validation shard's 564,298.
    let text = shipped("smoke").replace("tokens = 4096", "tokens = 600000");
    std::fs::write(tracks.join("big.toml"), text).unwrap();
    let lt = track::load(tracks.join("big.toml").to_str().unwrap()).unwrap();
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    let err = TrackData::open(&lt, Some(&data_dir))
        .err()
        .expect("accepted");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("validation.tokens = 600000 needs 600001 tokens"),
        "{msg}"
    );
}

#[test]
fn fineweb_without_shards_says_where_to_put_them() {
    let lt = track::load("gpt2-fineweb").unwrap();
    let empty = tempfile::tempdir().unwrap();
    let err = TrackData::open(&lt, Some(empty.path()))
        .err()
        .expect("accepted");
    let msg = format!("{err:#}");
    assert!(msg.contains("fineweb_train_*.bin"), "{msg}");
    assert!(msg.contains("data/fineweb10B"), "{msg}");
}

#[test]
fn unknown_track_lists_the_known_ones() {
    let err = track::load("no-such-track").unwrap_err().to_string();
    assert!(
        err.contains("unknown track `no-such-track`") && err.contains("smoke"),
        "{err}"
    );
}

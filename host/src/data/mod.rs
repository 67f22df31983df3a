//! The data layer: token shards, the shipped corpus and its manifest, the
//! tokenizers, and the streams the trainer reads (training batches, the
//! validation set). Plugins never see any of it.

pub mod corpus;
pub mod loader;
pub mod manifest;
pub mod permutation;
pub mod shard;
pub mod tokenizer;

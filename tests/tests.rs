//! The workspace's integration tests, one binary of modules (ripgrep's
//! `tests/tests.rs` shape): candle and wasmtime are linked once, not once per
//! area. Run one area with `cargo test -p speedrun --test tests verify::`.

mod common;

mod cli;
mod cluster;
mod data;
mod device;
mod parallel;
mod plugins;
mod policy;
mod sandbox;
mod serve;
mod store;
mod submit;
mod techniques;
mod tracks;
mod training;
mod verify;

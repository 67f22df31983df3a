//! The speedrun host: it owns the data, the clock, the model's memory, the loss
//! and the record of every run; candidate changes plug into named hook points of
//! its reference training loop. The `speedrun` binary is a thin shell over this
//! library.
//!
//! `pub` are the modules the binary and the integration tests reach (the
//! tests drive the loop, the store and the plugin boundary directly); the rest
//! are `pub(crate)`, reached only through `cli`. `docs/ARCHITECTURE.md` has
//! what each owns and the order they may use one another in.

pub(crate) mod bench;
pub mod checkpoint;
pub mod cli;
pub(crate) mod cluster;
pub(crate) mod compare;
pub mod data;
pub mod device;
pub(crate) mod ladder;
pub mod loss;
pub mod model;
pub mod optim;
pub mod parallel;
pub(crate) mod plot;
pub mod plugins;
pub mod ranks;
pub mod record;
pub mod sample;
pub(crate) mod score;
pub(crate) mod serve;
pub(crate) mod stats;
pub mod store;
pub(crate) mod submit;
pub mod track;
pub mod train;
pub mod verify;
pub(crate) mod views;

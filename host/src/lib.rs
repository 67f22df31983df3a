//! The speedrun host: it owns the data, the clock, the model's memory, the loss
//! and the record of every run; candidate changes plug into named hook points of
//! its reference training loop. The `speedrun` binary is a thin shell over this
//! library.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod compare;
pub mod data;
pub mod device;
pub mod ladder;
pub mod loss;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod plugins;
pub mod ranks;
pub mod record;
pub mod score;
pub mod stats;
pub mod store;
pub mod submit;
pub mod track;
pub mod train;
pub mod verify;
pub mod views;

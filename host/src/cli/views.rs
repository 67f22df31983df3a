//! `speedrun leaderboard`, `frontier` and `show`: read-only views of the store.

use super::args::{DbArg, JsonArg, TrackArg};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct LeaderboardArgs {
    #[command(flatten)]
    pub track: TrackArg,
    #[command(flatten)]
    pub db: DbArg,
    #[command(flatten)]
    pub output: JsonArg,
}

#[derive(Args, Debug)]
pub struct FrontierArgs {
    #[command(flatten)]
    pub track: TrackArg,
    #[command(flatten)]
    pub db: DbArg,
    #[command(flatten)]
    pub output: JsonArg,
    /// Where to write the SVG (default: runs/frontier-TRACK.svg).
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The run's id in the store, or its run directory.
    pub run: String,
    #[command(flatten)]
    pub db: DbArg,
    #[command(flatten)]
    pub output: JsonArg,
    /// Where to write the SVG (default: curves.svg in the run directory).
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

pub fn leaderboard(a: LeaderboardArgs) -> Result<()> {
    let t = a.track.load()?;
    let text = crate::views::leaderboard(&a.db.open()?, &t.track.name, a.output.json)?;
    print!("{text}");
    Ok(())
}

pub fn frontier(a: FrontierArgs) -> Result<()> {
    let t = a.track.load()?;
    let svg = a
        .svg
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("frontier-{}.svg", t.track.name)));
    let text = crate::views::frontier(&a.db.open()?, &t.track.name, a.output.json, Some(&svg))?;
    print!("{text}");
    Ok(())
}

pub fn show(a: ShowArgs) -> Result<()> {
    print!(
        "{}",
        crate::views::show(&a.db.open()?, &a.run, a.output.json, a.svg)?
    );
    Ok(())
}

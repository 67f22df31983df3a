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
    /// The run's id in the store, or its run directory; several: each shown,
    /// their curves overlaid in one SVG.
    #[arg(required = true, num_args = 1..)]
    pub run: Vec<String>,
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
    let store = a.db.open()?;
    let text = match a.run.as_slice() {
        [one] => crate::views::show(&store, one, a.output.json, a.svg)?,
        many => crate::views::show_many(&store, many, a.output.json, a.svg)?,
    };
    print!("{text}");
    Ok(())
}

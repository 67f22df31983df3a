//! The `speedrun` command line, a thin shell: clap parses the arguments
//! (shared groups in `args`), one module per command family turns them into
//! the library's options and calls it, `report` shows the answers as text,
//! and `exit_code` maps errors to exit statuses. No domain logic lives here.

mod args;
mod bench;
mod data;
mod plugin;
mod policy;
mod report;
mod run;
mod serve;
mod submit;
mod views;

pub use crate::verify::Invalid;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "speedrun",
    version,
    about = "A benchmark host for language-model training research"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train one run of a track and write its run directory.
    Run(run::RunArgs),
    /// Validation loss of a saved checkpoint on a track's validation set.
    Eval(run::EvalArgs),
    /// Text from a saved checkpoint: greedy, or sampled at a temperature.
    Sample(run::SampleArgs),
    /// The shipped data slice: rebuild it or verify it.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// List the tracks.
    Tracks,
    /// The fused kernels on a device: check each against its CPU kernel, or
    /// compile the CUDA sources with NVRTC (no GPU needed).
    #[command(subcommand)]
    Kernels(data::KernelsCommand),
    /// Significance bench of a plugin stack against a baseline over seeds (or a
    /// speed benchmark: throughput, plugin, wasm-load).
    Bench(bench::BenchArgs),
    /// Valid runs of a track, best first: by time to target, then best loss.
    Leaderboard(views::LeaderboardArgs),
    /// The efficiency frontier of a track's runs (time, tokens, FLOPs against
    /// loss), each run's distance to it, and an SVG of loss against time.
    Frontier(views::FrontierArgs),
    /// Submit a plugin crate: build it (wasm unless --native), run it against the
    /// track's record and the reference over seeds, verify, store, and answer a
    /// verdict. Exit 0 valid, 2 invalid, 1 could not run.
    Submit(submit::SubmitArgs),
    /// A track's record history (text, markdown or JSON).
    Records(submit::RecordsArgs),
    /// The techniques table: every stored bench of a stack against the reference
    /// on the track, oldest first, with the command that reproduces each row.
    Ladder(submit::LadderArgs),
    /// Rebuild a record from its stored source and run it again on this machine.
    Reverify(submit::ReverifyArgs),
    /// One stored run: summary, verdict, evaluations, and an SVG of its curves.
    Show(views::ShowArgs),
    /// Write, build and inspect plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// The maintainers' sandbox policy: show it, check a plugin, approve or revoke one.
    Policy(policy::PolicyArgs),
    /// A local web dashboard over the run store: tracks, leaderboards, records,
    /// the frontier, runs with their curves and verdicts, comparisons, benches.
    Serve(serve::ServeArgs),
    /// One task of a batch on a cluster (what `--executor slurm` submits):
    /// the plan's seed at --index, every stack back to back, into the shared store.
    Task(bench::TaskArgs),
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Eval(a) => run::eval(a),
        Command::Sample(a) => run::sample(a),
        Command::Data(c) => data::data(c),
        Command::Tracks => data::tracks(),
        Command::Kernels(c) => data::kernels(c),
        Command::Bench(a) => bench::bench(a),
        Command::Leaderboard(a) => views::leaderboard(a),
        Command::Frontier(a) => views::frontier(a),
        Command::Submit(a) => submit::submit(a),
        Command::Records(a) => submit::records(a),
        Command::Ladder(a) => submit::ladder(a),
        Command::Reverify(a) => submit::reverify(a),
        Command::Show(a) => views::show(a),
        Command::Plugin(c) => plugin::plugin(c),
        Command::Policy(a) => policy::policy(a),
        Command::Serve(a) => serve::serve(a),
        Command::Task(a) => bench::task(a),
    }
}

/// Prints `value` as JSON under `--json`, else as `text` renders it.
fn print_json_or<T: serde::Serialize + ?Sized>(
    output: args::JsonArg,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> Result<()> {
    if output.json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", text(value));
    }
    Ok(())
}

/// A run stopped by a failed check (other than "it did not complete") is
/// invalid, not merely failed.
fn invalid_if_caught(e: anyhow::Error, v: &crate::verify::Verdict) -> anyhow::Error {
    let caught: Vec<String> = v
        .failed()
        .into_iter()
        .filter(|c| *c != crate::verify::Check::Completed)
        .map(|c| c.to_string())
        .collect();
    if caught.is_empty() {
        e
    } else {
        let msg = format!("the run is INVALID: failed checks {}", caught.join(", "));
        e.context(Invalid(msg))
    }
}

/// The exit status for an error: 2 for an invalid run (a check failed), 1 otherwise.
/// The exit status of a command line that does not parse (sysexits' EX_USAGE):
/// apart from 1 (could not run) and 2 (a check failed), so an agent can tell
/// a mistyped flag from a failed check.
pub const USAGE_ERROR: u8 = 64;

/// The exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const INTERRUPTED: u8 = 130;

pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<crate::train::Interrupted>().is_some() {
        return INTERRUPTED;
    }
    // `Invalid` is attached as context, which only `downcast_ref` finds.
    if e.downcast_ref::<Invalid>().is_some() || crate::verify::violation_of(e).is_some() {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        // clap's own checks: unique argument ids, valid defaults and conflicts.
        super::Cli::command().debug_assert();
    }
}

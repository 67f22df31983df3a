//! The `speedrun` binary: a thin shell over the library.

use clap::Parser;

// Training allocates and frees large short-lived buffers in every autograd op; the
// system allocator returns them to the OS and page-faults them back (~1.4 s a step
// measured on the cpu track). mimalloc keeps them mapped.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SPEEDRUN_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = speedrun::cli::Cli::parse();
    match speedrun::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(speedrun::cli::exit_code(&e))
        }
    }
}

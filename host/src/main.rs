//! The `speedrun` binary: a thin shell over the library.

use clap::Parser;

// Training allocates and frees large short-lived buffers in every autograd op; the
// system allocator returns them to the OS and page-faults them back (~1.4 s a step
// measured on the cpu track). mimalloc keeps them mapped.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3 headers;
/// the Rust bindings do not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never hand freed pages back to the OS. With mimalloc's default 10 ms purge
/// delay a training step still took ~70k page faults (each a zeroed huge page,
/// ~10% of the step); without purging it takes ~300. The process's footprint
/// stays at its high-water mark, which a training run reaches in its first step.
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn keep_freed_pages_mapped() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads it on its next purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// Make this thread worker 0 of rayon's global pool, of the machine's thread
/// count in all. Otherwise every parallel kernel the step calls from here is
/// handed to a pool thread while this one sleeps on a latch and is woken
/// after: ~690 context switches a step on the cpu track (~185 joined), with
/// this thread and a worker sharing one core. As a member it runs its share of each
/// kernel itself, and the other worker only waits between kernels.
fn join_the_thread_pool() {
    let threads = candle_core::utils::get_num_threads();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .use_current_thread()
        .build_global();
    if let Err(e) = pool {
        // Only a pool already built could refuse, and nothing builds one first.
        tracing::warn!("rayon's pool was not joined ({e}): kernels run from outside it");
    }
}

fn main() -> std::process::ExitCode {
    keep_freed_pages_mapped();
    // Colour only for a person at a terminal, and never under NO_COLOR.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SPEEDRUN_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    join_the_thread_pool();
    // Ctrl-C (or SIGTERM, as scancel sends): a training run stops before its
    // next step and is recorded as incomplete at once; a second one, or one
    // with nothing training, quits.
    let _ = ctrlc::set_handler(|| {
        static PRESSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if PRESSED.swap(true, std::sync::atomic::Ordering::SeqCst) || !speedrun::train::interrupt()
        {
            std::process::exit(speedrun::cli::INTERRUPTED.into());
        }
        eprintln!(
            "\ninterrupting: the run stops before its next step (Ctrl-C again quits at once)"
        );
    });
    let cli = match speedrun::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout and usage errors to stderr.
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() {
                speedrun::cli::USAGE_ERROR
            } else {
                0
            });
        }
    };
    match speedrun::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(speedrun::cli::exit_code(&e))
        }
    }
}

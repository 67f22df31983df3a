//! What a person sees of a run on the terminal besides its progress line:
//! the banner before the first step, and Ctrl-C, which stops the loop before
//! its next step (the run is then recorded as incomplete at once).

use super::RunOptions;

/// What a person reads before the first step (the warm-up and the data's
/// hashes take a while on a big track): what runs, where it writes.
pub(super) fn banner(opts: &RunOptions) {
    let t = &opts.track.track;
    let m = &t.model;
    eprintln!(
        "speedrun {} · track {} ({}){}",
        env!("CARGO_PKG_VERSION"),
        t.name,
        opts.track.path.display(),
        if opts.track.overrides.is_empty() {
            String::new()
        } else {
            format!(", modified: --set {}", opts.track.overrides.join(" --set "))
        }
    );
    eprintln!(
        "  model      {} layers × {} wide, {} heads, T {}, vocabulary {}",
        m.layers, m.width, m.heads, m.seq_len, m.vocab
    );
    eprintln!("  seed       {}", opts.seed);
    eprintln!("  run dir    {}", opts.out.display());
    if let Some(s) = &opts.store {
        eprintln!("  store      {}", s.location());
    }
}

/// Set by Ctrl-C (the command line installs the handler): the loop stops
/// before its next step, and the run is recorded as incomplete at once.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Timed loops running in this process.
static TRAINING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Asks every run of this process to stop before its next step; answers
/// whether one is training (if none is, there is nothing to stop cleanly).
pub fn interrupt() -> bool {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    TRAINING.load(std::sync::atomic::Ordering::SeqCst) > 0
}

/// Counts a timed loop as running while it lives.
pub(super) struct Training;

impl Training {
    pub(super) fn start() -> Training {
        TRAINING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Training
    }
}

impl Drop for Training {
    fn drop(&mut self) {
        TRAINING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

pub(super) fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// A run stopped by Ctrl-C.
#[derive(Debug)]
pub struct Interrupted {
    pub step: usize,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interrupted (Ctrl-C or SIGTERM) before step {}",
            self.step
        )
    }
}

impl std::error::Error for Interrupted {}

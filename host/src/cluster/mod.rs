//! Running past one machine: where a bench's runs execute. `local` runs them
//! one after another in this process (the default); `slurm` hands them to a
//! Slurm cluster as a job array, one task per seed, through Slurm's own
//! commands. This module knows Slurm, not benches: `compare::batch` turns a
//! bench's seeds into the tasks and reads their runs back from the store.

pub mod slurm;

pub use slurm::SlurmOptions;

/// Where the runs of a bench, a submission or a reverification execute.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Executor {
    /// In this process, one after another.
    #[default]
    Local,
    /// On a Slurm cluster, one array task per seed.
    Slurm(SlurmOptions),
}

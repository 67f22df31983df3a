//! Run-time verification: the checks the host makes on every run, and the
//! verdict they add up to. A check either passes, fails (the run is invalid),
//! or does not apply (`skipped`, with why). The loop reports failures as a
//! [`Violation`] error or, where a plugin could swallow the refusal, as an entry
//! in the plugin session's ledger; `Ledger::verdict` lists both.

pub mod causality;

/// The version of the checks a run is verified by, recorded with every run
/// (1: the first wave's checks, before twin forwards, pure forward hooks, the
/// secret permutation and the input caps; 2: those). `reverify` re-runs a
/// record under the current version.
pub const CHECKS_VERSION: u32 = 2;

use serde::{Deserialize, Serialize};
use std::fmt;

/// Every check a run's verdict lists, in the order it lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The shards match the data manifest's SHA-256 sums.
    DataHashes,
    /// The track file parsed and validated.
    Track,
    /// Every plugin loaded (ABI) and was admitted by the sandbox policy.
    Plugins,
    /// Logits at positions ≤ t do not move when tokens after t change.
    Causality,
    /// The host computes the loss from logits that are finite over the whole vocabulary.
    FullDistribution,
    /// Training consumes no more tokens than the track's budget.
    TokenBudget,
    /// During validation no plugin writes parameters or state or keeps a handle.
    EvalIsolation,
    /// Plugins call only the ops their hook's contract and the policy allow.
    OpContract,
    /// The training loss and gradients stay finite.
    FiniteTraining,
    /// Time inside plugin hooks is counted as training time; an untimed warm-up
    /// leaves the state exactly as it found it.
    Timing,
    /// The run trained every step it was asked to and was validated at the end.
    Completed,
    /// Data parallelism: every rank's verdict is valid and every rank holds the
    /// same parameters at every validation (one rank: passes).
    Ranks,
    /// The initial model, validated before the first timed step, knows nothing:
    /// its loss is not clearly below ln(vocabulary).
    InitialModel,
    /// What plugins brought in stayed within the policy: module size, elements
    /// made from plugin constants, ops per hook call.
    PluginInputs,
    /// The null-data control: the same stack trained under one vocabulary
    /// permutation and validated under an independent one learns nothing.
    NullControl,
}

impl Check {
    pub const ALL: [Check; 15] = [
        Check::DataHashes,
        Check::Track,
        Check::Plugins,
        Check::Causality,
        Check::FullDistribution,
        Check::TokenBudget,
        Check::EvalIsolation,
        Check::OpContract,
        Check::FiniteTraining,
        Check::Timing,
        Check::Completed,
        Check::Ranks,
        Check::InitialModel,
        Check::PluginInputs,
        Check::NullControl,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::DataHashes => "data_hashes",
            Check::Track => "track",
            Check::Plugins => "plugins",
            Check::Causality => "causality",
            Check::FullDistribution => "full_distribution",
            Check::TokenBudget => "token_budget",
            Check::EvalIsolation => "eval_isolation",
            Check::OpContract => "op_contract",
            Check::FiniteTraining => "finite_training",
            Check::Timing => "timing",
            Check::Completed => "completed",
            Check::Ranks => "ranks",
            Check::InitialModel => "initial_model",
            Check::PluginInputs => "plugin_inputs",
            Check::NullControl => "null_control",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed check, as an error that stops the run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("check {check} failed: {detail}")]
pub struct Violation {
    pub check: Check,
    pub detail: String,
}

impl Violation {
    pub fn new(check: Check, detail: impl Into<String>) -> Violation {
        Violation {
            check,
            detail: detail.into(),
        }
    }
}

/// Logits must cover the whole vocabulary: `got` against `want` (`[B, T, V]`),
/// from `who` (a hook or the forward pass). A narrower head is a
/// `full_distribution` failure, not merely a crash.
pub fn whole_vocabulary(who: &str, got: &[usize], want: &[usize]) -> Result<(), Violation> {
    if got == want {
        return Ok(());
    }
    Err(Violation::new(
        Check::FullDistribution,
        format!(
            "{who} returned logits of shape {got:?}, not {want:?}: the loss needs a distribution over the whole vocabulary"
        ),
    ))
}

/// The first violation in an error's chain, if the error is one.
pub fn violation_of(e: &anyhow::Error) -> Option<&Violation> {
    e.chain().find_map(|c| c.downcast_ref::<Violation>())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    /// The check does not apply to this run (the detail says why).
    Skipped,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One check as a report line: name, outcome, detail.
pub fn check_line(check: Check, outcome: Outcome, detail: &str) -> String {
    format!("{:<18} {:<8} {detail}", check.name(), outcome.name())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub check: Check,
    pub outcome: Outcome,
    pub detail: String,
}

/// Every check of a run and whether the run is valid (no check failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub valid: bool,
    pub checks: Vec<CheckResult>,
}

impl Verdict {
    /// The failed checks' names.
    pub fn failed(&self) -> Vec<Check> {
        self.checks
            .iter()
            .filter(|c| c.outcome == Outcome::Failed)
            .map(|c| c.check)
            .collect()
    }

    pub fn get(&self, check: Check) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.check == check)
    }
}

/// Collects outcomes as the run goes; a check never recorded is listed as
/// `skipped` with the reason given at `build`.
#[derive(Debug, Default)]
pub struct Ledger {
    results: Vec<CheckResult>,
}

impl Ledger {
    pub fn pass(&mut self, check: Check, detail: impl Into<String>) {
        self.set(check, Outcome::Passed, detail.into());
    }

    pub fn skip(&mut self, check: Check, detail: impl Into<String>) {
        self.set(check, Outcome::Skipped, detail.into());
    }

    /// Records a failure; a check that already failed keeps its first detail.
    pub fn fail(&mut self, check: Check, detail: impl Into<String>) {
        if self.outcome(check) != Some(Outcome::Failed) {
            self.set(check, Outcome::Failed, detail.into());
        }
    }

    pub fn outcome(&self, check: Check) -> Option<Outcome> {
        self.results
            .iter()
            .find(|r| r.check == check)
            .map(|r| r.outcome)
    }

    fn set(&mut self, check: Check, outcome: Outcome, detail: String) {
        // A failure is final: later passes of the same check do not hide it.
        if self.outcome(check) == Some(Outcome::Failed) {
            return;
        }
        self.results.retain(|r| r.check != check);
        self.results.push(CheckResult {
            check,
            outcome,
            detail,
        });
    }

    /// The verdict, every check listed in `Check::ALL` order.
    pub fn verdict(&self) -> Verdict {
        let checks: Vec<CheckResult> = Check::ALL
            .iter()
            .map(|&check| {
                self.results
                    .iter()
                    .find(|r| r.check == check)
                    .cloned()
                    .unwrap_or(CheckResult {
                        check,
                        outcome: Outcome::Skipped,
                        detail: "the run ended before this check was made".into(),
                    })
            })
            .collect();
        Verdict {
            valid: checks.iter().all(|c| c.outcome != Outcome::Failed),
            checks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_final_and_invalidates() {
        let mut l = Ledger::default();
        l.pass(Check::Causality, "probe 1");
        l.fail(Check::Causality, "probe 2 moved");
        l.pass(Check::Causality, "probe 3");
        l.fail(Check::Causality, "second failure");
        let v = l.verdict();
        assert!(!v.valid);
        assert_eq!(v.failed(), vec![Check::Causality]);
        assert_eq!(v.get(Check::Causality).unwrap().detail, "probe 2 moved");
        assert_eq!(v.checks.len(), Check::ALL.len());
        assert_eq!(v.get(Check::Track).unwrap().outcome, Outcome::Skipped);
    }

    #[test]
    fn all_passed_is_valid_and_violations_are_found_in_chains() {
        let mut l = Ledger::default();
        for c in Check::ALL {
            l.pass(c, "ok");
        }
        assert!(l.verdict().valid);
        let e =
            anyhow::Error::new(Violation::new(Check::TokenBudget, "too many")).context("at step 3");
        assert_eq!(violation_of(&e).unwrap().check, Check::TokenBudget);
        assert!(violation_of(&anyhow::anyhow!("plain")).is_none());
        let names: Vec<String> = Check::ALL
            .iter()
            .map(|c| {
                serde_json::to_value(c)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let direct: Vec<&str> = Check::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names, direct);
    }
}

/// An error that means "the run ran, and is invalid": exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

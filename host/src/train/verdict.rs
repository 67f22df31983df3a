//! The end of a run's verdict: every check the loop passed silently gets its
//! pass with what it covered; the ranks compare their verdicts and digests.

use super::*;

/// The `ranks` check: one rank passes; a group exchanges every rank's verdict and
/// parameter digest, so all of them end with the same verdict.
pub(super) fn judge_ranks(
    group: Option<&dyn Collective>,
    ledger: &mut Ledger,
    model: &Model,
) -> Result<()> {
    let Some(g) = group else {
        ledger.pass(Check::Ranks, "one rank (no data parallelism)");
        return Ok(());
    };
    let own = ledger.verdict();
    let mine = RankReport {
        rank: g.rank(),
        valid: own.valid,
        failed: own.failed().iter().map(|c| c.to_string()).collect(),
        params_sha256: model.params.digest()?,
    };
    match crate::parallel::gather_reports(g, &mine) {
        Ok(all) => match crate::parallel::judge(&all) {
            Ok(detail) => ledger.pass(Check::Ranks, detail),
            Err(detail) => ledger.fail(Check::Ranks, detail),
        },
        Err(e) => ledger.fail(Check::Ranks, format!("{e:#}")),
    }
    Ok(())
}

/// The `plugin_inputs` line: what each plugin brought in, against the policy's caps.
pub(super) fn plugin_inputs_detail(plugins: &[LoadedPlugin]) -> String {
    if plugins.is_empty() {
        return "no plugins: the reference stack".into();
    }
    let lines: Vec<String> = plugins
        .iter()
        .map(|p| {
            let s = p.session.borrow();
            let (u, b) = (s.inputs(), s.budget());
            format!(
                "{} ({} {} bytes): {} elements from its constants (cap {}), at most {} ops in a hook call (cap {}), {} ops in {} calls",
                p.record.name,
                p.record.transport,
                p.record.bytes,
                u.literal_elements,
                b.max_literal_elements,
                u.max_ops_in_a_call,
                b.max_ops_per_call,
                u.ops,
                u.calls
            )
        })
        .collect();
    lines.join("; ")
}

pub(super) fn plugins_detail(plugins: &[LoadedPlugin], policy: Option<&PolicyRecord>) -> String {
    if plugins.is_empty() {
        return "no plugins: the reference stack".into();
    }
    let names: Vec<String> = plugins
        .iter()
        .map(|p| {
            format!(
                "{} {} ({})",
                p.record.name, p.record.version, p.record.transport
            )
        })
        .collect();
    match policy {
        Some(p) if p.warnings.is_empty() => format!(
            "{} loaded and approved by policy {} ({} mode)",
            names.join(", "),
            p.path,
            p.mode
        ),
        Some(p) => format!(
            "{} loaded and admitted by policy {} ({} mode, unofficial: {})",
            names.join(", "),
            p.path,
            p.mode,
            p.warnings.join("; ")
        ),
        None => format!("{} loaded without a policy", names.join(", ")),
    }
}

/// What the end of a run knows for the checks the loop passes silently.
pub(super) struct Conclusion<'a> {
    pub(super) twins: &'a Twins,
    pub(super) plugin_ms: f64,
    /// Time of model.params, model.init and optimizer.init (on the clock).
    pub(super) init_s: f64,
    pub(super) evals: usize,
    pub(super) budget: usize,
    pub(super) warm_detail: String,
    pub(super) vocab: usize,
    pub(super) plugins: &'a [LoadedPlugin],
    pub(super) initial_loss: Option<f64>,
    pub(super) labels: &'a Labels,
    pub(super) mode: VocabMode,
}

/// How far under ln(vocabulary) an initial model's loss may be: an honest
/// initialisation knows nothing of the (secretly relabelled) data, so its loss
/// is ln V plus the logits' spread; anything clearly below was brought in.
pub fn initial_loss_floor(vocab: usize) -> f64 {
    let ln_v = (vocab as f64).ln();
    ln_v - (0.02 * ln_v).max(0.1)
}

/// Records a pass for every check that did not fail, with what it covered.
pub(super) fn conclude(ledger: &mut Ledger, s: &RunSummary, outcome: &Result<()>, c: Conclusion) {
    if !c.twins.probes.is_empty() {
        ledger.pass(Check::Causality, c.twins.describe());
    }
    match c.initial_loss {
        Some(l) if l < initial_loss_floor(c.vocab) => ledger.fail(
            Check::InitialModel,
            format!(
                "the initial model's validation loss is {l:.4}, below {:.4} (ln {} = {:.4} less the margin): it knew the data before training",
                initial_loss_floor(c.vocab),
                c.vocab,
                (c.vocab as f64).ln()
            ),
        ),
        Some(l) => ledger.pass(
            Check::InitialModel,
            format!(
                "validated before the first timed step: loss {l:.4}, not below {:.4} (ln {} less the margin)",
                initial_loss_floor(c.vocab),
                c.vocab
            ),
        ),
        None => {}
    }
    ledger.pass(Check::PluginInputs, plugin_inputs_detail(c.plugins));
    let null = match c.mode {
        VocabMode::NullControl => format!(
            "this is a null-data control run: trained under permutation {}, validated under {}",
            &c.labels.train.sha256()[..12],
            &c.labels.val.sha256()[..12]
        ),
        _ => String::new(),
    };
    if null.is_empty() {
        ledger.skip(Check::NullControl, "not a record claim: no null-data control was asked for (submit runs one for every record claim; run --null-control on request)");
    } else {
        ledger.pass(Check::NullControl, null);
    }
    ledger.pass(
        Check::FullDistribution,
        format!(
            "every validation batch and twin gave logits finite over all {} vocabulary entries; the host computed every loss itself",
            c.vocab
        ),
    );
    ledger.pass(
        Check::TokenBudget,
        format!(
            "{} training tokens consumed of the budget's {}",
            s.tokens, c.budget
        ),
    );
    ledger.pass(
        Check::EvalIsolation,
        if c.plugins.is_empty() {
            format!("{} validations in eval mode; no plugins", c.evals)
        } else {
            format!(
                "{} validations (twins included) ran with no plugin write, kept handle, value read back or failed op",
                c.evals
            )
        },
    );
    ledger.pass(Check::OpContract, "no plugin op was refused");
    ledger.pass(
        Check::FiniteTraining,
        format!("loss and gradient norm finite at all {} steps", s.steps),
    );
    ledger.pass(
        Check::Timing,
        format!(
            "{:.1} ms inside plugin hooks (twin forwards' included), init hooks on the clock ({:.3} s), {:.2} s of timed training; validation and twin forwards untimed; {}",
            c.plugin_ms, c.init_s, s.train_time_s, c.warm_detail
        ),
    );
    match outcome {
        Ok(()) => ledger.pass(
            Check::Completed,
            format!("{} steps trained and validated at the end", s.steps),
        ),
        Err(e) => ledger.fail(Check::Completed, format!("{e:#}")),
    }
}

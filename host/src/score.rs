//! Scoring stored runs: the leaderboard order and the efficiency frontier.
//!
//! * Leaderboard: official, valid, complete runs of the track's whole budget
//!   (`exclusion` says why any other run is left out); those that reached the
//!   target first, by time to target, then the rest by best-attained loss.
//! * Frontier: the Pareto set of a track's valid runs in (cost, final
//!   validation loss), for cost = training time, tokens and FLOPs, both
//!   minimised. A run's distance to it is its loss gap at equal budget: its loss
//!   minus the best frontier loss reached at a cost no larger than its own (0
//!   on the frontier).

use crate::store::StoredRun;
use serde::Serialize;
use std::cmp::Ordering;

/// Why a stored run does not score; `None`: it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclusion {
    /// Failed, incomplete, still running, or never validated.
    Unfinished,
    /// A check failed.
    Invalid,
    /// Unapproved plugins under a dev-mode policy, or real token ids.
    Unofficial,
    /// Trained fewer steps than the track's budget (`--steps`).
    Truncated,
}

impl Exclusion {
    pub fn label(self) -> &'static str {
        match self {
            Exclusion::Unfinished => "failed, incomplete or running",
            Exclusion::Invalid => "invalid (a check failed)",
            Exclusion::Unofficial => "unofficial (unapproved plugins)",
            Exclusion::Truncated => "truncated (--steps, fewer than the track's budget)",
        }
    }
}

/// Why a stored run is left out of the leaderboard and the frontier, if it is.
/// Only official, valid, complete runs of the track's whole budget score.
pub fn exclusion(r: &StoredRun) -> Option<Exclusion> {
    // A run stopped by a failed check is invalid first, unfinished second.
    if r.valid == Some(false) {
        Some(Exclusion::Invalid)
    } else if r.status != crate::record::RunStatus::Complete
        || r.final_val_loss.is_none()
        || r.valid != Some(true)
    {
        Some(Exclusion::Unfinished)
    } else if !r.official {
        Some(Exclusion::Unofficial)
    } else if !r.full_budget {
        Some(Exclusion::Truncated)
    } else {
        None
    }
}

/// Whether a stored run counts for scoring.
pub fn scorable(r: &StoredRun) -> bool {
    exclusion(r).is_none()
}

/// How many runs each reason left out.
pub fn exclusions(runs: &[StoredRun]) -> std::collections::BTreeMap<Exclusion, usize> {
    let mut m = std::collections::BTreeMap::new();
    for e in runs.iter().filter_map(exclusion) {
        *m.entry(e).or_insert(0) += 1;
    }
    m
}

/// Valid runs in leaderboard order.
pub fn leaderboard(runs: &[StoredRun]) -> Vec<&StoredRun> {
    let mut v: Vec<&StoredRun> = runs.iter().filter(|r| scorable(r)).collect();
    v.sort_by(|a, b| match (a.time_to_target_s, b.time_to_target_s) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a
            .best_val_loss
            .unwrap_or(f64::INFINITY)
            .total_cmp(&b.best_val_loss.unwrap_or(f64::INFINITY)),
    });
    v
}

/// A cost axis of the frontier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    TrainTime,
    Tokens,
    Flops,
}

impl Axis {
    pub const ALL: [Axis; 3] = [Axis::TrainTime, Axis::Tokens, Axis::Flops];

    pub fn cost(self, r: &StoredRun) -> Option<f64> {
        match self {
            Axis::TrainTime => r.train_time_s,
            Axis::Tokens => r.tokens.map(|t| t as f64),
            Axis::Flops => r.flops,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Axis::TrainTime => "training time (s)",
            Axis::Tokens => "tokens",
            Axis::Flops => "FLOPs",
        }
    }
}

/// Indices of the Pareto-optimal points of `(cost, loss)`, both minimised,
/// ordered by cost. Of exact duplicates the first is kept.
pub fn pareto(points: &[(f64, f64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| {
        points[a]
            .0
            .total_cmp(&points[b].0)
            .then(points[a].1.total_cmp(&points[b].1))
    });
    let mut best = f64::INFINITY;
    let mut out = Vec::new();
    for i in order {
        // Sorted by cost: a point is optimal when it beats every cheaper one's loss.
        if points[i].1 < best {
            best = points[i].1;
            out.push(i);
        }
    }
    out
}

/// Loss gap at equal budget: `loss` minus the lowest frontier loss at a cost ≤ `cost`.
pub fn distance(point: (f64, f64), frontier: &[(f64, f64)]) -> f64 {
    let best = frontier
        .iter()
        .filter(|f| f.0 <= point.0)
        .map(|f| f.1)
        .fold(f64::INFINITY, f64::min);
    if best.is_finite() {
        (point.1 - best).max(0.0)
    } else {
        0.0
    }
}

/// One run's place relative to the frontier on one axis.
#[derive(Debug, Clone, Serialize)]
pub struct FrontierEntry {
    pub run_id: i64,
    pub stack: String,
    pub seed: u64,
    pub cost: f64,
    pub val_loss: f64,
    pub on_frontier: bool,
    pub distance: f64,
}

/// The frontier of `runs` on `axis`: every scorable run, with its distance.
pub fn frontier(runs: &[StoredRun], axis: Axis) -> Vec<FrontierEntry> {
    let runs: Vec<&StoredRun> = runs
        .iter()
        .filter(|r| scorable(r) && axis.cost(r).is_some())
        .collect();
    let points: Vec<(f64, f64)> = runs
        .iter()
        .map(|r| {
            (
                axis.cost(r).unwrap_or(0.0),
                r.final_val_loss.unwrap_or(f64::INFINITY),
            )
        })
        .collect();
    let on = pareto(&points);
    let front: Vec<(f64, f64)> = on.iter().map(|&i| points[i]).collect();
    let mut out: Vec<FrontierEntry> = runs
        .iter()
        .zip(&points)
        .enumerate()
        .map(|(i, (r, &p))| FrontierEntry {
            run_id: r.id,
            stack: r.stack.clone(),
            seed: r.seed,
            cost: p.0,
            val_loss: p.1,
            on_frontier: on.contains(&i),
            distance: distance(p, &front),
        })
        .collect();
    out.sort_by(|a, b| a.cost.total_cmp(&b.cost));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The naive definition: no other point is at least as good on both and
    /// better on one.
    fn naive_pareto(p: &[(f64, f64)]) -> Vec<usize> {
        let mut v: Vec<usize> = (0..p.len())
            .filter(|&i| {
                !(0..p.len()).any(|j| {
                    j != i
                        && p[j].0 <= p[i].0
                        && p[j].1 <= p[i].1
                        && (p[j].0 < p[i].0 || p[j].1 < p[i].1 || j < i)
                })
            })
            .collect();
        v.sort_by(|&a, &b| p[a].0.total_cmp(&p[b].0));
        v
    }

    #[test]
    fn pareto_matches_the_naive_definition() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for n in [1, 2, 5, 30] {
            for _ in 0..50 {
                // Coarse values, so ties happen.
                let p: Vec<(f64, f64)> = (0..n)
                    .map(|_| (rng.random_range(0..8) as f64, rng.random_range(0..8) as f64))
                    .collect();
                assert_eq!(pareto(&p), naive_pareto(&p), "{p:?}");
            }
        }
    }

    #[test]
    fn distance_is_the_loss_gap_at_equal_budget() {
        let front = [(1.0, 3.0), (2.0, 2.5), (4.0, 2.0)];
        assert_eq!(distance((2.0, 2.5), &front), 0.0);
        // At cost 3 the best frontier loss reachable is 2.5.
        assert!((distance((3.0, 2.9), &front) - 0.4).abs() < 1e-12);
        assert!((distance((10.0, 2.1), &front) - 0.1).abs() < 1e-12);
    }
}

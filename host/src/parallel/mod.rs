//! Data parallelism, the shape of the speedrun's torchrun + NCCL setup: `world`
//! ranks build the same model from the same seed, draw the same global batch and
//! each train on its share of the batch's sequences; their gradients are averaged
//! (an all-reduce) before the optimizer, so every rank takes the same step and the
//! parameters stay identical. At the end every rank's own verdict and parameter
//! digest are exchanged into one check (`Check::Ranks`), so all ranks share one
//! verdict.
//!
//! The transport is a `Collective`: `LocalGroup` (ranks as threads of one
//! process: the CPU, and the tests), and with the `nccl` feature
//! `nccl::NcclGroup` (a process per GPU, `mean` an NCCL all-reduce; launched by
//! `run --ranks N --device cuda`, see `launch`).

#[cfg(feature = "nccl")]
pub mod nccl;

use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Tensor};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Every rank's `mine`, in rank order; returns when every rank has given its
    /// own (a barrier), or fails when a rank has stopped.
    fn exchange(&self, mine: Vec<u8>) -> Result<Vec<Vec<u8>>>;
    /// Tells the other ranks that this one stopped, so they fail instead of waiting.
    fn abort(&self, why: &str);

    /// The mean over ranks of `t` (the same shape on every rank), summed in rank
    /// order so every rank gets the same bits.
    fn mean(&self, t: &Tensor) -> Result<Tensor> {
        let mine: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let n = mine.len();
        let all = self.exchange(mine.iter().flat_map(|v| v.to_le_bytes()).collect())?;
        let mut sum = vec![0.0f64; n];
        for (r, bytes) in all.iter().enumerate() {
            if bytes.len() != 4 * n {
                bail!(
                    "rank {r} sent {} values where rank {} has {n}",
                    bytes.len() / 4,
                    self.rank()
                );
            }
            for (s, c) in sum.iter_mut().zip(bytes.chunks_exact(4)) {
                *s += f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64;
            }
        }
        let w = self.world() as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / w) as f32).collect();
        Ok(Tensor::from_vec(mean, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }

    /// The mean over ranks of every tensor, through one `mean` of their
    /// concatenation: one exchange (one NCCL all-reduce) a step instead of one a
    /// parameter. Element by element the sums are the same, so are the bits.
    fn mean_all(&self, ts: &[Tensor]) -> Result<Vec<Tensor>> {
        if ts.is_empty() {
            return Ok(Vec::new());
        }
        let flat = ts
            .iter()
            .map(|t| t.to_dtype(DType::F32)?.flatten_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mean = self.mean(&Tensor::cat(&flat, 0)?)?;
        let mut at = 0;
        ts.iter()
            .map(|t| {
                let n = t.elem_count();
                at += n;
                Ok(mean
                    .narrow(0, at - n, n)?
                    .reshape(t.shape())?
                    .to_dtype(t.dtype())?)
            })
            .collect()
    }
}

/// Ranks as threads of one process, meeting in shared memory.
pub struct LocalGroup {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    world: usize,
    state: Mutex<State>,
    cv: Condvar,
    /// How long a rank waits for the others before it gives up.
    timeout: Duration,
}

#[derive(Default)]
struct State {
    /// Exchanges completed so far.
    round: u64,
    slots: Vec<Option<Vec<u8>>>,
    arrived: usize,
    /// The last completed exchange (kept until the next completes, which needs
    /// every rank, so no rank can miss it).
    result: Option<Arc<Vec<Vec<u8>>>>,
    aborted: Option<(usize, String)>,
}

impl LocalGroup {
    /// The `world` ranks of a new group (hand one to each rank's thread).
    pub fn new(world: usize) -> Vec<LocalGroup> {
        LocalGroup::with_timeout(world, Duration::from_secs(3600))
    }

    pub fn with_timeout(world: usize, timeout: Duration) -> Vec<LocalGroup> {
        let shared = Arc::new(Shared {
            world,
            state: Mutex::new(State {
                slots: vec![None; world],
                ..State::default()
            }),
            cv: Condvar::new(),
            timeout,
        });
        (0..world)
            .map(|rank| LocalGroup {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

impl Collective for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.shared.world
    }

    fn exchange(&self, mine: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        let sh = &self.shared;
        let mut st = sh.state.lock().unwrap_or_else(|p| p.into_inner());
        let stopped = |st: &State| {
            st.aborted
                .as_ref()
                .map(|(r, why)| anyhow!("rank {r} of {} stopped: {why}", sh.world))
        };
        if let Some(e) = stopped(&st) {
            return Err(e);
        }
        let round = st.round;
        st.slots[self.rank] = Some(mine);
        st.arrived += 1;
        if st.arrived == sh.world {
            let all = st
                .slots
                .iter_mut()
                .map(|s| s.take().unwrap_or_default())
                .collect();
            st.result = Some(Arc::new(all));
            st.arrived = 0;
            st.round += 1;
            sh.cv.notify_all();
        } else {
            let (next, _) = sh
                .cv
                .wait_timeout_while(st, sh.timeout, |s| s.round == round && s.aborted.is_none())
                .unwrap_or_else(|p| p.into_inner());
            st = next;
            if st.round == round {
                return Err(stopped(&st).unwrap_or_else(|| {
                    anyhow!(
                        "rank {}: the other ranks did not reach the exchange within {:?}",
                        self.rank,
                        sh.timeout
                    )
                }));
            }
        }
        Ok(st.result.as_deref().cloned().unwrap_or_default())
    }

    fn abort(&self, why: &str) {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.aborted.get_or_insert((self.rank, why.to_string()));
        self.shared.cv.notify_all();
    }
}

/// What each rank reports of itself at the end of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RankReport {
    pub rank: usize,
    pub valid: bool,
    /// The names of its failed checks.
    pub failed: Vec<String>,
    /// SHA-256 of its parameters after training.
    pub params_sha256: String,
}

/// Every rank's report, for the `ranks` check; an error if a rank stopped.
pub fn gather_reports(group: &dyn Collective, mine: &RankReport) -> Result<Vec<RankReport>> {
    group
        .exchange(serde_json::to_vec(mine)?)?
        .iter()
        .map(|b| Ok(serde_json::from_slice(b)?))
        .collect()
}

/// The `ranks` check's outcome: `Ok(detail)` when every rank is valid and holds
/// the same parameters, else `Err(detail)` naming the ranks that differ.
pub fn judge(reports: &[RankReport]) -> std::result::Result<String, String> {
    let bad: Vec<String> = reports
        .iter()
        .filter(|r| !r.valid)
        .map(|r| format!("rank {} failed {}", r.rank, r.failed.join(", ")))
        .collect();
    let first = &reports[0].params_sha256;
    let differ: Vec<String> = reports
        .iter()
        .filter(|r| &r.params_sha256 != first)
        .map(|r| {
            format!(
                "rank {} ({})",
                r.rank,
                &r.params_sha256[..12.min(r.params_sha256.len())]
            )
        })
        .collect();
    if bad.is_empty() && differ.is_empty() {
        Ok(match reports.len() {
            1 => format!(
                "1 rank of 1, valid (a group of one: the all-reduce is exercised, nothing to compare; sha256 {})",
                &first[..16.min(first.len())]
            ),
            n => format!(
                "{n} ranks, each valid; their parameters are identical after training (sha256 {})",
                &first[..16.min(first.len())]
            ),
        })
    } else {
        let mut why = bad;
        if !differ.is_empty() {
            why.push(format!(
                "parameters differ from rank 0's ({}): {}",
                &first[..12.min(first.len())],
                differ.join(", ")
            ));
        }
        Err(why.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn ranks_exchange_in_rank_order_and_average_gradients() {
        let groups = LocalGroup::new(3);
        let out: Vec<(Vec<Vec<u8>>, Vec<f32>)> = std::thread::scope(|s| {
            let hs: Vec<_> = groups
                .iter()
                .map(|g| {
                    s.spawn(move || {
                        let a = g.exchange(vec![g.rank() as u8]).unwrap();
                        let b = g.exchange(vec![10 + g.rank() as u8; 2]).unwrap();
                        assert_eq!(b, vec![vec![10, 10], vec![11, 11], vec![12, 12]]);
                        let t = Tensor::new(
                            &[g.rank() as f32, 1.0, -3.0 * g.rank() as f32],
                            &Device::Cpu,
                        )
                        .unwrap();
                        (a, g.mean(&t).unwrap().to_vec1::<f32>().unwrap())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (a, m) in out {
            assert_eq!(a, vec![vec![0], vec![1], vec![2]]);
            assert_eq!(m, vec![1.0, 1.0, -3.0]);
        }
    }

    /// A rank that counts its exchanges.
    struct Counting<'a>(&'a LocalGroup, AtomicUsize);

    impl Collective for Counting<'_> {
        fn rank(&self) -> usize {
            self.0.rank()
        }
        fn world(&self) -> usize {
            self.0.world()
        }
        fn exchange(&self, mine: Vec<u8>) -> Result<Vec<Vec<u8>>> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.exchange(mine)
        }
        fn abort(&self, why: &str) {
            self.0.abort(why)
        }
    }

    #[test]
    fn one_exchange_averages_every_tensor_as_separate_means_would() {
        let groups = LocalGroup::new(2);
        std::thread::scope(|s| {
            for g in &groups {
                s.spawn(move || {
                    let r = g.rank() as f32;
                    let ts = [
                        Tensor::new(&[[r, 1.0], [2.0 * r, 0.1]], &Device::Cpu).unwrap(),
                        Tensor::new(3.0 + r, &Device::Cpu).unwrap(),
                        Tensor::new(&[-r, 0.3 * r, 7.0], &Device::Cpu).unwrap(),
                    ];
                    let counted = Counting(g, AtomicUsize::new(0));
                    let together = counted.mean_all(&ts).unwrap();
                    assert_eq!(counted.1.load(Ordering::SeqCst), 1);
                    for (t, m) in ts.iter().zip(&together) {
                        assert_eq!(m.dims(), t.dims());
                        let alone = g.mean(t).unwrap();
                        let bits = |x: &Tensor| -> Vec<u32> {
                            x.flatten_all()
                                .unwrap()
                                .to_vec1::<f32>()
                                .unwrap()
                                .iter()
                                .map(|v| v.to_bits())
                                .collect()
                        };
                        assert_eq!(bits(m), bits(&alone));
                    }
                    assert_eq!(together[1].to_scalar::<f32>().unwrap(), 3.5);
                });
            }
        });
    }

    #[test]
    fn a_stopped_rank_fails_the_others_instead_of_hanging() {
        let groups = LocalGroup::with_timeout(2, Duration::from_secs(30));
        let err = std::thread::scope(|s| {
            let waiter = s.spawn(|| groups[0].exchange(vec![1]).unwrap_err().to_string());
            std::thread::sleep(Duration::from_millis(50));
            groups[1].abort("plugin muon, hook optimizer.step: boom");
            waiter.join().unwrap()
        });
        assert!(err.contains("rank 1 of 2 stopped: plugin muon"), "{err}");
        // Later exchanges fail at once too.
        assert!(groups[0].exchange(vec![]).is_err());
        let lonely = LocalGroup::with_timeout(2, Duration::from_millis(50));
        let e = lonely[0].exchange(vec![]).unwrap_err().to_string();
        assert!(e.contains("did not reach the exchange"), "{e}");
    }

    #[test]
    fn the_ranks_check_names_invalid_ranks_and_diverged_parameters() {
        let r = |rank, valid: bool, sha: &str| RankReport {
            rank,
            valid,
            failed: if valid {
                vec![]
            } else {
                vec!["causality".into()]
            },
            params_sha256: sha.into(),
        };
        assert!(judge(&[r(0, true, "aaaa"), r(1, true, "aaaa")])
            .unwrap()
            .starts_with("2 ranks, each valid"));
        let e = judge(&[r(0, true, "aaaa"), r(1, false, "aaaa"), r(2, true, "bbbb")]).unwrap_err();
        assert!(
            e.contains("rank 1 failed causality") && e.contains("rank 2 (bbbb)"),
            "{e}"
        );
    }
}

//! The training clock: wall time over the training steps only. It is paused while
//! the host validates, so validation never counts against a run.

use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct TrainingTimer {
    elapsed: Duration,
    started: Option<Instant>,
}

impl TrainingTimer {
    pub fn new() -> TrainingTimer {
        TrainingTimer::default()
    }

    /// Starts (or resumes) the clock.
    pub fn resume(&mut self) {
        if self.started.is_none() {
            self.started = Some(Instant::now());
        }
    }

    /// Pauses the clock; returns the span just measured.
    pub fn pause(&mut self) -> Duration {
        match self.started.take() {
            Some(t) => {
                let d = t.elapsed();
                self.elapsed += d;
                d
            }
            None => Duration::ZERO,
        }
    }

    /// Training time so far (including a running span).
    pub fn elapsed(&self) -> Duration {
        self.elapsed + self.started.map(|t| t.elapsed()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paused_time_does_not_count() {
        let mut t = TrainingTimer::new();
        t.resume();
        std::thread::sleep(Duration::from_millis(20));
        let first = t.pause();
        std::thread::sleep(Duration::from_millis(60));
        // Paused: nothing accrues.
        assert_eq!(t.elapsed(), first);
        t.resume();
        std::thread::sleep(Duration::from_millis(20));
        t.pause();
        assert!(t.elapsed() >= Duration::from_millis(40));
        assert!(
            t.elapsed() < first + Duration::from_millis(60) + Duration::from_millis(20) + first
        );
    }
}

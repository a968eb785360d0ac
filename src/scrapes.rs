//! The scrapes' clock between the server and the sampler: the server says
//! when each scrape of the metrics arrives, and the sampler waits on it for
//! its next sample, which `portstat_core::cadence` times: every
//! `--collector.interval`, or just before each scrape once the scrapes
//! come at a steady period (`--collector.follow-scrapes`).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use portstat_core::cadence::{Cadence, Plan};

/// When scrapes came, shared by the server and the sampler.
#[derive(Debug)]
pub struct ScrapeClock {
    /// What the cadence's times count from.
    epoch: Instant,
    /// Whether scrapes are followed; if not, samples run every interval.
    follow: bool,
    cadence: Mutex<Cadence>,
    /// Rung at each scrape recorded, so that a scrape the cadence did not
    /// expect brings the next sample forward at once.
    arrived: Condvar,
}

impl ScrapeClock {
    /// A clock for samples at most `interval` apart, following the scrapes
    /// where `follow` is set.
    pub fn new(interval: Duration, follow: bool) -> ScrapeClock {
        ScrapeClock {
            epoch: Instant::now(),
            follow,
            cadence: Mutex::new(Cadence::new(interval.as_secs_f64())),
            arrived: Condvar::new(),
        }
    }

    fn seconds(&self, at: Instant) -> f64 {
        at.duration_since(self.epoch).as_secs_f64()
    }

    fn cadence(&self) -> MutexGuard<'_, Cadence> {
        // The cadence is left whole by every method that holds the lock.
        self.cadence
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a scrape of the metrics arriving now.
    pub fn scraped(&self) {
        if !self.follow {
            return;
        }
        let now = self.seconds(Instant::now());
        // A scrape one with the last changes nothing of the plan: a flood
        // of scrapes wakes the sampler at most twice a second.
        if self.cadence().scraped(now) {
            self.arrived.notify_one();
        }
    }

    /// The period of the scrapes the samples follow, in seconds.
    pub fn period(&self) -> Option<f64> {
        self.cadence().period()
    }

    /// Waits until the next sample is due, the last having started at
    /// `last_start` and taken `took`.
    pub fn wait_for_next_sample(&self, last_start: Instant, took: Duration) {
        let last_start = self.seconds(last_start);
        let mut cadence = self.cadence();
        loop {
            let now = self.seconds(Instant::now());
            let until = match cadence.plan(now, Some(last_start), took.as_secs_f64()) {
                Plan::SampleNow => return,
                Plan::WaitUntil(at) => at,
            };
            let wait = Duration::from_secs_f64((until - now).max(0.0));
            cadence = match self.arrived.wait_timeout(cadence, wait) {
                Ok((cadence, _)) => cadence,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_scrapes_a_sample_is_due_an_interval_after_the_last_began() {
        let clock = ScrapeClock::new(Duration::from_millis(200), true);
        let started = Instant::now();
        clock.wait_for_next_sample(started, Duration::from_millis(10));
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(clock.period(), None);
    }
}

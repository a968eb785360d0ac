//! When to sample: every `--collector.interval`, or, once the scrapes come
//! at a steady period, just before each scrape that is due, so that every
//! scrape gets figures no older than the interval without the exporter
//! sampling more often than it is asked.
//!
//! The rule, on the times scrapes arrived (seconds on a monotonic clock):
//! - A scrape arriving within `TOLERANCE` of the last one recorded is the
//!   same scrape (two scrapers at once, a retry) and is not recorded again.
//! - The period is the shortest gap `P` longer than the interval, back from
//!   the latest scrape, such that each scrape of the last `2P` (at least
//!   `CONFIRMATIONS` of them) had one `P` before it, within `TOLERANCE`.
//!   Several scrapers of one period (an HA pair of Prometheus servers) are
//!   several phases of it.
//! - With a period, each scrape of the last period is expected again one
//!   period later. The next sample starts `lead` before the first expected
//!   scrape that the last sample does not serve (it serves a scrape that
//!   comes no later than the interval less `TOLERANCE` past its start).
//! - Without a period, when an expected scrape is overdue by `TOLERANCE`,
//!   where following the phases would sample as often as the interval
//!   does, or with an interval under a second, samples run every interval,
//!   as a plain timer.
//!
//! A scrape that comes off the period (a person's `curl`) may get figures
//! as old as the period; it breaks the period for the two periods after it,
//! during which samples run every interval again.

use std::collections::VecDeque;

/// How far a scrape may come from when it was expected, in seconds; also
/// the margin kept before an expected scrape.
pub const TOLERANCE: f64 = 0.5;

/// Scrapes of the last `2P`, each one period after another, before a
/// period is followed.
pub const CONFIRMATIONS: usize = 3;

/// The longest period followed, in seconds: Prometheus's longest usual
/// scrape interval is minutes.
pub const LONGEST_PERIOD: f64 = 600.0;

/// The shortest interval with which scrapes are followed, in seconds.
pub const SHORTEST_INTERVAL_FOLLOWED: f64 = 2.0 * TOLERANCE;

/// The most scrape times kept: enough for three periods of twenty phases.
const KEPT: usize = 64;

/// The times scrapes arrived, and what they say of when to sample.
#[derive(Debug, Clone)]
pub struct Cadence {
    /// `--collector.interval`, in seconds: the longest a scrape's figures
    /// may be past their sample's start.
    interval: f64,
    /// Arrival times, oldest first.
    scrapes: VecDeque<f64>,
}

/// What the sampler does next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan {
    /// Sample now.
    SampleNow,
    /// Wait until this time (or until a scrape comes), then ask again.
    WaitUntil(f64),
}

impl Cadence {
    /// No scrape seen yet; samples at most `interval` seconds apart until
    /// scrapes show a period.
    pub fn new(interval: f64) -> Cadence {
        Cadence {
            interval,
            scrapes: VecDeque::with_capacity(KEPT),
        }
    }

    /// Records a scrape that arrived at `at`; returns false where it is
    /// one with the last recorded, which changes nothing of the plan.
    pub fn scraped(&mut self, at: f64) -> bool {
        if self
            .scrapes
            .back()
            .is_some_and(|&last| at - last < TOLERANCE)
        {
            return false;
        }
        if self.scrapes.len() == KEPT {
            self.scrapes.pop_front();
        }
        self.scrapes.push_back(at);
        true
    }

    /// The period the scrapes come at, in seconds, once confirmed.
    pub fn period(&self) -> Option<f64> {
        let &latest = self.scrapes.back()?;
        self.scrapes
            .iter()
            .rev()
            .skip(1)
            .map(|&earlier| latest - earlier)
            .filter(|&gap| gap > self.interval + TOLERANCE)
            .take_while(|&gap| gap <= LONGEST_PERIOD)
            .find(|&gap| self.confirms(gap))
            .map(|gap| self.refined(gap))
    }

    /// `period` as the mean over the chain of scrapes a period apart back
    /// from the latest, so that one scrape's delay does not shift every
    /// expected time.
    fn refined(&self, period: f64) -> f64 {
        let Some(&latest) = self.scrapes.back() else {
            return period;
        };
        let (mut oldest, mut steps) = (latest, 0u32);
        while let Some(&earlier) = self
            .scrapes
            .iter()
            .find(|&&earlier| (oldest - period - earlier).abs() <= TOLERANCE)
        {
            oldest = earlier;
            steps += 1;
        }
        if steps == 0 {
            period
        } else {
            (latest - oldest) / f64::from(steps)
        }
    }

    /// Whether each scrape of the last `2 * period` had one a period
    /// before it, and there are enough of them.
    fn confirms(&self, period: f64) -> bool {
        let Some(&latest) = self.scrapes.back() else {
            return false;
        };
        let recent: Vec<f64> = self
            .scrapes
            .iter()
            .copied()
            .filter(|&at| at > latest - 2.0 * period - TOLERANCE)
            .collect();
        recent.len() >= CONFIRMATIONS
            && recent.iter().all(|&at| {
                self.scrapes
                    .iter()
                    .any(|&earlier| (at - period - earlier).abs() <= TOLERANCE)
            })
    }

    /// The scrapes expected next: each of the last period's, one period
    /// later, soonest first.
    fn expected(&self, period: f64) -> Vec<f64> {
        let Some(&latest) = self.scrapes.back() else {
            return Vec::new();
        };
        self.scrapes
            .iter()
            .filter(|&&at| at > latest - period + TOLERANCE)
            .map(|&at| at + period)
            .collect()
    }

    /// What to do at `now`, the last sample having started at `last_start`
    /// (none yet: sample now) and taken `sample_seconds`.
    pub fn plan(&self, now: f64, last_start: Option<f64>, sample_seconds: f64) -> Plan {
        let Some(last_start) = last_start else {
            return Plan::SampleNow;
        };
        let by_interval = last_start + self.interval;
        let at = self
            .following(now, last_start, sample_seconds)
            .unwrap_or(by_interval);
        if at <= now {
            Plan::SampleNow
        } else {
            Plan::WaitUntil(at)
        }
    }

    /// When the next sample starts when following the period, with the
    /// time to look again if an expected scrape may be overdue by then;
    /// `None` where samples run every interval.
    fn following(&self, now: f64, last_start: f64, sample_seconds: f64) -> Option<f64> {
        // An interval within the margin leaves no time to sample before a
        // scrape.
        if self.interval < SHORTEST_INTERVAL_FOLLOWED {
            return None;
        }
        let period = self.period()?;
        let expected = self.expected(period);
        if expected.iter().any(|&at| at + TOLERANCE <= now) {
            return None;
        }
        // The sample must end before the scrape, and start no longer than
        // the interval before the latest the scrape may come.
        let lead = (1.5 * sample_seconds + 2.0 * TOLERANCE).min(self.interval - TOLERANCE);
        let serves = |start: f64, scrape: f64| scrape + TOLERANCE - start <= self.interval;
        // Samples to serve the expected scrapes from the next unserved one:
        // each as late as it may start, serving as many as it can.
        let mut starts: Vec<f64> = Vec::new();
        for &scrape in &expected {
            let served = starts.last().map_or(
                scrape >= last_start && serves(last_start, scrape),
                |&start| serves(start, scrape),
            );
            if !served {
                starts.push(scrape - lead);
            }
        }
        // Following is for sampling less often: as often as every interval
        // over the period, a timer does as well and fails no one.
        if starts.len() as f64 >= period / self.interval {
            return None;
        }
        let next_start = starts.first().copied();
        // Look again when the first expected scrape is overdue, so that one
        // that does not come is found out in time.
        let look_again = expected.first().map(|&at| at + TOLERANCE);
        match (next_start, look_again) {
            (Some(start), Some(look)) => Some(start.min(look)),
            (start, look) => start.or(look),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cadence of interval 5 s that saw scrapes at `times`.
    fn seen(times: &[f64]) -> Cadence {
        let mut cadence = Cadence::new(5.0);
        for &at in times {
            cadence.scraped(at);
        }
        cadence
    }

    #[test]
    fn without_scrapes_samples_run_every_interval() {
        let cadence = seen(&[]);
        assert_eq!(cadence.plan(0.0, None, 0.1), Plan::SampleNow);
        assert_eq!(cadence.plan(1.0, Some(0.0), 0.1), Plan::WaitUntil(5.0));
        assert_eq!(cadence.plan(5.0, Some(0.0), 0.1), Plan::SampleNow);
        assert_eq!(cadence.period(), None);
    }

    #[test]
    fn a_period_is_followed_after_four_scrapes_at_it() {
        assert_eq!(seen(&[0.0, 15.0, 30.0]).period(), None);
        let cadence = seen(&[0.0, 15.01, 29.98, 45.0]);
        let period = cadence.period().unwrap();
        assert!((period - 15.0).abs() < 0.05, "{period}");
        // Sampled at 41.5: the scrape expected at 60 is served by a sample
        // starting the lead before it (1.5 * 0.2 + 1.0 = 1.3 s).
        match cadence.plan(46.0, Some(41.5), 0.2) {
            Plan::WaitUntil(at) => assert!((at - (60.0 - 1.3)).abs() < 0.05, "{at}"),
            plan => panic!("{plan:?}"),
        }
        assert_eq!(cadence.plan(58.8, Some(41.5), 0.2), Plan::SampleNow);
    }

    /// Runs a sampler whose samples take `duration` for `seconds`, with
    /// scrapes at `scrapes` (sorted). Returns how many samples it took and,
    /// for each scrape after the first sample, how long before it the
    /// sample it was served had ended (a scrape during a sample gets the
    /// one before).
    fn simulate(scrapes: &[f64], duration: f64, seconds: f64) -> (usize, Vec<f64>) {
        let mut cadence = Cadence::new(5.0);
        let mut now = 0.0;
        let mut done: Option<(f64, f64)> = None;
        let mut samples = 0;
        let mut ages = Vec::new();
        let mut next = 0;
        let mut deliver = |until: f64, done: Option<(f64, f64)>, cadence: &mut Cadence| {
            while next < scrapes.len() && scrapes[next] < until {
                if let Some((_, end)) = done {
                    ages.push(scrapes[next] - end);
                }
                cadence.scraped(scrapes[next]);
                next += 1;
            }
            scrapes.get(next).copied().unwrap_or(f64::INFINITY)
        };
        while now < seconds {
            let upcoming = deliver(now + 1e-9, done, &mut cadence);
            match cadence.plan(now, done.map(|(start, _)| start), duration) {
                Plan::SampleNow => {
                    deliver(now + duration, done, &mut cadence);
                    done = Some((now, now + duration));
                    samples += 1;
                    now += duration;
                }
                Plan::WaitUntil(at) => {
                    assert!(at > now);
                    now = at.min(upcoming);
                }
            }
        }
        (samples, ages)
    }

    #[test]
    fn one_sample_a_scrape_once_the_period_is_confirmed() {
        // A scraper every 15 s for ten minutes, each scrape a little early
        // or late; samples of 0.3 s.
        let scrapes: Vec<f64> = (0..40)
            .map(|n| 3.0 + 15.0 * f64::from(n) + 0.1 * f64::from(n % 3) - 0.1)
            .collect();
        let (samples, ages) = simulate(&scrapes, 0.3, 600.0);
        // Every interval until the fourth scrape (48 s), then one a scrape.
        assert!((38..=50).contains(&samples), "{samples} samples");
        assert!(ages.iter().all(|&age| age <= 5.0), "{ages:?}");
        // Once followed, a scrape's figures are at most the lead old.
        assert!(ages[5..].iter().all(|&age| age <= 1.5), "{ages:?}");
    }

    #[test]
    fn two_scrapers_are_served_by_a_sample_each_period_where_close() {
        let scrapes: Vec<f64> = (0..40)
            .flat_map(|n| {
                let at = 2.0 + 15.0 * f64::from(n);
                [at, at + 3.0]
            })
            .collect();
        let (samples, ages) = simulate(&scrapes, 0.3, 600.0);
        assert!((38..=50).contains(&samples), "{samples} samples");
        assert!(ages.iter().all(|&age| age <= 5.0), "{ages:?}");
    }

    #[test]
    fn a_flood_of_scrapes_samples_no_more_than_the_timer() {
        let scrapes: Vec<f64> = (0..1000).map(|n| 0.6 * f64::from(n)).collect();
        let (samples, ages) = simulate(&scrapes, 0.3, 600.0);
        assert!(samples <= 121, "{samples} samples");
        assert!(ages.iter().all(|&age| age <= 5.0), "{ages:?}");
    }

    #[test]
    fn scrapes_that_stop_leave_samples_every_interval() {
        let scrapes: Vec<f64> = (0..10).map(|n| 15.0 * f64::from(n)).collect();
        let (samples, ages) = simulate(&scrapes, 0.3, 600.0);
        // Ten minutes less the scrapes' 135 s, at the timer's rate.
        assert!(samples >= 90, "{samples} samples");
        assert!(ages.iter().all(|&age| age <= 5.0), "{ages:?}");
    }

    #[test]
    fn two_scrapers_of_one_period_are_two_phases() {
        let cadence = seen(&[0.0, 3.0, 15.0, 18.0, 30.0, 33.0, 45.0, 48.0]);
        assert!((cadence.period().unwrap() - 15.0).abs() < 1e-9);
        assert_eq!(cadence.expected(15.0), vec![60.0, 63.0]);
        // The sample for 60 also serves 63 (within 5 s less the margin).
        match cadence.plan(50.0, Some(46.0), 0.2) {
            Plan::WaitUntil(at) => assert!((at - 58.7).abs() < 1e-9, "{at}"),
            plan => panic!("{plan:?}"),
        }
        // Phases 8 s apart need a sample each.
        let cadence = seen(&[0.0, 8.0, 15.0, 23.0, 30.0, 38.0, 45.0, 53.0]);
        assert!((cadence.period().unwrap() - 15.0).abs() < 1e-9);
        match cadence.plan(54.0, Some(51.0), 0.2) {
            Plan::WaitUntil(at) => assert!((at - 58.7).abs() < 1e-9, "{at}"),
            plan => panic!("{plan:?}"),
        }
        assert_eq!(cadence.plan(58.7, Some(51.0), 0.2), Plan::SampleNow);
        match cadence.plan(59.0, Some(58.7), 0.2) {
            // Looks again just past 60, in case that scrape is overdue.
            Plan::WaitUntil(at) => assert!((at - 60.5).abs() < 1e-9, "{at}"),
            plan => panic!("{plan:?}"),
        }
    }

    #[test]
    fn scrapes_as_often_as_the_interval_leave_the_timer() {
        let cadence = seen(&[0.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0]);
        // A gap of 8 s confirms, but the phases need a sample every 4 s.
        assert_eq!(cadence.plan(25.0, Some(22.0), 0.2), Plan::WaitUntil(27.0));
    }

    #[test]
    fn a_scrape_off_the_period_returns_to_the_timer() {
        let mut cadence = seen(&[0.0, 15.0, 30.0, 45.0]);
        cadence.scraped(50.0);
        assert_eq!(cadence.period(), None);
        assert_eq!(cadence.plan(50.0, Some(43.7), 0.2), Plan::SampleNow);
        // Two periods past it, the stray one no longer counts.
        for at in [60.0, 75.0] {
            cadence.scraped(at);
            assert_eq!(cadence.period(), None);
        }
        cadence.scraped(90.0);
        assert!((cadence.period().unwrap() - 15.0).abs() < 1e-9);
    }

    #[test]
    fn an_overdue_scrape_returns_to_the_timer() {
        let cadence = seen(&[0.0, 15.0, 30.0, 45.0]);
        // Sampled for 60 at 58.7; at 60.6 that scrape has not come.
        assert_eq!(cadence.plan(60.6, Some(58.7), 0.2), Plan::WaitUntil(63.7));
        assert_eq!(cadence.plan(63.7, Some(58.7), 0.2), Plan::SampleNow);
    }

    #[test]
    fn an_interval_within_the_margin_is_a_plain_timer() {
        let mut cadence = Cadence::new(0.1);
        for at in [0.0, 3.0, 6.0, 9.0, 12.0] {
            cadence.scraped(at);
        }
        assert_eq!(cadence.plan(12.05, Some(12.0), 0.01), Plan::WaitUntil(12.1));
    }

    #[test]
    fn a_burst_is_one_scrape() {
        let cadence = seen(&[0.0, 0.1, 0.2, 15.0, 15.3, 30.0, 45.0, 45.2]);
        assert_eq!(cadence.scrapes.len(), 4);
        assert!(!seen(&[0.0]).scraped(0.4));
        assert!(seen(&[0.0]).scraped(0.5));
        assert!((cadence.period().unwrap() - 15.0).abs() < 1e-9);
    }

    #[test]
    fn a_slow_sample_starts_earlier_but_within_the_interval() {
        let cadence = seen(&[0.0, 15.0, 30.0, 45.0]);
        // A 4 s sample: the lead is capped at 4.5 s.
        assert_eq!(
            cadence.plan(46.0, Some(41.0), 4.0),
            Plan::WaitUntil(60.0 - 4.5)
        );
    }
}

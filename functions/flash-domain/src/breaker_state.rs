//! A circuit breaker for one dependency, as a pure state machine over an injected clock.
//!
//! Closed: calls go through; `failures` consecutive failures (throttles, timeouts, the
//! service unavailable) within `window` open it. Open: callers are refused at once for
//! `cool_down`, so a struggling dependency gets room to recover and callers get an answer
//! without waiting for timeouts. Then half-open: one probe call goes through; its success
//! closes the breaker, its failure opens it for another `cool_down`. Business answers (a
//! failed condition, a conflict) are successes here: the dependency answered.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failures: u32,
    /// They must all fall within this span; an older run of failures starts over.
    pub window: Duration,
    /// How long the breaker stays open before it lets a probe through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    /// Five failures in ten seconds: with the SDK's three attempts each, that is fifteen
    /// throttled or timed-out attempts in a row, not a blip. Five seconds open: long enough
    /// for DynamoDB's adaptive capacity or a restarted endpoint to catch up, short enough
    /// that a sale loses little when the trip was spurious.
    fn default() -> Self {
        Self {
            failures: 5,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// A state change, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: State,
    pub to: State,
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Call the dependency.
    Call,
    /// Call it as the half-open probe: its outcome decides the breaker.
    Probe,
    /// Do not call it; answer "unavailable, retry after this".
    Refuse(Duration),
}

/// How a call went, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The dependency answered (whatever it said).
    Answered,
    /// Throttled, timed out, or unavailable.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed {
        failures: u32,
        since: Option<Instant>,
    },
    Open {
        until: Instant,
    },
    /// `probe`: when the probe in flight was let through.
    HalfOpen {
        probe: Option<Instant>,
    },
}

#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Inner,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Inner::Closed {
                failures: 0,
                since: None,
            },
        }
    }

    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    pub fn state(&self) -> State {
        match self.inner {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { .. } => State::Open,
            Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Whether a call at `now` would be refused, and for how long, without changing anything
    /// (to check several breakers before taking a probe from any).
    pub fn refusal(&self, now: Instant) -> Option<Duration> {
        match self.inner {
            Inner::Closed { .. } => None,
            Inner::Open { until } if now < until => Some(until - now),
            Inner::Open { .. } => None,
            Inner::HalfOpen { probe: Some(at) } if now < at + self.config.cool_down => {
                // The probe's answer is due within one attempt; ask callers to come back soon.
                Some(Duration::from_secs(1))
            }
            Inner::HalfOpen { .. } => None,
        }
    }

    /// Asks to call the dependency at `now`.
    pub fn permit(&mut self, now: Instant) -> (Permit, Option<Change>) {
        if let Some(wait) = self.refusal(now) {
            return (Permit::Refuse(wait), None);
        }
        match self.inner {
            Inner::Closed { .. } => (Permit::Call, None),
            // Cool-down over: let one probe through.
            Inner::Open { .. } => {
                self.inner = Inner::HalfOpen { probe: Some(now) };
                (Permit::Probe, Some(self.change(State::Open)))
            }
            // No probe in flight (or it was lost without an answer): this call is the probe.
            Inner::HalfOpen { .. } => {
                self.inner = Inner::HalfOpen { probe: Some(now) };
                (Permit::Probe, None)
            }
        }
    }

    /// The probe let through was never used (the request ended before calling the
    /// dependency): the next caller may probe.
    pub fn release_probe(&mut self) {
        if let Inner::HalfOpen { .. } = self.inner {
            self.inner = Inner::HalfOpen { probe: None };
        }
    }

    /// Records how a call ended at `now`.
    pub fn record(&mut self, outcome: Outcome, now: Instant) -> Option<Change> {
        let before = self.state();
        self.inner = match (self.inner, outcome) {
            (Inner::Closed { .. }, Outcome::Answered) => Inner::Closed {
                failures: 0,
                since: None,
            },
            (Inner::Closed { failures, since }, Outcome::Failed) => {
                let (failures, since) = match since {
                    Some(s) if now.saturating_duration_since(s) <= self.config.window => {
                        (failures + 1, s)
                    }
                    _ => (1, now),
                };
                if failures >= self.config.failures {
                    Inner::Open {
                        until: now + self.config.cool_down,
                    }
                } else {
                    Inner::Closed {
                        failures,
                        since: Some(since),
                    }
                }
            }
            // Calls let through before the breaker opened may still be finishing; the
            // cool-down runs its course whatever they report.
            (open @ Inner::Open { .. }, _) => open,
            (Inner::HalfOpen { .. }, Outcome::Answered) => Inner::Closed {
                failures: 0,
                since: None,
            },
            (Inner::HalfOpen { .. }, Outcome::Failed) => Inner::Open {
                until: now + self.config.cool_down,
            },
        };
        (self.state() != before).then(|| self.change(before))
    }

    fn change(&self, from: State) -> Change {
        Change {
            from,
            to: self.state(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn breaker() -> (Breaker, Instant) {
        let config = BreakerConfig {
            failures: 3,
            window: 10 * SEC,
            cool_down: 5 * SEC,
        };
        (Breaker::new(config), Instant::now())
    }

    /// A [`breaker`] opened at `t` by its third failure.
    fn tripped() -> (Breaker, Instant) {
        let (mut b, t) = breaker();
        for _ in 0..3 {
            b.record(Outcome::Failed, t);
        }
        assert_eq!(b.state(), State::Open);
        (b, t)
    }

    fn change(from: State, to: State) -> Option<Change> {
        Some(Change { from, to })
    }

    #[test]
    fn closed_lets_calls_through_and_a_success_resets_the_failure_count() {
        let (mut b, t) = breaker();
        assert_eq!(b.permit(t), (Permit::Call, None));
        assert_eq!(b.record(Outcome::Failed, t), None);
        assert_eq!(b.record(Outcome::Failed, t + SEC), None);
        assert_eq!(b.record(Outcome::Answered, t + 2 * SEC), None);
        assert_eq!(b.record(Outcome::Failed, t + 3 * SEC), None);
        assert_eq!(b.record(Outcome::Failed, t + 4 * SEC), None);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn closed_opens_after_n_consecutive_failures_within_the_window() {
        let (mut b, t) = breaker();
        b.record(Outcome::Failed, t);
        b.record(Outcome::Failed, t + SEC);
        assert_eq!(
            b.record(Outcome::Failed, t + 2 * SEC),
            change(State::Closed, State::Open)
        );
        // Refused at once, told to come back when the cool-down ends.
        assert_eq!(b.permit(t + 3 * SEC), (Permit::Refuse(4 * SEC), None));
        assert_eq!(b.refusal(t + 3 * SEC), Some(4 * SEC));
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_open_it() {
        let (mut b, t) = breaker();
        b.record(Outcome::Failed, t);
        b.record(Outcome::Failed, t + 9 * SEC);
        // The run started 11 s ago: it starts over from this failure.
        assert_eq!(b.record(Outcome::Failed, t + 11 * SEC), None);
        assert_eq!(b.state(), State::Closed);
        b.record(Outcome::Failed, t + 12 * SEC);
        assert_eq!(
            b.record(Outcome::Failed, t + 13 * SEC),
            change(State::Closed, State::Open)
        );
    }

    #[test]
    fn open_ignores_late_outcomes_and_turns_half_open_after_the_cool_down() {
        let (mut b, t) = tripped();
        // A call let through before the trip answers late: still open.
        assert_eq!(b.record(Outcome::Answered, t + SEC), None);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.refusal(t + 5 * SEC), None);
        assert_eq!(
            b.permit(t + 5 * SEC),
            (Permit::Probe, change(State::Open, State::HalfOpen))
        );
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_success_closes_it() {
        let (mut b, t) = tripped();
        let probe_at = t + 6 * SEC;
        assert_eq!(b.permit(probe_at).0, Permit::Probe);
        // Everyone else waits for the probe's answer.
        assert_eq!(b.permit(probe_at), (Permit::Refuse(SEC), None));
        assert_eq!(
            b.record(Outcome::Answered, probe_at + SEC),
            change(State::HalfOpen, State::Closed)
        );
        assert_eq!(b.permit(probe_at + SEC), (Permit::Call, None));
        // Closed again with a clean count: it takes three new failures to open.
        b.record(Outcome::Failed, probe_at + SEC);
        b.record(Outcome::Failed, probe_at + SEC);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn half_open_reopens_for_another_cool_down_when_the_probe_fails() {
        let (mut b, t) = tripped();
        let probe_at = t + 5 * SEC;
        assert_eq!(b.permit(probe_at).0, Permit::Probe);
        assert_eq!(
            b.record(Outcome::Failed, probe_at + SEC),
            change(State::HalfOpen, State::Open)
        );
        assert_eq!(
            b.permit(probe_at + 2 * SEC),
            (Permit::Refuse(4 * SEC), None)
        );
        assert_eq!(
            b.permit(probe_at + 6 * SEC),
            (Permit::Probe, change(State::Open, State::HalfOpen))
        );
    }

    #[test]
    fn an_unused_or_lost_probe_does_not_leave_it_half_open_forever() {
        let (mut b, t) = tripped();
        assert_eq!(b.permit(t + 5 * SEC).0, Permit::Probe);
        // The request ended without calling the dependency.
        b.release_probe();
        assert_eq!(b.permit(t + 5 * SEC), (Permit::Probe, None));
        // This one never reports; after a cool-down another caller probes.
        assert!(matches!(b.permit(t + 9 * SEC).0, Permit::Refuse(_)));
        assert_eq!(b.permit(t + 10 * SEC), (Permit::Probe, None));
        assert_eq!(b.state(), State::HalfOpen);
    }
}

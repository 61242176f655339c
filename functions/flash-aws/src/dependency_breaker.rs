//! A circuit breaker in front of one AWS dependency: the domain's state machine
//! ([`flash_domain::breaker_state`]) on tokio's clock (so tests can pause it), shared by the
//! requests of a warm function, with every state change logged and metered.

use crate::http::ApiError;
use crate::telemetry::{metric, Unit};
use flash_domain::breaker_state::{Breaker, BreakerConfig, Change, Outcome, Permit, State};
use flash_domain::ports::PortResult;
use flash_domain::token_bucket::retry_after_secs;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct CircuitBreaker {
    function: &'static str,
    dependency: &'static str,
    state: Mutex<Breaker>,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl CircuitBreaker {
    /// The breaker `function` keeps in front of `dependency` (both name it in logs and
    /// metrics).
    pub fn new(function: &'static str, dependency: &'static str, config: BreakerConfig) -> Self {
        Self {
            function,
            dependency,
            state: Mutex::new(Breaker::new(config)),
        }
    }

    /// The settings it was built with.
    pub fn config(&self) -> BreakerConfig {
        self.with(|b| b.config())
    }

    pub fn state(&self) -> State {
        self.with(|b| b.state())
    }

    /// How long callers are told to wait, if a call now would be refused.
    pub fn refusal(&self) -> Option<Duration> {
        let at = now();
        self.with(|b| b.refusal(at))
    }

    /// Runs `call` unless the breaker refuses it, and records how it went. A refused call is
    /// never started: the answer is `503` at once.
    pub async fn call<T>(&self, call: impl Future<Output = PortResult<T>>) -> Result<T, ApiError> {
        let (permit, change) = self.with(|b| b.permit(now()));
        self.report(change);
        if let Permit::Refuse(wait) = permit {
            return Err(ApiError::Shedding {
                retry_after_s: retry_after_secs(wait),
            });
        }
        let result = call.await;
        let outcome = match &result {
            Err(e) if e.is_degraded() => Outcome::Failed,
            _ => Outcome::Answered,
        };
        let change = self.with(|b| b.record(outcome, now()));
        self.report(change);
        result.map_err(ApiError::from)
    }

    /// Runs `call`, which may not reach the dependency at all (an adapter that can answer
    /// from memory), unless the breaker refuses calls now. Its failures count; its successes
    /// do not, since they may prove nothing about the dependency, and it never takes the
    /// half-open probe.
    pub async fn watch<T>(&self, call: impl Future<Output = PortResult<T>>) -> Result<T, ApiError> {
        if let Some(wait) = self.refusal() {
            return Err(ApiError::Shedding {
                retry_after_s: retry_after_secs(wait),
            });
        }
        let result = call.await;
        if matches!(&result, Err(e) if e.is_degraded()) {
            let change = self.with(|b| b.record(Outcome::Failed, now()));
            self.report(change);
        }
        result.map_err(ApiError::from)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Breaker) -> R) -> R {
        // A panic while holding the lock cannot leave the state machine half-changed.
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut b)
    }

    fn report(&self, change: Option<Change>) {
        let Some(Change { from, to }) = change else {
            return;
        };
        let (function, dependency) = (self.function, self.dependency);
        let what = match to {
            State::Open => "circuit breaker opened: refusing calls for the cool-down",
            State::HalfOpen => "circuit breaker half-open: letting one probe through",
            State::Closed => "circuit breaker closed: the probe succeeded",
        };
        if to == State::Open {
            tracing::warn!(function, dependency, %from, %to, "{what}");
        } else {
            tracing::info!(function, dependency, %from, %to, "{what}");
        }
        let open = if to == State::Closed { 0.0 } else { 1.0 };
        metric(
            "BreakerOpen",
            open,
            Unit::None,
            &[("Function", function), ("Dependency", dependency)],
        );
    }
}

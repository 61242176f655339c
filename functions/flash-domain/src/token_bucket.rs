//! The per-caller rate limit on write routes: a token bucket of `capacity` tokens refilled at
//! `per_second`, kept as one number per caller so that a storage adapter can take a token with
//! a single conditional write and no read.
//!
//! The number is the bucket's *theoretical arrival time* (`tat`, the generic cell rate
//! algorithm): the instant at which the bucket would be full again. Taking a token moves it one
//! refill interval later; a request is admitted while `tat` is at most `capacity - 1` intervals
//! ahead of now. That is exactly a token bucket (a burst of `capacity`, then one token per
//! interval), but it changes only by "set to a value" or "add the interval", which DynamoDB
//! update expressions can do, guarded by comparisons of `tat` with constants, which its
//! condition expressions can check. `tat` never decreases, so a value remembered from an
//! earlier write is a lower bound of the stored one.

use crate::clock::Millis;
use crate::ids::ValidationError;
use std::time::Duration;

/// Microseconds since the Unix epoch: refill intervals such as 1/3 s need finer steps than
/// milliseconds.
pub type Micros = i64;

pub fn micros(ms: Millis) -> Micros {
    ms.saturating_mul(1_000)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    capacity: u32,
    /// Time to refill one token.
    interval: Micros,
}

/// The one write that takes a token, given what the caller's `tat` is believed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// The bucket is full (never used, or idle long enough): `tat := set_to`, on condition
    /// that `tat` is absent or `<= now`.
    Refill { now: Micros, set_to: Micros },
    /// The bucket is partly used: `tat := tat + interval`, on condition that
    /// `now < tat <= limit`.
    Take {
        now: Micros,
        limit: Micros,
        interval: Micros,
    },
    /// No token before this long from now; nothing needs writing.
    Wait(Duration),
}

impl TokenBucket {
    /// `capacity` tokens (the largest burst), refilled at `per_second` tokens a second.
    pub fn new(capacity: u32, per_second: f64) -> Result<Self, ValidationError> {
        if capacity == 0 {
            return Err(ValidationError("capacity must be at least 1".into()));
        }
        // One token a day at the slowest, a million a second at the fastest.
        if !(per_second.is_finite() && (1.0 / 86_400.0..=1e6).contains(&per_second)) {
            return Err(ValidationError(
                "refill rate must be from 1/86400 to 1000000 tokens a second".into(),
            ));
        }
        Ok(Self {
            capacity,
            interval: (1e6 / per_second).round() as Micros,
        })
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn interval(&self) -> Duration {
        Duration::from_micros(self.interval.unsigned_abs())
    }

    /// The latest `tat` that still admits a request at `now`.
    pub fn limit(&self, now: Micros) -> Micros {
        now.saturating_add(i64::from(self.capacity - 1).saturating_mul(self.interval))
    }

    /// What to write to take a token at `now`, if `tat` is `known` (`None`: no bucket
    /// stored, or nothing known about it).
    pub fn next(&self, known: Option<Micros>, now: Micros) -> Take {
        let limit = self.limit(now);
        match known {
            None => Take::Refill {
                now,
                set_to: now.saturating_add(self.interval),
            },
            Some(tat) if tat <= now => Take::Refill {
                now,
                set_to: now.saturating_add(self.interval),
            },
            Some(tat) if tat <= limit => Take::Take {
                now,
                limit,
                interval: self.interval,
            },
            Some(tat) => Take::Wait(Duration::from_micros((tat - limit).unsigned_abs())),
        }
    }

    /// Takes a token in memory: the new `tat`, or how long until a token is available. What a
    /// successful [`Take`] write leaves stored.
    pub fn take(&self, stored: Option<Micros>, now: Micros) -> Result<Micros, Duration> {
        match self.next(stored, now) {
            Take::Refill { set_to, .. } => Ok(set_to),
            Take::Take { interval, .. } => Ok(stored.unwrap_or(now).saturating_add(interval)),
            Take::Wait(wait) => Err(wait),
        }
    }

    /// Whole tokens left at `now` (for logs and tests).
    pub fn tokens(&self, stored: Option<Micros>, now: Micros) -> u32 {
        let behind = stored.map_or(0, |tat| (tat - now).max(0));
        // Each token taken and not yet refilled puts `tat` one interval ahead of now.
        let used = (behind + self.interval - 1) / self.interval;
        u32::try_from(i64::from(self.capacity) - used).unwrap_or(0)
    }
}

/// A `Retry-After` value: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u32 {
    u32::try_from(wait.as_micros().div_ceil(1_000_000))
        .unwrap_or(u32::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Micros = 1_000_000;
    const T0: Micros = 1_800_000_000 * S;

    /// Drives a bucket as the store would: `stored` is the item, `at` the injected clock.
    struct Sim {
        bucket: TokenBucket,
        stored: Option<Micros>,
    }

    impl Sim {
        fn new(capacity: u32, per_second: f64) -> Self {
            Self {
                bucket: TokenBucket::new(capacity, per_second).unwrap(),
                stored: None,
            }
        }

        fn request(&mut self, at: Micros) -> Result<(), Duration> {
            let tat = self.bucket.take(self.stored, at)?;
            self.stored = Some(tat);
            Ok(())
        }
    }

    #[test]
    fn a_fresh_bucket_admits_a_burst_of_its_capacity_then_refuses() {
        let mut b = Sim::new(10, 2.0);
        for i in 0..10 {
            assert_eq!(b.request(T0), Ok(()), "request {i}");
        }
        // The next token comes one interval (500 ms) later.
        assert_eq!(b.request(T0), Err(Duration::from_millis(500)));
        assert_eq!(b.bucket.tokens(b.stored, T0), 0);
    }

    #[test]
    fn tokens_come_back_at_the_refill_rate_and_never_beyond_capacity() {
        let mut b = Sim::new(3, 1.0);
        for _ in 0..3 {
            b.request(T0).unwrap();
        }
        assert!(b.request(T0 + S / 2).is_err());
        // One second later exactly one token is back.
        assert_eq!(b.request(T0 + S), Ok(()));
        assert_eq!(b.request(T0 + S), Err(Duration::from_secs(1)));
        // An hour idle refills to capacity, not to 3,600 tokens.
        let later = T0 + 3_600 * S;
        assert_eq!(b.bucket.tokens(b.stored, later), 3);
        for _ in 0..3 {
            b.request(later).unwrap();
        }
        assert!(b.request(later).is_err());
    }

    #[test]
    fn the_write_depends_on_what_is_known_of_the_bucket() {
        let bucket = TokenBucket::new(5, 10.0).unwrap(); // 100 ms a token
        let i = 100_000;
        assert_eq!(
            bucket.next(None, T0),
            Take::Refill {
                now: T0,
                set_to: T0 + i
            }
        );
        // Idle since its last use: full again, so it is reset rather than advanced.
        assert!(matches!(bucket.next(Some(T0 - 1), T0), Take::Refill { .. }));
        assert_eq!(
            bucket.next(Some(T0 + 2 * i), T0),
            Take::Take {
                now: T0,
                limit: T0 + 4 * i,
                interval: i
            }
        );
        assert!(matches!(
            bucket.next(Some(T0 + 4 * i), T0),
            Take::Take { .. }
        ));
        assert_eq!(
            bucket.next(Some(T0 + 4 * i + 1), T0),
            Take::Wait(Duration::from_micros(1))
        );
    }

    #[test]
    fn a_remembered_tat_is_a_lower_bound_so_a_wait_from_it_is_never_wrong() {
        // Two instances take tokens from one bucket; the second only remembers an old value.
        let bucket = TokenBucket::new(2, 1.0).unwrap();
        let stored = bucket.take(None, T0).unwrap();
        let remembered = stored;
        let stored = bucket.take(Some(stored), T0).unwrap();
        assert!(stored > remembered);
        // The stale value says a token may be left; the write it leads to is then refused by
        // its condition (`tat <= limit`) against the stored value, which says wait.
        assert!(matches!(
            bucket.next(Some(remembered), T0),
            Take::Take { .. }
        ));
        assert!(matches!(bucket.next(Some(stored), T0), Take::Wait(_)));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(TokenBucket::new(0, 1.0).is_err());
        assert!(TokenBucket::new(1, 0.0).is_err());
        assert!(TokenBucket::new(1, f64::NAN).is_err());
        assert!(TokenBucket::new(1, -1.0).is_err());
        assert_eq!(
            TokenBucket::new(1, 3.0).unwrap().interval(),
            Duration::from_micros(333_333)
        );
    }

    proptest! {
        /// Over any span, a bucket admits at most its capacity plus what refilled in the span;
        /// and a request it refuses would indeed have found no token.
        #[test]
        fn never_admits_more_than_capacity_plus_refill(
            capacity in 1u32..20,
            per_second in 0.5f64..50.0,
            gaps in prop::collection::vec(0i64..400_000, 1..300),
        ) {
            let mut sim = Sim::new(capacity, per_second);
            let interval = sim.bucket.interval;
            let mut at = T0;
            let mut admitted: Vec<Micros> = Vec::new();
            for gap in gaps {
                at += gap;
                let tokens = sim.bucket.tokens(sim.stored, at);
                match sim.request(at) {
                    Ok(()) => admitted.push(at),
                    Err(wait) => {
                        prop_assert_eq!(tokens, 0);
                        prop_assert!(wait > Duration::ZERO && wait.as_micros() <= interval as u128);
                    }
                }
            }
            for (i, &from) in admitted.iter().enumerate() {
                for (j, &to) in admitted.iter().enumerate().skip(i) {
                    let refilled = (to - from) / interval;
                    prop_assert!((j - i + 1) as i64 <= i64::from(capacity) + refilled);
                }
            }
        }
    }
}

//! Waiting before trying again after losing a race: "full jitter", so that the writers that
//! collided spread out instead of colliding again.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

/// How long to wait before try `n + 1` (from `n` = 1): uniform in [0, min(cap, base·2ⁿ⁻¹)].
pub fn jittered(base: Duration, cap: Duration, n: u32) -> Duration {
    let ceiling = base
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(cap);
    // A fresh `RandomState` is randomly seeded: a random number without a dependency.
    let random = RandomState::new().hash_one(n);
    ceiling.mul_f64((random >> 11) as f64 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_under_the_doubling_ceiling_and_the_cap_and_spreads_out() {
        let (base, cap) = (Duration::from_millis(4), Duration::from_millis(200));
        for n in 1..=10 {
            let ceiling = (base * (1 << (n - 1))).min(cap);
            let waits: Vec<Duration> = (0..200).map(|_| jittered(base, cap, n)).collect();
            assert!(waits.iter().all(|w| *w <= ceiling), "n={n}");
            assert!(waits.iter().any(|w| *w < ceiling / 2), "n={n}: never short");
            assert!(waits.iter().any(|w| *w > ceiling / 2), "n={n}: never long");
        }
    }
}

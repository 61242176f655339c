//! Configuration, parsed with `?` in each `main` so a bad deployment fails at start-up.

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use flash_domain::breaker::BreakerConfig;
use flash_domain::token_bucket::TokenBucket;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("environment variable {0} is missing or empty")]
pub struct MissingVar(pub &'static str);

#[derive(Debug, thiserror::Error)]
#[error("environment variable {name} is invalid: {why}")]
pub struct BadVar {
    pub name: &'static str,
    pub why: String,
}

/// Default token bucket per caller on the write routes: a burst of 10 requests, then one
/// every half second. A buyer places an order and pays or cancels it in a handful of
/// requests; a script hammering the API gets `429` after its first ten. Each bucket is one
/// item, so DynamoDB's 1,000 writes/s per item is far above any rate set here.
pub const RATE_LIMIT_CAPACITY: u32 = 10;
pub const RATE_LIMIT_PER_SECOND: f64 = 2.0;

/// The default bucket (always `Some`: the defaults are valid, as a test checks).
pub fn default_rate_limit() -> Option<TokenBucket> {
    TokenBucket::new(RATE_LIMIT_CAPACITY, RATE_LIMIT_PER_SECOND).ok()
}

/// An optional variable parsed as `T`; absent or empty means `default`.
fn parse_var<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, BadVar>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name).ok().filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e: T::Err| BadVar {
            name,
            why: e.to_string(),
        }),
    }
}

/// The per-caller rate limit on write routes: `RATE_LIMIT_CAPACITY` tokens (0 turns the
/// limit off) refilled at `RATE_LIMIT_PER_SECOND`.
pub fn rate_limit_from_env() -> Result<Option<TokenBucket>, BadVar> {
    let capacity = parse_var("RATE_LIMIT_CAPACITY", RATE_LIMIT_CAPACITY)?;
    let per_second = parse_var("RATE_LIMIT_PER_SECOND", RATE_LIMIT_PER_SECOND)?;
    if capacity == 0 {
        return Ok(None);
    }
    TokenBucket::new(capacity, per_second)
        .map(Some)
        .map_err(|e| BadVar {
            name: "RATE_LIMIT_PER_SECOND",
            why: e.0,
        })
}

/// SQS's longest `DelaySeconds`, and the default delay of `place-order`'s re-drive copy.
pub const REDRIVE_DELAY_SECONDS: u64 = 900;

/// `REDRIVE_DELAY_SECONDS`: how long after an order `place-order`'s re-drive copy of its
/// message arrives, 0 to 900 (SQS's limit on `DelaySeconds`). The local stack shortens it so
/// the copies can be watched arriving.
pub fn redrive_delay_from_env() -> Result<Duration, BadVar> {
    let name = "REDRIVE_DELAY_SECONDS";
    let seconds = parse_var(name, REDRIVE_DELAY_SECONDS)?;
    if seconds > REDRIVE_DELAY_SECONDS {
        return Err(BadVar {
            name,
            why: format!("{seconds} is above {REDRIVE_DELAY_SECONDS}, SQS's longest delay"),
        });
    }
    Ok(Duration::from_secs(seconds))
}

/// The circuit breakers' settings: `BREAKER_FAILURES` consecutive failures within
/// `BREAKER_WINDOW_SECONDS` open a breaker for `BREAKER_COOL_DOWN_SECONDS`.
pub fn breaker_from_env() -> Result<BreakerConfig, BadVar> {
    let d = BreakerConfig::default();
    let failures = parse_var("BREAKER_FAILURES", d.failures)?;
    if failures == 0 {
        return Err(BadVar {
            name: "BREAKER_FAILURES",
            why: "must be at least 1".into(),
        });
    }
    let seconds = |name, default: Duration| -> Result<Duration, BadVar> {
        let s: f64 = parse_var(name, default.as_secs_f64())?;
        Duration::try_from_secs_f64(s)
            .ok()
            .filter(|d| !d.is_zero() && *d <= Duration::from_secs(3_600))
            .ok_or(BadVar {
                name,
                why: "must be a number of seconds above 0 and at most 3600".into(),
            })
    };
    Ok(BreakerConfig {
        failures,
        window: seconds("BREAKER_WINDOW_SECONDS", d.window)?,
        cool_down: seconds("BREAKER_COOL_DOWN_SECONDS", d.cool_down)?,
    })
}

#[derive(Debug, Clone)]
pub struct Config {
    pub table_name: String,
    pub orders_queue_url: Option<String>,
}

fn var(name: &'static str) -> Result<String, MissingVar> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(MissingVar(name))
}

impl Config {
    /// `TABLE_NAME` always; `ORDERS_QUEUE_URL` when `needs_queue`.
    pub fn from_env(needs_queue: bool) -> Result<Self, MissingVar> {
        Ok(Self {
            table_name: var("TABLE_NAME")?,
            orders_queue_url: if needs_queue {
                Some(var("ORDERS_QUEUE_URL")?)
            } else {
                None
            },
        })
    }

    pub fn queue_url(&self) -> Result<&str, MissingVar> {
        self.orders_queue_url
            .as_deref()
            .ok_or(MissingVar("ORDERS_QUEUE_URL"))
    }
}

/// `PAYMENT_TIMEOUTS_QUEUE_URL`: where `process-orders` schedules payment timeouts and
/// `expire-orders` re-schedules those not yet due.
pub fn payment_timeouts_queue_url() -> Result<String, MissingVar> {
    var("PAYMENT_TIMEOUTS_QUEUE_URL")
}

/// The SDK configuration. Loading it makes no network call (credentials resolve lazily), so
/// cold starts stay short. Endpoints follow the standard `AWS_ENDPOINT_URL_<SERVICE>`
/// variables, which is how the local stack and LocalStack are reached.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                // Without these the SDK waits forever on a hung connection.
                .connect_timeout(Duration::from_secs(1))
                .operation_attempt_timeout(Duration::from_secs(2))
                .operation_timeout(Duration::from_secs(6))
                .build(),
        )
        .load()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_rate_limit_is_a_burst_of_10_then_2_a_second() {
        let bucket = default_rate_limit().expect("valid defaults");
        assert_eq!(bucket.capacity(), 10);
        assert_eq!(bucket.interval(), Duration::from_millis(500));
    }

    #[test]
    fn the_redrive_delay_defaults_to_sqs_longest_and_refuses_anything_past_it() {
        // One test for the variable: tests run in parallel and share the environment.
        let set = |v: &str| std::env::set_var("REDRIVE_DELAY_SECONDS", v);
        set("");
        assert_eq!(
            redrive_delay_from_env().ok(),
            Some(Duration::from_secs(900))
        );
        set("3");
        assert_eq!(redrive_delay_from_env().ok(), Some(Duration::from_secs(3)));
        set("0");
        assert_eq!(redrive_delay_from_env().ok(), Some(Duration::ZERO));
        for bad in ["901", "-1", "2.5", "soon"] {
            set(bad);
            let e = redrive_delay_from_env().expect_err(bad);
            assert!(e.to_string().contains("REDRIVE_DELAY_SECONDS"), "{e}");
        }
        std::env::remove_var("REDRIVE_DELAY_SECONDS");
    }
}

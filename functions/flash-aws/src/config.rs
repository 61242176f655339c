//! Configuration, parsed with `?` in each `main` so a bad deployment fails at start-up.

use crate::dynamo::{DynamoRateLimit, RateHints};
use crate::{DynamoStore, SqsQueue, SqsTimeouts};
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use flash_domain::breaker_state::BreakerConfig;
use flash_domain::limits::SQS_MAX_DELAY_SECONDS;
use flash_domain::token_bucket::TokenBucket;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A setting that stops a function at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is missing or empty")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {why}")]
    Invalid { name: &'static str, why: String },
}

/// A function's environment: the variables its settings are parsed from. On Lambda each
/// function has its process, and `main` passes the process's ([`Env::process`]); the local
/// gateway runs every function in one process and gives each the variables template.yaml
/// declares for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env(HashMap<String, String>);

impl Env {
    /// The process's environment, as Lambda sets it from the template.
    pub fn process() -> Self {
        std::env::vars().collect()
    }

    /// The variable's value; an empty or blank one counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// A variable the function cannot run without.
    pub fn required(&self, name: &'static str) -> Result<&str, ConfigError> {
        self.get(name).ok_or(ConfigError::Missing(name))
    }

    /// Sets `name`, replacing any value it had.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }

    /// An optional variable parsed as `T`; absent or empty means `default`.
    fn parse<T: std::str::FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
                name,
                why: e.to_string(),
            }),
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Env {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(vars: I) -> Self {
        Self(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// The AWS side every function is built on: the SDK configuration, loaded once per process.
/// The local gateway may reach DynamoDB through another HTTP client (the capacity model). The
/// stores of one table share their write statistics, and its rate limits their hints, as one
/// process's functions did when they shared one store.
#[derive(Clone)]
pub struct Aws {
    sdk: SdkConfig,
    dynamodb: SdkConfig,
    write_stats: bool,
    stores: Arc<Mutex<HashMap<String, (DynamoStore, RateHints)>>>,
}

impl Aws {
    pub fn new(sdk: SdkConfig) -> Self {
        Self {
            dynamodb: sdk.clone(),
            sdk,
            write_stats: false,
            stores: Arc::default(),
        }
    }

    /// DynamoDB through `sdk` (the local gateway's capacity model); SQS keeps the first.
    pub fn with_dynamodb(mut self, sdk: SdkConfig) -> Self {
        self.dynamodb = sdk;
        self
    }

    /// Stores that count what they write (`DynamoStore::with_write_stats`): the local stack
    /// reports it; a deployed function asks DynamoDB for no consumed capacity.
    pub fn with_write_stats(mut self) -> Self {
        self.write_stats = true;
        self
    }

    /// The store of `table`.
    pub fn store(&self, table: &str) -> DynamoStore {
        self.table(table).0
    }

    /// The rate limit a write route takes a token from: a bucket per caller of `callers` in
    /// the table `TABLE_NAME`, sized by their settings ([`rate_limit`]); `None` when those
    /// turn it off.
    pub fn rate_limit(
        &self,
        env: &Env,
        callers: Callers,
    ) -> Result<Option<DynamoRateLimit>, ConfigError> {
        let Some(bucket) = rate_limit(env, callers)? else {
            return Ok(None);
        };
        let (store, hints) = self.table(table_name(env)?);
        let limit = DynamoRateLimit::new(store, bucket, hints);
        Ok(Some(match callers {
            Callers::Buyers => limit,
            Callers::Admins => limit.for_admins(),
        }))
    }

    fn table(&self, table: &str) -> (DynamoStore, RateHints) {
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        stores
            .entry(table.to_owned())
            .or_insert_with(|| {
                let store = DynamoStore::from_config(&self.dynamodb, table);
                let store = if self.write_stats {
                    store.with_write_stats()
                } else {
                    store
                };
                (store, RateHints::default())
            })
            .clone()
    }

    pub fn queue(&self, url: &str) -> SqsQueue {
        SqsQueue::from_config(&self.sdk, url)
    }

    pub fn timeouts(&self, url: &str) -> SqsTimeouts {
        SqsTimeouts::from_config(&self.sdk, url)
    }

    /// What the two functions that schedule or consume payment timeouts need: the table
    /// (`TABLE_NAME`) and the payment-timeouts queue (`PAYMENT_TIMEOUTS_QUEUE_URL`).
    pub fn store_and_timeouts(&self, env: &Env) -> Result<(DynamoStore, SqsTimeouts), ConfigError> {
        let store = self.store(table_name(env)?);
        Ok((store, self.timeouts(payment_timeouts_queue_url(env)?)))
    }
}

/// `TABLE_NAME`: the single table every function reads and writes.
pub fn table_name(env: &Env) -> Result<&str, ConfigError> {
    env.required("TABLE_NAME")
}

/// `ORDERS_QUEUE_URL`: where `place-order` enqueues orders and `process-orders` consumes them.
pub fn orders_queue_url(env: &Env) -> Result<&str, ConfigError> {
    env.required("ORDERS_QUEUE_URL")
}

/// Default token bucket per caller on the write routes: a burst of 10 requests, then one
/// every half second. A buyer places an order and pays or cancels it in a handful of
/// requests; a script hammering the API gets `429` after its first ten. Each bucket is one
/// item, so DynamoDB's 1,000 writes/s per item is far above any rate set here.
pub const RATE_LIMIT_CAPACITY: u32 = 10;
pub const RATE_LIMIT_PER_SECOND: f64 = 2.0;

/// Default admin bucket (`PUT /products`, the products function's only write): a burst of
/// 1,000 requests, then 500 a second, so a catalog of 5,000 products is created or
/// restocked in about 8 s. Still a limit, so a runaway script or a leaked admin token cannot
/// write without end; each request is one write to the caller's bucket item, far below
/// DynamoDB's 1,000 writes/s per item.
pub const ADMIN_RATE_LIMIT_CAPACITY: u32 = 1_000;
pub const ADMIN_RATE_LIMIT_PER_SECOND: f64 = 500.0;

/// Whose requests a rate limit meters. Each has buckets of its own (an admin's buyer-route
/// requests, a `ship`, never spend admin tokens, nor the reverse), settings and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callers {
    /// The buyers' write routes: `RATE_LIMIT_CAPACITY`, `RATE_LIMIT_PER_SECOND`.
    Buyers,
    /// The admins' (`PUT /products`): `ADMIN_RATE_LIMIT_CAPACITY`,
    /// `ADMIN_RATE_LIMIT_PER_SECOND` (template parameters `AdminRateLimitBurst` and
    /// `AdminRateLimitPerSecond`).
    Admins,
}

/// The per-caller token bucket of `callers`: its capacity (0 turns the limit off) and its
/// refill a second, from their settings or defaults.
pub fn rate_limit(env: &Env, callers: Callers) -> Result<Option<TokenBucket>, ConfigError> {
    let ((capacity_name, capacity), (rate_name, per_second)) = match callers {
        Callers::Buyers => (
            ("RATE_LIMIT_CAPACITY", RATE_LIMIT_CAPACITY),
            ("RATE_LIMIT_PER_SECOND", RATE_LIMIT_PER_SECOND),
        ),
        Callers::Admins => (
            ("ADMIN_RATE_LIMIT_CAPACITY", ADMIN_RATE_LIMIT_CAPACITY),
            ("ADMIN_RATE_LIMIT_PER_SECOND", ADMIN_RATE_LIMIT_PER_SECOND),
        ),
    };
    let capacity = env.parse(capacity_name, capacity)?;
    let per_second = env.parse(rate_name, per_second)?;
    if capacity == 0 {
        return Ok(None);
    }
    TokenBucket::new(capacity, per_second)
        .map(Some)
        .map_err(|e| ConfigError::Invalid {
            name: rate_name,
            why: e.0,
        })
}

/// The default delay of `place-order`'s re-drive copy, and its longest: SQS's longest
/// `DelaySeconds`.
pub const REDRIVE_DELAY_SECONDS: u64 = SQS_MAX_DELAY_SECONDS as u64;

/// `REDRIVE_DELAY_SECONDS`: how long after an order `place-order`'s re-drive copy of its
/// message arrives, 0 to 900 (SQS's limit on `DelaySeconds`). The local stack shortens it so
/// the copies can be watched arriving.
pub fn redrive_delay(env: &Env) -> Result<Duration, ConfigError> {
    let name = "REDRIVE_DELAY_SECONDS";
    let seconds = env.parse(name, REDRIVE_DELAY_SECONDS)?;
    if seconds > REDRIVE_DELAY_SECONDS {
        return Err(ConfigError::Invalid {
            name,
            why: format!("{seconds} is above {REDRIVE_DELAY_SECONDS}, SQS's longest delay"),
        });
    }
    Ok(Duration::from_secs(seconds))
}

/// The circuit breakers' settings: `BREAKER_FAILURES` consecutive failures within
/// `BREAKER_WINDOW_SECONDS` open a breaker for `BREAKER_COOL_DOWN_SECONDS`.
pub fn breakers(env: &Env) -> Result<BreakerConfig, ConfigError> {
    let d = BreakerConfig::default();
    let failures = env.parse("BREAKER_FAILURES", d.failures)?;
    if failures == 0 {
        return Err(ConfigError::Invalid {
            name: "BREAKER_FAILURES",
            why: "must be at least 1".into(),
        });
    }
    let seconds = |name, default: Duration| -> Result<Duration, ConfigError> {
        let s: f64 = env.parse(name, default.as_secs_f64())?;
        Duration::try_from_secs_f64(s)
            .ok()
            .filter(|d| !d.is_zero() && *d <= Duration::from_secs(3_600))
            .ok_or(ConfigError::Invalid {
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

/// `PAYMENT_TIMEOUTS_QUEUE_URL`: where `process-orders` schedules payment timeouts and
/// `expire-orders` re-schedules those not yet due.
pub fn payment_timeouts_queue_url(env: &Env) -> Result<&str, ConfigError> {
    env.required("PAYMENT_TIMEOUTS_QUEUE_URL")
}

/// What every function's `main` starts from: logs and metrics set up, the SDK configuration
/// loaded ([`sdk_config`]) and the process's environment.
pub async fn start() -> (Aws, Env) {
    crate::telemetry::init();
    (Aws::new(sdk_config().await), Env::process())
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

    /// The bucket `callers` get by default, as (capacity, refill interval).
    fn default_bucket(callers: Callers) -> (u32, Duration) {
        let bucket = rate_limit(&Env::default(), callers)
            .expect("valid defaults")
            .expect("on by default");
        (bucket.capacity(), bucket.interval())
    }

    #[test]
    fn the_default_rate_limit_is_a_burst_of_10_then_2_a_second() {
        assert_eq!(
            default_bucket(Callers::Buyers),
            (10, Duration::from_millis(500))
        );
    }

    #[test]
    fn admins_get_a_bucket_of_their_own_generous_by_default_and_configurable() {
        assert_eq!(
            default_bucket(Callers::Admins),
            (1_000, Duration::from_millis(2))
        );
        let env = Env::from_iter([
            ("ADMIN_RATE_LIMIT_CAPACITY", "50"),
            ("ADMIN_RATE_LIMIT_PER_SECOND", "10"),
            // The buyers' knobs do not move it.
            ("RATE_LIMIT_CAPACITY", "1"),
        ]);
        let bucket = rate_limit(&env, Callers::Admins)
            .expect("valid")
            .expect("on");
        assert_eq!(
            (bucket.capacity(), bucket.interval()),
            (50, Duration::from_millis(100))
        );
        let off = Env::from_iter([("ADMIN_RATE_LIMIT_CAPACITY", "0")]);
        assert_eq!(rate_limit(&off, Callers::Admins).expect("valid"), None);
        let bad = Env::from_iter([("ADMIN_RATE_LIMIT_PER_SECOND", "0")]);
        let e = rate_limit(&bad, Callers::Admins).expect_err("0 a second refills nothing");
        assert!(e.to_string().contains("ADMIN_RATE_LIMIT_PER_SECOND"), "{e}");
    }

    #[test]
    fn the_redrive_delay_defaults_to_sqs_longest_and_refuses_anything_past_it() {
        let with = |v: &str| Env::from_iter([("REDRIVE_DELAY_SECONDS", v)]);
        assert_eq!(
            redrive_delay(&with("")).ok(),
            Some(Duration::from_secs(900))
        );
        assert_eq!(redrive_delay(&with("3")).ok(), Some(Duration::from_secs(3)));
        assert_eq!(redrive_delay(&with("0")).ok(), Some(Duration::ZERO));
        for bad in ["901", "-1", "2.5", "soon"] {
            let e = redrive_delay(&with(bad)).expect_err(bad);
            assert!(e.to_string().contains("REDRIVE_DELAY_SECONDS"), "{e}");
        }
    }
}

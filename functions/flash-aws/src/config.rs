//! Configuration, parsed with `?` in each `main` so a bad deployment fails at start-up.

use crate::capacity::CapacityModel;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("environment variable {0} is missing or empty")]
pub struct MissingVar(pub &'static str);

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

/// [`sdk_config`] with its HTTP client wrapped in a [`CapacityModel`], so local runs throttle
/// and conflict like DynamoDB under load. For benchmarks only; same timeouts and endpoints.
pub async fn sdk_config_with_capacity(model: &CapacityModel) -> SdkConfig {
    sdk_config()
        .await
        .into_builder()
        .http_client(model.http_client(crate::capacity::default_https_client()))
        .build()
}
